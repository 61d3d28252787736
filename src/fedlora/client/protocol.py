"""What the runtimes need from the model side, as protocols: a fake learner stands in for the
real one in tests, and a Flower client or a server-side evaluator can serve the same roles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedlora.adapters import AdapterState


@dataclass(frozen=True)
class LocalResult:
    state: AdapterState
    loss: float
    examples: int
    steps: int


@dataclass(frozen=True)
class ClientEvaluation:
    """A client's locally trained model, scored on its own held-out data and on the global
    eval split (empty when ``eval.local_dev`` is off): the local and the global effect of its
    data."""

    own: dict[str, float]
    dev: dict[str, float]


class Evaluator(Protocol):
    """What the server core needs: scores of the global model and of a client's trained one."""

    def evaluate(self, state: AdapterState) -> dict[str, float]: ...

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None: ...


class Learner(Evaluator, Protocol):
    """What the simulator needs besides: plan a job's batches, price them, train them."""

    def initial_state(self) -> AdapterState: ...

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]: ...

    def tokens(self, batches: Sequence[np.ndarray]) -> int: ...

    def train(
        self, start: AdapterState, batches: Sequence[np.ndarray], seed: int
    ) -> LocalResult: ...


def plan_job(learner: Learner, seed: int, client: int, job: int) -> tuple[list[np.ndarray], int]:
    """A job's batches and training seed, from the experiment's seed and the job's id alone:
    the same whichever runtime, process or machine trains it."""
    batches = learner.plan(client, np.random.default_rng([seed, 1, job]))
    return batches, int(np.random.SeedSequence([seed, 2, job]).generate_state(1)[0])
