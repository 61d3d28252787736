"""The experiment config's schema: one frozen pydantic section per config block.

Validators raise messages that start with the key they are about (``server.per_round: …``), so
the loader can add the file and line and the user sees which key to change.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationInfo,
    model_validator,
)

GENERIC_TASKS = ("csv", "jsonl", "instruct")  # tasks whose files are data.files


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key (and file:line if known)."""


class _Section(BaseModel):
    """Strict where YAML is loose: no unknown keys, no ``inf``/``nan``, no ``true`` or ``"3"``
    where a number is meant (an int where a float is meant is fine)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# YAML has no path type: a path is written as text.
FilePath = Annotated[Path, Strict(False)]


class PartitionConfig(_Section):
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


class DegradeConfig(_Section):
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


class InstructConfig(_Section):
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


class DataConfig(_Section):
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


class RandomInitConfig(_Section):
    """Sizes of a randomly initialised model built from the named model's config (tests)."""

    hidden_size: Annotated[int, Field(ge=2)] = 32
    num_hidden_layers: Annotated[int, Field(ge=1)] = 2
    num_attention_heads: Annotated[int, Field(ge=1)] = 2
    intermediate_size: Annotated[int, Field(ge=2)] = 64


class ModelConfig(_Section):
    name: str | None = None
    gguf_file: str | None = None  # a GGUF checkpoint inside ``name`` (a folder or hub id)
    # bf16 autocast; auto: where the device computes bf16 natively (AMX or AVX512-BF16 on a
    # CPU, a GPU that supports it), else float32.
    bf16: bool | Literal["auto"] = False
    init: Literal["pretrained", "random"] = "pretrained"
    random: RandomInitConfig = RandomInitConfig()


class LoraConfig(_Section):
    r: Annotated[int, Field(ge=1)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    target_modules: Annotated[list[str], Field(min_length=1)] = ["query", "value"]
    # rsLoRA (PEFT's use_rslora): scale α/√r instead of α/r, so that at one alpha every rank
    # trains at a comparable step size (under α/r a rank-2 update moves 8× a rank-16 one).
    rslora: bool = False

    def alpha_at(self, rank: int) -> float:
        """The alpha that gives ``rank`` this config's scaling in the standard form α/r, which
        fedlora keeps everywhere inside (α·√r under rsLoRA); exports convert back."""
        return self.alpha * math.sqrt(rank) if self.rslora else self.alpha


class ConstantSpeed(_Section):
    distribution: Literal["constant"]
    value: Annotated[float, Field(gt=0)] = 1.0


class UniformSpeed(_Section):
    distribution: Literal["uniform"]
    low: Annotated[float, Field(gt=0)] = 1.0
    high: Annotated[float, Field(gt=0)] = 10.0
    cap: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _ordered(self) -> UniformSpeed:
        if self.low > self.high:
            raise ValueError(f"clients.speed: low {self.low} is above high {self.high}")
        return self


class NormalSpeed(_Section):
    distribution: Literal["normal"]
    mean: Annotated[float, Field(gt=0)] = 5.0
    std: Annotated[float, Field(ge=0)] = 2.0
    cap: Annotated[float | None, Field(gt=0)] = None


class LognormalSpeed(_Section):
    distribution: Literal["lognormal"]
    mean: float = 0.0
    sigma: Annotated[float, Field(ge=0)] = 1.0
    cap: Annotated[float | None, Field(gt=0)] = None


class ParetoSpeed(_Section):
    distribution: Literal["pareto"]
    alpha: Annotated[float, Field(gt=0)] = 1.0
    cap: Annotated[float | None, Field(gt=0)] = None


class ZipfSpeed(_Section):
    distribution: Literal["zipf"]
    alpha: Annotated[float, Field(gt=1)] = 2.0
    cap: Annotated[float | None, Field(gt=0)] = None


_SPEEDS = (ConstantSpeed, UniformSpeed, NormalSpeed, LognormalSpeed, ParetoSpeed, ZipfSpeed)
SpeedConfig = Annotated[
    ConstantSpeed | UniformSpeed | NormalSpeed | LognormalSpeed | ParetoSpeed | ZipfSpeed,
    Field(discriminator="distribution"),
]
# pydantic puts the union's tag into an error's location; users never wrote it, so drop it.
UNION_TAGS = {get_args(cls.model_fields["distribution"].annotation)[0] for cls in _SPEEDS}


# Tier ranks are mapping keys, which a JSON-mode dump (a run's config.yaml) writes as text.
Rank = Annotated[int, Strict(False), Field(ge=1)]
Share = Annotated[float, Field(gt=0)]


class AvailabilityConfig(_Section):
    """When a client's job never delivers: it fails, or the client is offline during it.

    A client alternates online and offline stretches of exponentially distributed lengths
    (means in virtual seconds; both null: always online). A job fails when its client is
    offline at any moment of it, or with probability ``failure_prob``.
    """

    failure_prob: Annotated[float, Field(ge=0, le=1)] = 0.0
    mean_online_s: Annotated[float | None, Field(gt=0)] = None
    mean_offline_s: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> AvailabilityConfig:
        if (self.mean_online_s is None) != (self.mean_offline_s is None):
            raise ValueError(
                "clients.availability: set both mean_online_s and mean_offline_s, or neither"
            )
        return self


class ClientsConfig(_Section):
    num: Annotated[int, Field(ge=1)] = 10
    # LoRA rank per client: one per client, tiers with shares ({2: 0.5, 8: 0.5}), or null for
    # lora.r everywhere. Tiers go to clients at random, or by speed (fastest get the largest).
    ranks: list[Rank] | dict[Rank, Share] | None = None
    rank_by: Literal["random", "speed"] = "random"
    speed: SpeedConfig = ConstantSpeed(distribution="constant")
    bandwidth_mbps: Annotated[float, Field(gt=0)] = 100.0
    # Virtual seconds one token costs a client of slowness 1 (forward + backward).
    seconds_per_token: Annotated[float, Field(gt=0)] = 1.0e-3
    availability: AvailabilityConfig = AvailabilityConfig()

    @model_validator(mode="after")
    def _ranks_fit(self) -> ClientsConfig:
        if isinstance(self.ranks, list) and len(self.ranks) != self.num:
            raise ValueError(
                f"clients.ranks: {len(self.ranks)} ranks listed for {self.num} clients"
                " (clients.num)"
            )
        if isinstance(self.ranks, dict) and abs(sum(self.ranks.values()) - 1) > 1e-6:
            raise ValueError(
                f"clients.ranks: tier shares sum to {sum(self.ranks.values()):g}, expected 1"
            )
        return self


class TrainConfig(_Section):
    local_steps: Annotated[int | None, Field(ge=1)] = 20
    local_epochs: Annotated[float | None, Field(gt=0)] = None
    batch_size: Annotated[int, Field(ge=1)] = 16
    # AdamW moves every weight by up to lr per step: above 1 it is a typo, never a schedule
    # (and past float32's range its step overflows inside torch).
    lr: Annotated[float, Field(gt=0, le=1)] = 5.0e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float | None, Field(gt=0)] = 1.0

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("train: set exactly one of local_steps and local_epochs")
        return self


