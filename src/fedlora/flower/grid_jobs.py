"""Simulated jobs trained on a Grid's nodes, for Flower's simulation engine.

The simulator keeps the virtual clock, the cost model and availability; each job it dispatches
is pushed to its client's node at once, so every job in flight trains in parallel (one Ray
actor per node), and its reply is waited for only when the clock reaches the job's modelled
completion. Replies that come early are kept until then. So a run gives the in-process
simulator's event log, whatever order the nodes finish in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.serverapp import Grid

from fedlora.client.protocol import LocalResult
from fedlora.flower.inbox import Answer, Inbox, train_message
from fedlora.flower.records import JobFields
from fedlora.server.jobs import Job
from fedlora.sim.jobs import JobFailed


class GridJobs:
    """A :class:`~fedlora.sim.jobs.JobRunner` over ``grid``: client ``k`` trains on node
    ``nodes[k]``; a reply that is an error, is malformed, or whose node left is a lost job.
    (``server.job_timeout`` is the simulator's, in virtual time: the inbox has no deadline.)"""

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[int, int],
        config_json: str,
        poll_s: float = 0.02,
        liveness_s: float = 1.0,
    ) -> None:
        self.nodes = dict(nodes)
        self.config_json = config_json
        self.inbox = Inbox(grid, None, poll_s, liveness_s)
        self._answers: dict[int, Answer] = {}  # job: an answer that came before it was due

    def submit(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> None:
        fields = JobFields(job.id, job.client, job.version, job.sent.rank)
        message = train_message(job.sent, fields, self.nodes[job.client], self.config_json)
        self.inbox.push(message, job.id)

    def result(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        while job.id not in self._answers:
            self._answers.update((a.pending.job, a) for a in self.inbox.answers())
        try:
            fields, state = self._answers.pop(job.id).read()
        except ValueError as failure:
            raise JobFailed(str(failure)) from None
        return LocalResult(state, fields.loss, fields.examples, steps=len(batches))
