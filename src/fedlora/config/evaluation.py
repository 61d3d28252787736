"""``eval``: when and on what the global model is scored, and what the run reads out."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from fedlora.config.section import FilePath, Section


class TargetConfig(Section):
    # A metric named *loss or *perplexity is reached from above, any other from below.
    metric: str = "accuracy"
    value: float
    stop: bool = False
    # The summary also reports the first evaluation where the mean of the last `smooth`
    # evaluations reaches the target, and, when `max_loss` is set, the first with loss ≤ it.
    smooth: Annotated[int, Field(ge=1)] = 3
    max_loss: Annotated[float | None, Field(ge=0)] = None


class ChoicesConfig(Section):
    """Multiple-choice accuracy of an instruction run's global model, at its start (the base
    model) and its end: a JSONL file of ``{query, choices, gold}`` rows (ARC's layout), relative
    to ``data.dir`` unless absolute; ``limit``: its first this many questions."""

    file: FilePath
    limit: Annotated[int | None, Field(ge=1)] = None


class GenerateConfig(Section):
    """Greedy answers of an instruction run's global model to these instructions, at its start
    and its end, for a person to read what training changed."""

    prompts: Annotated[list[str], Field(min_length=1)]
    max_new_tokens: Annotated[int, Field(ge=1)] = 64


class EvalConfig(Section):
    every: Annotated[int, Field(ge=1)] = 1
    # Instead of every n steps: the first merge once this many virtual seconds have passed
    # since the last evaluation (asynchronous policies merge far more often than rounds).
    every_seconds: Annotated[float | None, Field(gt=0)] = None
    # Or on a grid of virtual times shared by every policy: the latest global at 0, G, 2G, …
    # up to the run's end (the simulator schedules them, independent of merges), so arms that
    # merge at different rates are evaluated equally often, at identical times.
    grid_seconds: Annotated[float | None, Field(gt=0)] = None
    split: str = "dev"
    batch_size: Annotated[int, Field(ge=1)] = 64
    # Share of each client's examples held out as its local test split; > 0 also evaluates
    # every trained client model on it and on the global eval split (local vs global effects).
    local_share: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Each local evaluation costs an eval pass: only jobs that started from global version
    # >= local_from are scored (synchronous rounds: the round, from 0; the summary keeps each
    # client's latest), and the global eval split only with local_dev.
    local_from: Annotated[int, Field(ge=0)] = 0
    local_dev: bool = True
    target: TargetConfig | None = None
    # Aggregators that also merge every merge's terms, only to log their merge error beside
    # the run's own (a paired, noise-free comparison); they never change the run.
    shadow: list[str] = []  # noqa: RUF012 (a pydantic field)
    choices: ChoicesConfig | None = None
    generate: GenerateConfig | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> EvalConfig:
        if self.every_seconds is not None and self.grid_seconds is not None:
            raise ValueError("eval.grid_seconds: set either it or eval.every_seconds, not both")
        return self
