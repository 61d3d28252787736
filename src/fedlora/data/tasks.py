"""The tasks fedlora knows: their labels, metrics and, for GLUE, their files.

A task is data, not code: adding a GLUE-style task is one more entry in :data:`TASKS`. Two
kinds of task share one pipeline: a *classification* task trains a head beside LoRA and is
scored by accuracy; an *instruction* task trains a causal LM's LoRA on response tokens and is
scored by response loss and perplexity (its "labels" are the rows' categories, so partitions
and slices treat a category like a label).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GENERIC_TASKS = ("csv", "jsonl")
"""Task names whose labels and columns come from the config (``data.files`` ...)."""
INSTRUCTION_TASKS = ("instruct",)
"""Task names of instruction rows for a causal LM (``data.files``, ``data.instruct``)."""
CLASSIFICATION = "classification"
INSTRUCTION = "instruction"


@dataclass(frozen=True)
class TaskSpec:
    """What a model must predict and how it is scored; label id = index in ``label_names``."""

    name: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    pair: bool
    kind: str = field(default=CLASSIFICATION, kw_only=True)
    # an instruction task's prompt template: auto, chat or plain (data.instruct.template)
    template: str | None = field(default=None, kw_only=True)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def causal(self) -> bool:
        """Whether the task trains a causal LM (no classifier head) rather than a classifier."""
        return self.kind == INSTRUCTION


@dataclass(frozen=True)
class GlueTask(TaskSpec):
    """A GLUE task: its spec plus where a GLUE folder keeps it and how its files name things.

    ``raw_labels[i]`` is the label text the files use for label id ``i`` (``entailment`` for
    RTE's 0), so ids match GLUE and the hub copy ``nyu-mll/glue``.
    """

    folder: str
    files: Mapping[str, str] = field(hash=False)  # split -> file name in the folder
    text_columns: tuple[str, ...]
    label_column: str
    raw_labels: tuple[str, ...]
    hub_text_columns: tuple[str, ...]


_BINARY = ("0", "1")
# MRPC's GLUE test.tsv is unlabelled; the original labelled test set has the same rows.
_MRPC_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "msr_paraphrase_test.txt"}
_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}

TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="mrpc",
            label_names=("not_equivalent", "equivalent"),
            metrics=("accuracy", "f1"),
            pair=True,
            folder="MRPC",
            files=_MRPC_FILES,
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            raw_labels=_BINARY,
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="rte",
            label_names=("entailment", "not_entailment"),
            metrics=("accuracy",),
            pair=True,
            folder="RTE",
            files=_GLUE_FILES,
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            raw_labels=("entailment", "not_entailment"),
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="qqp",
            label_names=("not_duplicate", "duplicate"),
            metrics=("accuracy", "f1"),
            pair=True,
            folder="QQP",
            files=_GLUE_FILES,
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            raw_labels=_BINARY,
            hub_text_columns=("question1", "question2"),
        ),
        GlueTask(
            name="sst2",
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            pair=False,
            folder="SST-2",
            files=_GLUE_FILES,
            text_columns=("sentence",),
            label_column="label",
            raw_labels=_BINARY,
            hub_text_columns=("sentence",),
        ),
    )
}


def generic_task(name: str, label_names: tuple[str, ...], pair: bool) -> TaskSpec:
    """A CSV/JSONL task; a binary one also reports F1 of label id 1, as GLUE does for MRPC."""
    metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy",)
    return TaskSpec(name=name, label_names=label_names, metrics=metrics, pair=pair)


def instruction_task(name: str, categories: tuple[str, ...], template: str) -> TaskSpec:
    """An instruction task: scored by response loss and perplexity, its categories as labels."""
    return TaskSpec(
        name=name,
        label_names=categories,
        metrics=("loss", "perplexity"),
        pair=True,
        kind=INSTRUCTION,
        template=template,
    )


def is_causal(task_name: str) -> bool:
    """Whether ``data.task`` names an instruction task (a causal LM, no classifier head)."""
    return task_name in INSTRUCTION_TASKS


def available_tasks() -> list[str]:
    """Every value ``data.task`` accepts."""
    return [*TASKS, *GENERIC_TASKS, *INSTRUCTION_TASKS]
