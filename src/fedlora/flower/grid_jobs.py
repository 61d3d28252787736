"""Simulated jobs trained on a Grid's nodes, for Flower's simulation engine.

The simulator keeps the virtual clock, the cost model and availability; each job it dispatches
is pushed to its client's node at once, so every job in flight trains in parallel (one Ray
actor per node), and its reply is waited for only when the clock reaches the job's modelled
completion. Replies that come early are kept until then. So a run gives the in-process
simulator's event log, whatever order the nodes finish in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedlora.client.protocol import LocalResult
from fedlora.flower.grid_runtime import read_result, train_message
from fedlora.flower.records import JobFields
from fedlora.server.core import Job
from fedlora.sim.jobs import JobFailed


class GridJobs:
    """A :class:`~fedlora.sim.jobs.JobRunner` over ``grid``: client ``k`` trains on node
    ``nodes[k]``; a reply that is an error, is malformed, or whose node left is a lost job."""

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[int, int],
        config_json: str,
        poll_s: float = 0.02,
        liveness_s: float = 1.0,
    ) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.config_json = config_json
        self.poll_s = poll_s
        self.liveness_s = liveness_s
        self._pushed: dict[int, str] = {}  # job: message id
        self._replies: dict[str, Message] = {}  # message id: a reply pulled before it was due

    def submit(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> None:
        fields = JobFields(job.id, job.client, job.version, job.sent.rank)
        message = train_message(job.sent, fields, self.nodes[job.client], self.config_json)
        (self._pushed[job.id],) = self.grid.push_messages([message])

    def result(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        if job.id not in self._pushed:  # the run resumed since its dispatch: train it now
            self.submit(job, batches, seed)
        message_id = self._pushed.pop(job.id)
        node = self.nodes[job.client]
        checked = time.monotonic()
        while message_id not in self._replies:
            # a SuperLink hands out each reply once: pull only ids not answered yet
            wanted = [m for m in (message_id, *self._pushed.values()) if m not in self._replies]
            replies = list(self.grid.pull_messages(wanted))
            self._replies.update((r.metadata.reply_to_message_id, r) for r in replies)
            if time.monotonic() - checked >= self.liveness_s:
                if node not in self.grid.get_node_ids():
                    raise JobFailed(f"node {node} left the federation")
                checked = time.monotonic()
            if not replies:
                time.sleep(self.poll_s)
        try:
            fields, state = read_result(self._replies.pop(message_id), node)
        except ValueError as failure:
            raise JobFailed(str(failure)) from None
        return LocalResult(state, fields.loss, fields.examples, steps=len(batches))
