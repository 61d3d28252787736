"""What summary.json holds, typed: :class:`RunSummary` and its sections.

The file's layout is fixed by the runs already written (the study cells kept under
docs/results re-derive their tables from theirs), so these models follow it key for key:

- What was never set is left out of the file, and what was set to None is written as null
  (``staleness.mean`` with nothing accepted, an unset ``target.max_loss``): a model is written
  with ``exclude_unset`` (:meth:`RunSummary.written`), and read back it has the same keys set.
- An evaluation's metrics depend on its task; in the file they sit flat beside its step and
  times, here under ``metrics`` (:class:`_Inlined`). So does a target's first crossing.
- A section added after some summaries were written (``local``, ``from_start``, ``choices``,
  the target's ``smoothed``...) is None in those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from fedlora.outcome import Clock

# How a target counts as reached: the first evaluation at it (None), the first whose running
# mean over ``target.smooth`` evaluations is, or (``on_loss``) the first with loss ≤ max_loss.
TargetMeasure = Literal["smoothed", "on_loss"] | None


class _Inlined(BaseModel):
    """A model whose field :attr:`inline` is written flat among its other keys; read back,
    every key that names no other field is gathered into it."""

    inline: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        if not isinstance(data, dict) or cls.inline in data:
            return data
        rest = {k: v for k, v in data.items() if k not in cls.model_fields}
        if not rest and not cls.model_fields[cls.inline].is_required():
            return data  # nothing inline: its default (a target not reached: no evaluation)
        return {k: v for k, v in data.items() if k in cls.model_fields} | {cls.inline: rest}

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        written: dict[str, Any] = {}
        for key, value in handler(self).items():
            if key == self.inline:
                written |= value or {}
            else:
                written[key] = value
        return written


class Tercile(BaseModel):
    """The final model on one length tercile of the eval split (:mod:`fedlora.terciles`)."""

    examples: int
    lengths: list[float]
    accuracy: float | None = None  # a classifier's
    loss: float


class EvaluationRow(_Inlined):
    """One evaluation of the global model: a metrics.csv row, the summary's ``final`` and
    ``best``. Its times are on the run's clock: a virtual one with the wall seconds beside, or
    a deployment's wall clock with no virtual time. Its metrics are its task's (accuracy, f1,
    loss; an instruction task's loss, perplexity, per-category losses)."""

    inline: ClassVar[str] = "metrics"

    step: int
    round: int
    virtual_time_s: float | None = None
    wall_time_s: float
    metrics: dict[str, float] = {}
    by_length: dict[str, Tercile] | None = None  # the final model's, where lengths are known


def clock_seconds(timed: EvaluationRow | RunSummary) -> float:
    """An evaluation's (or a whole run's) seconds on its run's clock."""
    return timed.wall_time_s if timed.virtual_time_s is None else timed.virtual_time_s


class Reached(_Inlined):
    """Whether the global model reached the target by one measure, and the first evaluation
    that did (``at``: None, never)."""

    inline: ClassVar[str] = "at"

    reached: bool
    at: EvaluationRow | None = None


class TargetSummary(_Inlined):
    """``eval.target`` as the run had it (older summaries lack ``smooth`` and ``max_loss``),
    and when the global model reached it by each measure."""

    inline: ClassVar[str] = "first"

    metric: str
    value: float
    stop: bool = False
    smooth: int = 3
    max_loss: float | None = None
    first: Reached
    smoothed: Reached | None = None
    on_loss: Reached | None = None  # with max_loss

    def by(self, measure: TargetMeasure) -> Reached | None:
        """The crossing by ``measure``; None where it was not measured."""
        return {None: self.first, "smoothed": self.smoothed, "on_loss": self.on_loss}[measure]


# The parts of a validation error's location that name no key of the file.
INLINED = frozenset(model.inline for model in (EvaluationRow, Reached, TargetSummary))


class Spread(BaseModel):
    """One score across the clients."""

    mean: float
    std: float
    min: float
    max: float


class LocalClient(BaseModel):
    """One client's latest trained model (scores in the task's first metric, losses beside)
    and, on its own split, the final global model and the client's gain over it."""

    started_from: int
    own: float | None = None
    dev: float | None = None
    own_loss: float | None = None
    dev_loss: float | None = None
    global_own: float | None = None
    global_own_loss: float | None = None
    own_gain: float | None = None
    own_loss_gain: float | None = None
    examples: int | None = None


class LocalSummary(BaseModel):
    """The clients' own models across clients, beside the final global model; what was not
    scored (``dev`` without ``eval.local_dev``, ``global_own`` in older summaries) is None."""

    metric: str
    evaluations: int
    own: Spread | None = None
    dev: Spread | None = None
    own_loss: Spread | None = None
    dev_loss: Spread | None = None
    global_own: Spread | None = None
    global_own_loss: Spread | None = None
    own_gain: Spread | None = None
    own_loss_gain: Spread | None = None
    examples: Spread | None = None
    global_dev: float
    clients: dict[str, LocalClient]  # by client id, as text (JSON's keys)


class OverMerges(BaseModel):
    """One per-merge diagnostic over the run's merges."""

    mean: float
    max: float
    last: float


class Diagnostics(BaseModel):
    """The merges' diagnostics (:mod:`fedlora.aggregation.diagnostics`)."""

    merges: int
    error: OverMerges
    spread: OverMerges
    energy_above: dict[str, OverMerges]  # by rank, as text
    shadow: dict[str, OverMerges] | None = None  # by shadowing aggregator


class Staleness(BaseModel):
    """Accepted results by staleness (in ``server.staleness_unit``); no mean or max without
    any."""

    unit: str
    histogram: dict[str, int]
    mean: float | None
    max: int | None


class Change(BaseModel):
    """A paired change from the start, with its 95 % interval."""

    mean: float
    low: float
    high: float


class Loss(BaseModel):
    loss: float


class FromStart(BaseModel):
    """The eval loss of the base model and of the final one, paired on the same examples."""

    examples: int
    start: Loss
    final: Loss
    change: dict[Literal["loss"], Change]


class ChoiceScores(BaseModel):
    mc_accuracy: float
    mc_accuracy_norm: float


class Choices(BaseModel):
    """Multiple-choice accuracy at the end, and (where the base model was scored) at the
    start and the paired change."""

    questions: int
    chance: float
    final: ChoiceScores
    start: ChoiceScores | None = None
    change: dict[str, Change] | None = None


class RunSummary(BaseModel):
    """A finished run's summary.json: headline numbers and sections."""

    # A summary written by another version of fedlora may carry keys this one does not know:
    # it is read all the same, and what it says beyond these fields is not used.
    model_config = ConfigDict(extra="ignore")

    name: str
    task: str
    labels: list[str]
    policy: str
    aggregator: str
    clients: int
    seed: int
    stop_reason: str
    clock: Clock = "virtual"  # older summaries name none: their runs were all simulated
    final: EvaluationRow  # the final model, as of the run's end
    best: EvaluationRow  # best on the task's first metric
    virtual_time_s: float | None = None  # none under a deployment's wall clock
    wall_time_s: float
    server_steps: int
    rounds: int
    bytes_down: int
    bytes_up: int
    updates_accepted: int
    updates_applied: int
    updates_rejected: int
    updates_clipped: int = 0  # older summaries: before clipping existed
    updates_dropped: int
    jobs_lost: int
    jobs_in_flight: int
    staleness: Staleness
    client_idle_fraction: list[float]
    local: LocalSummary | None = None  # with the clients' own test splits
    diagnostics: Diagnostics | None = None  # where merges were diagnosed
    target: TargetSummary | None = None  # with eval.target
    from_start: FromStart | None = None  # where the base model was evaluated
    choices: Choices | None = None  # with eval.choices
    non_finite: list[str] | None = None  # paths of the values written as null (NaN, ±Inf)

    def with_sections(self, sections: Mapping[str, Any]) -> RunSummary:
        """This summary with ``sections`` computed as plain data elsewhere (the readouts'
        ``from_start`` and ``choices``) validated into it."""
        return RunSummary.model_validate(self.written() | dict(sections))

    def written(self) -> dict[str, Any]:
        """The summary as summary.json lays it out (non-finite floats still in it)."""
        return self.model_dump(exclude_unset=True)
