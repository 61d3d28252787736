"""Where a simulated job trains.

The simulator fixes a job when it dispatches it and consumes its result when the virtual
clock reaches the job's modelled completion. A runner is told of the job at the first moment
and asked for its result at the second, so a remote runner (Flower's simulation engine) can
train every job in flight in parallel while the simulator still takes results in virtual-time
order: the event log is the in-process simulator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedlora.client.protocol import Learner, LocalResult
from fedlora.server.jobs import Job


class JobFailed(Exception):
    """The job's trainer answered with an error instead of a result: the job is lost."""


class JobRunner(Protocol):
    def submit(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> None:
        """Start ``job`` (at its dispatch, and again when a run resumes with it in flight; a
        job that will never deliver is not submitted)."""

    def result(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        """The trained result of the submitted ``job``; raises :class:`JobFailed` when its
        trainer failed."""


class InProcess:
    """Trains each job on this process's learner when its result is due."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def submit(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> None:
        """Nothing to start: the job trains when its result is asked for."""

    def result(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        return self.learner.train(job.sent, batches, seed)
