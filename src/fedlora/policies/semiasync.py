"""Plato's semi-asynchronous server (``synchronous: false``): the baseline FedFa was built to beat.

``concurrency`` clients train at once. A finished client reports and then *waits*: its slot is
not refilled until the next aggregation. The server aggregates every report it holds once at
least K (``server.window``, Plato's ``minimum_clients_aggregated``) are in **and** no client
still training started from a global more than ``staleness_bound`` behind (in
``server.staleness_unit``): Plato makes the reporters wait for such stragglers, it never drops
them. After the merge each reporter's slot goes to an idle client picked at random (seeded).

A lost job frees its slot at once and may release the wait, so the server never waits for a
result that will not come: with K ≤ ``concurrency`` someone is always training while fewer
than K reports are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from fedlora.config import ServerConfig
from fedlora.policies.asynchronous import AsyncOptions, AsyncPolicy
from fedlora.policies.base import Arrival, ClientInfo, Decision, PolicyOptions, registry


class SemiAsyncOptions(AsyncOptions):
    """``staleness_bound`` is how far behind a client still training may be before the
    server waits for it (never dropped)."""

    minimum: int = Field(5, alias="window")  # K: reports held before an aggregation

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        super().check(policy, rounds, num_clients)
        if self.minimum > self.concurrency:
            raise ValueError(
                f"server.window: semiasync waits for {self.minimum} reports but only"
                f" server.concurrency {self.concurrency} clients train at once"
            )


@registry.register("semiasync")
class SemiAsyncPolicy(AsyncPolicy):
    name = "semiasync"
    Options: ClassVar[type[PolicyOptions]] = SemiAsyncOptions
    options: SemiAsyncOptions

    def __init__(self, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> None:
        super().__init__(server, clients, seed)
        self._training: dict[int, int] = {}  # client → the version its job was projected from
        self._reported: list[Arrival] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "training": sorted(self._training.items()),
            "reported": [a.to_json() for a in self._reported],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._training = dict(state["training"])
        self._reported = [Arrival.from_json(a) for a in state["reported"]]

    def on_arrival(self, arrival: Arrival) -> list[Decision]:
        del self._training[arrival.client]
        self._count_finished()  # the client stays busy: it waits for the aggregation
        return self.accept(arrival, self.staleness_of(arrival.dispatched_version))

    def on_lost(self, job: int, client: int) -> list[Decision]:
        del self._training[client]
        self._finish(client)
        decisions = self._aggregate_if_ready()  # the lost job may have been the straggler
        return decisions + self._refill()

    def accept(self, arrival: Arrival, staleness: int) -> list[Decision]:
        """Hold the report, however stale (its age is measured again when it is merged)."""
        self._reported.append(arrival)
        return self._aggregate_if_ready()

    def waiting_for(self) -> list[int]:
        """Clients still training from a global more than ``staleness_bound`` behind."""
        bound = self.options.staleness_bound
        if bound is None:
            return []
        return sorted(c for c, v in self._training.items() if self.staleness_of(v) > bound)

    def _aggregate_if_ready(self) -> list[Decision]:
        if len(self._reported) < self.options.minimum or self.waiting_for():
            return []
        reported, self._reported = self._reported, []
        results = [(a, self.staleness_of(a.dispatched_version)) for a in reported]
        merge = self.step_towards(results, release=[a.job for a in reported])
        decisions: list[Decision] = [merge]
        for arrival in reported:
            self._busy.discard(arrival.client)
        for _ in reported:
            decisions += self._refill()
        return decisions

    def _dispatch(self, chosen: list[int]) -> list[Decision]:
        self._training.update(dict.fromkeys(chosen, self.version))
        return super()._dispatch(chosen)
