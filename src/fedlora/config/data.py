"""``data``: the task, its files, how its rows are read, partitioned among clients and degraded."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedlora.config.section import FilePath, Section

GENERIC_TASKS = ("csv", "jsonl", "instruct")  # tasks whose files are data.files


class PartitionConfig(Section):
    """How training examples are split among clients.

    ``dirichlet`` gives each client a Dir(alpha) share of every group: a label, or with
    ``by`` a context score, a quantile bucket of it (``buckets``). ``sorted`` orders the
    examples by ``by`` and deals out contiguous bands; ``strictness`` 1 is a strict order,
    0 a random one (IID). ``within_labels`` ranks each example among those of its own label,
    so the bands skew the score while every client keeps the pooled label mix (where the
    score and the label are correlated, plain bands skew both).
    """

    method: Literal["iid", "dirichlet", "sorted", "given"] = "iid"
    by: Literal[
        "label",
        "length",
        "sentences",
        "lexical",
        "column",
        "prompt",
        "context",
        "response",
        "perplexity",
    ] = "label"
    alpha: Annotated[float, Field(gt=0)] = 0.5
    buckets: Annotated[int, Field(ge=1)] = 5
    strictness: Annotated[float, Field(ge=0, le=1)] = 1.0
    min_size: Annotated[int, Field(ge=1)] = 2
    within_labels: bool = False

    @model_validator(mode="after")
    def _within_labels_bands_a_score(self) -> PartitionConfig:
        if self.within_labels and (self.method != "sorted" or self.by == "label"):
            raise ValueError(
                "data.partition.within_labels: applies to method: sorted with by a score"
            )
        return self


class DegradeConfig(Section):
    """Lower the text quality of a random ``share`` of clients' training examples.

    ``dropout`` deletes each word with probability ``rate``; ``shuffle`` puts the sentences
    of each text segment in a new order (a segment of one sentence, or of one sentence
    repeated, is left as is); ``truncate`` cuts the last ``rate`` share of each segment's
    words. At least one word always stays.
    """

    share: Annotated[float, Field(gt=0, le=1)]
    kind: Literal["dropout", "shuffle", "truncate"] = "dropout"
    rate: Annotated[float, Field(gt=0, le=1)] = 0.3
    # what is degraded: every text segment, or an instruction row's context or response alone
    part: Literal["texts", "context", "response"] = "texts"


class InstructConfig(Section):
    """The fields of an instruction row (``data.task: instruct``) and how its prompt is built.

    Defaults fit Dolly; Alpaca's rows are ``{context: input, response: output, category:
    null}``. ``context`` and ``category`` may be null when the rows have none. ``template``:
    ``chat`` is the tokenizer's chat template, ``plain`` the documented plain one (README),
    ``auto`` the chat template when the tokenizer has one.
    """

    instruction: str = "instruction"
    context: str | None = "context"
    response: str = "response"
    category: str | None = "category"
    template: Literal["auto", "chat", "plain"] = "auto"


class DataConfig(Section):
    task: str = "mrpc"
    dir: FilePath | None = None
    source: Literal["folder", "hub"] = "folder"
    max_length: Annotated[int, Field(ge=8)] = 128
    max_train_examples: Annotated[int | None, Field(ge=1)] = None
    max_eval_examples: Annotated[int | None, Field(ge=1)] = None
    cache_dir: FilePath | None = None
    # Generic CSV / JSONL classification (task: csv or jsonl): one file per split.
    files: dict[str, FilePath] | None = None
    text_columns: list[str] | None = None
    label_column: str = "label"
    score_column: str | None = None  # a numeric column: the context score ``by: column``
    client_column: str | None = None  # an integer column: each row's client (method: given)
    instruct: InstructConfig = InstructConfig()
    partition: PartitionConfig = PartitionConfig()
    degrade: DegradeConfig | None = None

    @model_validator(mode="after")
    def _column_named(self) -> DataConfig:
        if self.partition.by == "column" and self.score_column is None:
            raise ValueError(
                "data.partition.by: 'column' needs data.score_column, the file's score column"
            )
        if self.partition.by == "perplexity" and self.task != "instruct":
            raise ValueError(
                "data.partition.by: 'perplexity' is a response's perplexity under the base causal"
                f" LM, a score of instruction rows (data.task: instruct); task {self.task!r}"
                " trains a classifier"
            )
        if self.degrade is not None and self.degrade.part != "texts" and self.task != "instruct":
            raise ValueError(
                f"data.degrade.part: {self.degrade.part!r} is a part of instruction rows"
                " (data.task: instruct); a classification task's is texts"
            )
        if (self.partition.method == "given") != (self.client_column is not None):
            raise ValueError(
                "data.partition.method: 'given' and data.client_column go together: the"
                " column names each row's client (Dolly's FedIT split: fedit_client)"
            )
        return self
