"""FedFa (Xu et al., 2024): fully asynchronous, a sliding window of the K latest results.

Until the window first fills the server waits, as one FedBuff step would. From then on
**every** arrival makes a new global version from the K most recent results, and the client
that sent it gets new work at once: no barrier, no buffer to wait for. With ``server.update:
model`` the global is the (staleness-weighted) mean of the K windowed client adapters; with
``delta`` it moves by η times the mean of their deltas on every arrival, so each delta counts
η in all over its K steps in the window: η = 1/K gives every delta the weight one FedBuff step
gives it (η = 1 is K times bolder, and kept MRPC at the majority class in our study).
Adapters of any rank fit the window: the aggregator (``hlora``: the low-rank core over the
K·r stacked factors) keeps a merge per arrival cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from fedlora.config import ServerConfig
from fedlora.policies.asynchronous import AsyncOptions, AsyncPolicy
from fedlora.policies.base import Arrival, ClientInfo, Decision, PolicyOptions, registry


class FedFaOptions(AsyncOptions):
    window: int = 5  # K: the latest results every merge takes

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        super().check(policy, rounds, num_clients)
        self.check_window_fills(self.window, policy, rounds)


@registry.register("fedfa")
class FedFaPolicy(AsyncPolicy):
    name = "fedfa"
    Options: ClassVar[type[PolicyOptions]] = FedFaOptions
    options: FedFaOptions

    def __init__(self, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> None:
        super().__init__(server, clients, seed)
        self._window: deque[tuple[Arrival, int]] = deque()

    def state_dict(self) -> dict[str, Any]:
        held = [[a.to_json(), staleness] for a, staleness in self._window]
        return {**super().state_dict(), "window": held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._window = deque((Arrival.from_json(a), staleness) for a, staleness in state["window"])

    def accept(self, arrival: Arrival, staleness: int) -> list[Decision]:
        self._window.append((arrival, staleness))
        if len(self._window) < self.options.window:
            return []
        evicted = [self._window.popleft()[0].job] if len(self._window) > self.options.window else []
        return [self.step_towards(list(self._window), release=evicted)]
