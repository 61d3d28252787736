"""The labelled examples a task's split holds, whatever file or service they came from."""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.data.tasks import TaskSpec


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int
    score: float | None = None  # the data file's ``data.score_column``, when one is named
    response: str | None = None  # an instruction row's response (text_a: its instruction,
    # text_b: its context)
    client: int | None = None  # the data file's ``data.client_column``, when one is named


@dataclass(frozen=True)
class LabelledSplit:
    """A split's examples and their provenance; ``fingerprint`` changes whenever they could."""

    task: TaskSpec
    split: str
    examples: list[Example]
    origin: str
    fingerprint: str