class StalenessConfig(_Section):
    """s(τ): constant (1), polynomial (τ+1)^(−a), or hinge (1 if τ ≤ b, else 1/(a(τ−b)+1))."""

    function: Literal["constant", "polynomial", "hinge"] = "constant"
    a: Annotated[float, Field(ge=0)] = 0.5
    b: Annotated[float, Field(ge=0)] = 4.0


class DefenceConfig(_Section):
    """A robust centre of the client results a merge takes, in place of their weighted mean:
    the coordinate-wise median, or the mean of what is left after trimming ``trim`` of the
    results at each end, of their updates (products s·B·A and head, against what each job was
    sent). Norm clipping of the product is ``server.max_update_norm`` with
    ``norm_action: clip``."""

    centre: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim: Annotated[float, Field(ge=0, lt=0.5)] = 0.1


class ServerConfig(_Section):
    policy: str = "fedavg"
    aggregator: str = "fedavg"
    per_round: Annotated[int | None, Field(ge=1)] = None
    # Asynchronous policies: clients training at once, and K (FedBuff's buffer, FedFa's window,
    # semiasync's minimum). Each policy reads its own keys (``fedlora.policies``' options).
    concurrency: Annotated[int, Field(ge=1)] = 10
    window: Annotated[int, Field(ge=1)] = 5
    # How results are weighted in a merge: by sample count, or equally; null: the policy's own
    # default (samples for fedavg, uniform for the asynchronous policies).
    weights: Literal["samples", "uniform"] | None = None
    staleness: StalenessConfig = StalenessConfig()
    defence: DefenceConfig = DefenceConfig()
    # Older results are dropped (semiasync instead waits for clients still training that far
    # behind, as Plato does).
    staleness_bound: Annotated[int | None, Field(ge=0)] = None
    # The unit of staleness for staleness_bound, s(τ) and the reports: client results the global
    # absorbed since the job's dispatch (the same meaning under every policy), or merges.
    staleness_unit: Literal["updates", "merges"] = "updates"
    # An update farther than this (Frobenius norm over A, B and head) from what its job was
    # sent is rejected, or clipped back to it (norm_action); null: no bound.
    max_update_norm: Annotated[float | None, Field(gt=0)] = None
    norm_action: Literal["reject", "clip"] = "reject"
    mixing: Annotated[float, Field(gt=0, le=1)] = 0.6  # FedAsync's alpha
    # Virtual seconds a job may take from dispatch; a later result is lost. null: no deadline.
    job_timeout: Annotated[float | None, Field(gt=0)] = None
    rounds: Annotated[int, Field(ge=1)] = 50
    max_steps: Annotated[int | None, Field(ge=1)] = None
    max_virtual_time: Annotated[float | None, Field(gt=0)] = None
    # model: the global becomes the weighted mean of client adapters; delta: the global moves
    # by server_lr × the weighted mean of (client adapter − what that client was sent).
    update: Literal["model", "delta"] = "model"
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    global_rank: Annotated[int | None, Field(ge=1)] = None  # null: the largest client rank
    aggregator_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _server_lr_needs_delta(self) -> ServerConfig:
        if self.update == "model" and self.server_lr != 1.0:
            raise ValueError("server.server_lr: applies to update: delta only")
        return self


