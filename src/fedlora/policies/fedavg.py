"""Synchronous FedAvg rounds: sample a cohort, wait for every member, merge by sample count."""

from __future__ import annotations

from typing import Any, ClassVar

from fedlora.policies.base import Arrival, Decision, Dispatch, Policy, PolicyOptions, registry


class FedAvgOptions(PolicyOptions):
    per_round: int | None = None  # clients sampled per round; None: every client

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        if self.per_round is not None and self.per_round > num_clients:
            raise ValueError(
                f"server.per_round: {self.per_round} clients per round but clients.num"
                f" is {num_clients}"
            )


@registry.register("fedavg")
class FedAvgPolicy(Policy):
    name = "fedavg"
    Options: ClassVar[type[PolicyOptions]] = FedAvgOptions
    options: FedAvgOptions

    def start(self) -> list[Decision]:
        return self._new_round()

    def _new_round(self) -> list[Decision]:
        per_round = self.options.per_round or len(self.clients)
        cohort = sorted(self.rng.sample([c.client for c in self.clients], per_round))
        self._waiting = len(cohort)
        self._arrived: list[Arrival] = []
        return [Dispatch(client) for client in cohort]

    def state_dict(self) -> dict[str, Any]:
        arrived = [a.to_json() for a in self._arrived]
        return {**super().state_dict(), "waiting": self._waiting, "arrived": arrived}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._waiting = state["waiting"]
        self._arrived = [Arrival.from_json(a) for a in state["arrived"]]

    def on_arrival(self, arrival: Arrival) -> list[Decision]:
        self._arrived.append(arrival)
        return self._one_fewer()

    def on_lost(self, job: int, client: int) -> list[Decision]:
        return self._one_fewer()

    def _one_fewer(self) -> list[Decision]:
        self._waiting -= 1
        if self._waiting > 0:
            return []
        self.rounds += 1
        decisions: list[Decision] = []
        if self._arrived:
            fresh = [(a, 0) for a in self._arrived]  # a synchronous round has no staleness
            decisions.append(self.step_towards(fresh, release=[a.job for a in self._arrived]))
        return decisions + self._new_round()
