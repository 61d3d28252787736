"""The aggregator contract: how client adapters merge, and what each client is handed back.

Pure tensor math with no I/O and no clock, so any aggregator runs under any policy and any
runtime. Aggregators work on the *effective* update: they fold each state's scaling alpha/r into
B before combining and unfold the receiving side's scaling on the way out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from fedlora.adapters import AdapterState
from fedlora.config import LoraConfig
from fedlora.registry import Registry


class Aggregator(ABC):
    """Template: :meth:`combine` merges weighted states; :meth:`project` serves one client."""

    name: ClassVar[str]
    same_rank_only: ClassVar[bool] = False

    def __init__(self, lora: LoraConfig) -> None:
        self.lora = lora

    def check_ranks(self, ranks: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the key if this aggregator cannot serve these ranks."""
        if self.same_rank_only and len(set(ranks)) > 1:
            raise ValueError(
                f"server.aggregator: {self.name} merges same-rank LoRA only, client ranks are"
                f" {sorted(set(ranks))}"
            )

    @abstractmethod
    def combine(self, states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
        """The global state for Σ_k weights[k]·states[k] (weights are used as given)."""

    def project(self, global_state: AdapterState, rank: int) -> AdapterState:
        """What a client of ``rank`` receives; same-rank aggregators hand the global state as is."""
        if global_state.rank != rank:
            raise ValueError(
                f"{self.name} cannot serve a rank-{rank} client from a rank-{global_state.rank}"
                " global adapter"
            )
        return global_state


registry: Registry[Aggregator] = Registry("server.aggregator")


def available() -> list[str]:
    """The registered aggregator names (the values ``server.aggregator`` accepts)."""
    return registry.available()


def create(name: str, lora: LoraConfig) -> Aggregator:
    return registry.get(name)(lora)
