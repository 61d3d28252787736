"""The Flower runtime's server loop: drives the server core over a Grid in wall-clock time.

Every reply is handed to the core as soon as a pull returns it (:mod:`fedlora.flower.inbox`),
with the wall seconds since the run started, and the core's answer is pushed at once. A job
whose reply is an error, that outlives ``server.job_timeout`` (wall seconds here), or whose
node leaves the federation, is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora.config import ConfigError
from fedlora.flower.client_app import PARTITION_KEY
from fedlora.flower.inbox import Answer, Inbox, train_message
from fedlora.flower.records import JobFields, payload_bytes
from fedlora.outcome import Outcome
from fedlora.server import Send, ServerCore
from fedlora.snapshot import Snapshot


class FederationError(RuntimeError):
    """The federation cannot run as configured (e.g. a client has no node)."""


def discover_clients(
    grid: Grid,
    clients: int,
    wait_s: float,
    poll_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
) -> dict[int, int]:
    """Client id → node id: asks every connected node its ``partition-id`` until each of the
    ``clients`` partitions has a node, or ``wait_s`` passes."""
    deadline = clock() + wait_s
    nodes: dict[int, int] = {}
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
            partition = int(reply.content.config_records[PARTITION_KEY]["id"])  # type: ignore[arg-type]
            if partition in nodes and nodes[partition] != node:
                raise FederationError(
                    f"nodes {nodes[partition]} and {node} both hold {PARTITION_KEY} {partition}"
                )
            nodes[partition] = node
        missing = sorted(set(range(clients)) - set(nodes))
        if not missing:
            return {c: nodes[c] for c in range(clients)}
        if clock() > deadline:
            raise FederationError(
                f"no node holds {PARTITION_KEY} {missing} after {wait_s:g}s"
                f" ({len(nodes)} of {clients} clients connected)"
            )
        time.sleep(poll_s)


class GridRuntime:
    """One run of the core over ``grid``, client ``k`` training on node ``nodes[k]``."""

    def __init__(
        self,
        grid: Grid,
        core: ServerCore,
        nodes: Mapping[int, int],
        config_json: str,
        poll_s: float = 0.05,
        liveness_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.nodes = dict(nodes)
        self.config_json = config_json
        self.timeout = core.config.server.job_timeout
        self.inbox = Inbox(grid, self.timeout, poll_s, liveness_s, clock)
        self._clock = clock
        self._start = clock()

    def now(self) -> float:
        return self._clock() - self._start

    def run(self) -> Outcome:
        core = self.core
        self._push(core.start(self.now()))
        while core.stopped is None and self.inbox:
            for answer in self.inbox.answers():
                self._receive(answer)
        return core.finish(self.now())

    def load_state_dict(self, snap: Snapshot) -> None:
        raise ConfigError("the wall-clock Flower runtime (--runtime flower) does not resume yet")

    def _push(self, sends: Sequence[Send]) -> None:
        for send in sends:
            node = self.nodes[send.client]
            fields = JobFields(send.job, send.client, send.version, send.rank)
            message = train_message(send.state, fields, node, self.config_json, self.timeout)
            self.inbox.push(message, send.job)
            self.core.sent(send, self.now(), node=node, wire_bytes=payload_bytes(message.content))

    def _receive(self, answer: Answer) -> None:
        job = answer.pending.job
        try:
            result, update = answer.read()
        except ValueError as failure:
            self._push(self.core.lost(job, str(failure), self.now()))
            return
        self._push(self.core.arrival(job, update, result.examples, result.loss, self.now()))
