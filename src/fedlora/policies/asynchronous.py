"""What the asynchronous policies share: ``concurrency`` clients always at work, no barrier.

A finished (or lost) job frees its slot, which goes at once to an idle client picked at random
(seeded); with ``concurrency`` equal to the number of clients, that is the client that just
finished, so no finished client is ever held idle. A result more than ``staleness_bound``
behind the global (in ``server.staleness_unit``) is dropped and counted. Every
``concurrency`` finished jobs count as one round, so ``server.rounds`` buys every policy the
same number of client updates as FedAvg with ``per_round`` equal to ``concurrency``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from fedlora.config import ServerConfig
from fedlora.policies.base import (
    Arrival,
    ClientInfo,
    Decision,
    Dispatch,
    Drop,
    Policy,
    PolicyOptions,
)


class AsyncOptions(PolicyOptions):
    """What every asynchronous policy reads: ``concurrency`` clients at work at once, and the
    ``staleness_bound`` past which a result is dropped (semiasync: waited for)."""

    concurrency: int = 10
    staleness_bound: int | None = None

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        if self.concurrency > num_clients:
            raise ValueError(
                f"server.concurrency: {self.concurrency} clients training at once but"
                f" clients.num is {num_clients}"
            )

    def check_window_fills(self, window: int, policy: str, rounds: int) -> None:
        """A policy whose first merge waits for ``window`` results (FedBuff's buffer, FedFa's
        window) never merges in a run that ends before that many jobs finish."""
        budget = rounds * self.concurrency
        if window > budget:
            raise ValueError(
                f"server.window: {policy} first merges once {window} results are in, but the"
                f" run ends after server.rounds × server.concurrency = {rounds}"
                f" × {self.concurrency} = {budget} finished jobs: it would never merge"
            )


class AsyncPolicy(Policy):
    default_weights = "uniform"
    Options: ClassVar[type[PolicyOptions]] = AsyncOptions
    options: AsyncOptions

    def __init__(self, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> None:
        super().__init__(server, clients, seed)
        self._busy: set[int] = set()
        self._finished_jobs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "busy": sorted(self._busy),
            "finished_jobs": self._finished_jobs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._busy = set(state["busy"])
        self._finished_jobs = state["finished_jobs"]

    def start(self) -> list[Decision]:
        everyone = [c.client for c in self.clients]
        return self._dispatch(sorted(self.rng.sample(everyone, self.options.concurrency)))

    def on_arrival(self, arrival: Arrival) -> list[Decision]:
        self._finish(arrival.client)
        staleness = self.staleness_of(arrival.dispatched_version)
        bound = self.options.staleness_bound
        if bound is not None and staleness > bound:
            decisions: list[Decision] = [
                Drop(arrival.job, f"staleness {staleness} exceeds staleness_bound {bound}")
            ]
        else:
            decisions = self.accept(arrival, staleness)
        return decisions + self._refill()

    def on_lost(self, job: int, client: int) -> list[Decision]:
        self._finish(client)
        return self._refill()

    @abstractmethod
    def accept(self, arrival: Arrival, staleness: int) -> list[Decision]:
        """A fresh-enough result arrived: merge it, hold it, or both."""

    def _finish(self, client: int) -> None:
        self._busy.discard(client)
        self._count_finished()

    def _count_finished(self) -> None:
        self._finished_jobs += 1
        self.rounds = self._finished_jobs // self.options.concurrency

    def _refill(self) -> list[Decision]:
        idle = [c.client for c in self.clients if c.client not in self._busy]
        return self._dispatch([self.rng.choice(idle)])

    def _dispatch(self, chosen: list[int]) -> list[Decision]:
        self._busy.update(chosen)
        return [Dispatch(client) for client in chosen]