class TargetConfig(_Section):
    # A metric named *loss or *perplexity is reached from above, any other from below.
    metric: str = "accuracy"
    value: float
    stop: bool = False
    # The summary also reports the first evaluation where the mean of the last `smooth`
    # evaluations reaches the target, and, when `max_loss` is set, the first with loss ≤ it.
    smooth: Annotated[int, Field(ge=1)] = 3
    max_loss: Annotated[float | None, Field(ge=0)] = None


class ChoicesConfig(_Section):
    """Multiple-choice accuracy of an instruction run's global model, at its start (the base
    model) and its end: a JSONL file of ``{query, choices, gold}`` rows (ARC's layout), relative
    to ``data.dir`` unless absolute; ``limit``: its first this many questions."""

    file: FilePath
    limit: Annotated[int | None, Field(ge=1)] = None


class GenerateConfig(_Section):
    """Greedy answers of an instruction run's global model to these instructions, at its start
    and its end, for a person to read what training changed."""

    prompts: Annotated[list[str], Field(min_length=1)]
    max_new_tokens: Annotated[int, Field(ge=1)] = 64


class EvalConfig(_Section):
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
    shadow: list[str] = []
    choices: ChoicesConfig | None = None
    generate: GenerateConfig | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> EvalConfig:
        if self.every_seconds is not None and self.grid_seconds is not None:
            raise ValueError("eval.grid_seconds: set either it or eval.every_seconds, not both")
        return self


class RuntimeConfig(_Section):
    """How a run executes, not what it computes: these may change the rounding, never the
    experiment."""

    threads: Annotated[int | None, Field(ge=1)] = None
    # Where the backbone trains and scores ("cpu", "cuda", "cuda:1"). A GPU sums in another
    # order, so the rounding differs, but the experiment is the same: a study cell finished
    # on one device counts as done on any other.
    device: str = "cpu"
    # A checkpoint (the whole run state, for --resume) after this many merges, and/or after
    # this many wall seconds since the last one; both null: none.
    checkpoint_every: Annotated[int | None, Field(ge=1)] = None
    checkpoint_seconds: Annotated[float | None, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _known_device(self) -> RuntimeConfig:
        if self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ValueError(
                f"runtime.device: {self.device!r} is not a device fedlora runs on; "
                "use cpu, cuda or cuda:N"
            )
        return self


def _plain_folder_name(name: str) -> str:
    """A run's name is its folder's (results/<name>): one folder, never a path out of it."""
    if name in ("", ".", "..") or any(char in name for char in "/\\\0"):
        raise ValueError(
            f"{name!r} is not a plain folder name; the run folder results/<name> must stay"
            " inside results/ (use --out to write elsewhere)"
        )
    return name


RunName = Annotated[str, AfterValidator(_plain_folder_name)]


class Origins(dict[tuple[str, ...], str]):
    """Where each key path's value came from (``exp.yaml:4``, ``--set server.rounds=3``), for
    messages only: two configs holding the same values are equal wherever they came from."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Origins)

    __hash__ = None


class ExperimentConfig(_Section):
    name: RunName = "experiment"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    clients: ClientsConfig = ClientsConfig()
    train: TrainConfig = TrainConfig()
    server: ServerConfig = ServerConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    # Set by the loader (validation context ``origins``); the policy, the aggregator and the
    # other checks that need the registries run after parsing (:mod:`fedlora.preflight`) and
    # name where the key they blame was set, as a parse error does.
    _origins: Origins = PrivateAttr(default_factory=Origins)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ExperimentConfig:
        if self.server.global_rank is not None and self.global_rank < self.max_client_rank:
            raise ValueError(
                f"server.global_rank: {self.global_rank} is below the largest client"
                f" rank {self.max_client_rank}"
            )
        if info.context and "origins" in info.context:
            self._origins = Origins(info.context["origins"])
        return self

    @property
    def origins(self) -> Origins:
        """Where each key path was set, when the config was loaded from a file or ``--set``."""
        return self._origins

    @property
    def max_client_rank(self) -> int:
        ranks = self.clients.ranks
        return max(ranks) if ranks else self.lora.r

    @property
    def global_rank(self) -> int:
        """The rank the server keeps the global adapter at."""
        return self.server.global_rank or self.max_client_rank

    @property
    def cohort_size(self) -> int:
        """Clients sampled per synchronous round (all clients when per_round is unset)."""
        return self.server.per_round or self.clients.num
