"""The experiment config: one frozen pydantic section per config block, each in the module of
its topic (:mod:`~fedlora.config.data`, :mod:`~fedlora.config.training`,
:mod:`~fedlora.config.clients`, :mod:`~fedlora.config.server`,
:mod:`~fedlora.config.evaluation`), and the whole here.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, model_validator

from fedlora.config.clients import ClientsConfig
from fedlora.config.data import DataConfig
from fedlora.config.evaluation import EvalConfig
from fedlora.config.section import Section
from fedlora.config.server import ServerConfig
from fedlora.config.training import LoraConfig, ModelConfig, TrainConfig


class RuntimeConfig(Section):
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


class ExperimentConfig(Section):
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
