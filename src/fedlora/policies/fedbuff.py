"""FedBuff (Nguyen et al., 2022): buffer K results, then apply their mean in one step.

Clients train concurrently with no barrier; each result waits in the buffer, and after K
(``server.window``) of them the server applies their (staleness-weighted) mean: with
``server.update: delta`` the paper's x ← x + η·mean of the deltas, with ``model`` the mean of
the client adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from fedlora.config import ServerConfig
from fedlora.policies.asynchronous import AsyncOptions, AsyncPolicy
from fedlora.policies.base import Arrival, ClientInfo, Decision, PolicyOptions, registry


class FedBuffOptions(AsyncOptions):
    buffer: int = Field(5, alias="window")  # K: results held before one step

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        super().check(policy, rounds, num_clients)
        self.check_window_fills(self.buffer, policy, rounds)


@registry.register("fedbuff")
class FedBuffPolicy(AsyncPolicy):
    name = "fedbuff"
    Options: ClassVar[type[PolicyOptions]] = FedBuffOptions
    options: FedBuffOptions

    def __init__(self, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> None:
        super().__init__(server, clients, seed)
        self._buffer: list[tuple[Arrival, int]] = []

    def state_dict(self) -> dict[str, Any]:
        held = [[a.to_json(), staleness] for a, staleness in self._buffer]
        return {**super().state_dict(), "buffer": held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._buffer = [(Arrival.from_json(a), staleness) for a, staleness in state["buffer"]]

    def accept(self, arrival: Arrival, staleness: int) -> list[Decision]:
        self._buffer.append((arrival, staleness))
        if len(self._buffer) < self.options.buffer:
            return []
        buffered, self._buffer = self._buffer, []
        return [self.step_towards(buffered, release=[a.job for a, _ in buffered])]
