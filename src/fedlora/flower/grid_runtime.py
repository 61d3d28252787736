"""The Flower runtime's server loop: drives the server core over a Grid in wall-clock time.

Every reply is handed to the core as soon as a pull returns it (:mod:`fedlora.flower.inbox`),
with the wall seconds since the run started, and the core's answer is pushed at once. A job
whose reply is an error, that outlives ``server.job_timeout`` (wall seconds here), or whose
node leaves the federation, is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora.adapters import AdapterState
from fedlora.flower.client_app import PARTITION_KEY, RANK_KEY
from fedlora.flower.inbox import Answer, Inbox, train_message
from fedlora.flower.records import JobFields, payload_bytes
from fedlora.outcome import Outcome
from fedlora.runtimes import CheckpointSchedule
from fedlora.server import Send, ServerCore
from fedlora.snapshot import Snapshot


class FederationError(RuntimeError):
    """The federation cannot run as configured (e.g. a client has no node)."""


class Discovered(NamedTuple):
    nodes: dict[int, int]  # client id → node id
    ranks: dict[int, int]  # client id → the rank its node reports (its node config's "rank")


def discover_clients(
    grid: Grid,
    clients: int,
    wait_s: float,
    poll_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
) -> Discovered:
    """Asks every connected node its ``partition-id`` (and the rank it reports, if any) until
    each of the ``clients`` partitions has a node, or ``wait_s`` passes."""
    deadline = clock() + wait_s
    nodes: dict[int, int] = {}
    ranks: dict[int, int] = {}
    asked: set[int] = set()
    waiting: dict[str, int] = {}  # unanswered query message id: node (a SuperLink answers an
    # id only once; pulling it again gives a "message unavailable" error)
    while True:
        fresh = [n for n in grid.get_node_ids() if n not in asked]
        queries = [Message(RecordDict(), node, MessageType.QUERY) for node in fresh]
        waiting.update(zip(grid.push_messages(queries), fresh, strict=True))
        asked.update(fresh)
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                raise FederationError(f"node {node} cannot say its partition: {reply.error.reason}")
            said = reply.content.config_records[PARTITION_KEY]
            partition = int(said["id"])  # type: ignore[arg-type]
            if partition in nodes and nodes[partition] != node:
                raise FederationError(
                    f"nodes {nodes[partition]} and {node} both hold {PARTITION_KEY} {partition}"
                )
            nodes[partition] = node
            if RANK_KEY in said:
                ranks[partition] = int(said[RANK_KEY])  # type: ignore[arg-type]
        missing = sorted(set(range(clients)) - set(nodes))
        if not missing:
            return Discovered({c: nodes[c] for c in range(clients)}, ranks)
        if clock() > deadline:
            raise FederationError(
                f"no node holds {PARTITION_KEY} {missing} after {wait_s:g}s"
                f" ({len(nodes)} of {clients} clients connected)"
            )
        time.sleep(poll_s)


class GridRuntime:
    """One run of the core over ``grid``, client ``k`` training on node ``nodes[k]``.

    ``checkpoint`` (if given) is called with the whole state right after the start and then
    when ``runtime.checkpoint_*`` says, between two replies; ``interrupted`` is polled there
    and stops the run at once, after a checkpoint. A resumed run sends every job that was in
    flight at the checkpoint again, as it was first sent (the same job id, adapter, batches and
    seed, so the same result): a reply to a message of the run before is never pulled, so no
    result is merged twice."""

    def __init__(
        self,
        grid: Grid,
        core: ServerCore,
        nodes: Mapping[int, int],
        config_json: str,
        poll_s: float = 0.05,
        liveness_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        checkpoint: Callable[[Snapshot], None] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.core = core
        self.nodes = dict(nodes)
        self.config_json = config_json
        self.timeout = core.config.server.job_timeout
        self.inbox = Inbox(grid, self.timeout, poll_s, liveness_s, clock)
        self._clock = clock
        self._start = clock()
        self._checkpoint = checkpoint
        self._interrupted = interrupted
        self._schedule = CheckpointSchedule(core.config.runtime, checkpoint is not None)
        self._started = False

    def now(self) -> float:
        """Wall seconds since the run started, across resumptions."""
        return self._clock() - self._start

    def run(self) -> Outcome:
        core = self.core
        if not self._started:
            self._started = True
            self._push(core.start(self.now()))
            self.save()  # resumable from the first moment on
        while core.stopped is None and self.inbox:
            if self._interrupted():
                self.save()
                core.stop("interrupted")
                return core.outcome
            for answer in self.inbox.answers():
                self._receive(answer)
            if self._schedule.due(core.outcome.steps):
                self.save()
        return core.finish(self.now())

    def save(self) -> None:
        """Checkpoint the whole run now (between two replies: every job pushed and not yet
        answered is one the core holds in flight)."""
        if self._checkpoint is None:
            return
        snap = self.core.state_dict()
        snap.meta["grid"] = {"time": self.now()}
        self._checkpoint(snap)
        self._schedule.saved(self.core.outcome.steps)

    def load_state_dict(self, snap: Snapshot) -> None:
        """Continue from a checkpoint: the clock goes on from its time, and the jobs in flight
        are sent again."""
        self.core.load_state_dict(snap)
        self._start = self._clock() - snap.meta["grid"]["time"]
        self._schedule.saved(self.core.outcome.steps)
        self._started = True
        for job in self.core.in_flight.values():
            fields = JobFields(job.id, job.client, job.version, job.sent.rank)
            self._send(job.sent, fields)

    def _push(self, sends: Sequence[Send]) -> None:
        for send in sends:
            fields = JobFields(send.job, send.client, send.version, send.rank)
            message = self._send(send.state, fields)
            node, wire_bytes = message.metadata.dst_node_id, payload_bytes(message.content)
            self.core.sent(send, self.now(), node=node, wire_bytes=wire_bytes)

    def _send(self, state: AdapterState, fields: JobFields) -> Message:
        node = self.nodes[fields.client]
        message = train_message(state, fields, node, self.config_json, self.timeout)
        self.inbox.push(message, fields.job)
        return message

    def _receive(self, answer: Answer) -> None:
        job = answer.pending.job
        try:
            result, update = answer.read()
        except ValueError as failure:
            self._push(self.core.lost(job, str(failure), self.now()))
            return
        self._push(
            self.core.arrival(
                job, update, result.examples, result.loss, self.now(), **result.where()
            )
        )
