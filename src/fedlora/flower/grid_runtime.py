"""The Flower runtime's server loop: drives the server core over a Grid's push/pull messages.

Its own loop, not ``Grid.send_and_receive`` (which waits for a whole batch and sleeps 3 s
between pulls): every reply is handed to the core as soon as a pull returns it, with the wall
seconds since the run started, and the core's answer is pushed at once. A job whose reply is
an error, that outlives ``server.job_timeout``, or whose node leaves the federation, is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora.adapters import AdapterState
from fedlora.flower.client_app import PARTITION_KEY, put_experiment
from fedlora.flower.records import JobFields, ResultFields, get_state, payload_bytes, put_state
from fedlora.outcome import Outcome
from fedlora.server import Send, ServerCore


class FederationError(RuntimeError):
    """The federation cannot run as configured (e.g. a client has no node)."""


@dataclass(frozen=True)
class Pending:
    """A pushed job: the node it went to and when (wall seconds since the start)."""

    job: int
    node: int
    since: float


def train_message(
    state: AdapterState, fields: JobFields, node: int, config_json: str, ttl: float | None = None
) -> Message:
    """A job for ``node``: the adapter it starts from, the job's fields and the experiment."""
    content = RecordDict()
    put_state(content, state)
    fields.put(content)
    put_experiment(content, config_json)
    return Message(content, node, MessageType.TRAIN, ttl=ttl, group_id=str(fields.version))


def read_result(reply: Message, node: int) -> tuple[ResultFields, AdapterState]:
    """What ``node`` replied to a job; ``ValueError`` naming the node when the reply is an
    error or malformed (the job is then lost)."""
    if reply.has_error():
        raise ValueError(f"node {node}: {reply.error.reason}")
    try:
        return ResultFields.get(reply.content), get_state(reply.content)
    except (KeyError, ValueError) as error:  # InvalidUpdate is a ValueError
        raise ValueError(f"node {node}: malformed reply: {error}") from None


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
        self.grid = grid
        self.core = core
        self.nodes = dict(nodes)
        self.config_json = config_json
        self.timeout = core.config.server.job_timeout
        self.poll_s = poll_s
        self.liveness_s = liveness_s
        self._clock = clock
        self._start = clock()
        self._pending: dict[str, Pending] = {}  # message id: job

    def now(self) -> float:
        return self._clock() - self._start

    def run(self) -> Outcome:
        core = self.core
        self._push(core.start(self.now()))
        checked = self.now()
        while core.stopped is None and self._pending:
            replies = list(self.grid.pull_messages(list(self._pending)))
            for reply in replies:
                self._receive(reply)
            self._expire()
            if self.now() - checked >= self.liveness_s:
                self._check_nodes()
                checked = self.now()
            if not replies:
                time.sleep(self.poll_s)
        return core.finish(self.now())

    def _push(self, sends: Sequence[Send]) -> None:
        for send in sends:
            node = self.nodes[send.client]
            fields = JobFields(send.job, send.client, send.version, send.rank)
            message = train_message(send.state, fields, node, self.config_json, self.timeout)
            (message_id,) = self.grid.push_messages([message])
            now = self.now()
            self._pending[message_id] = Pending(send.job, node, now)
            self.core.sent(send, now, node=node, wire_bytes=payload_bytes(message.content))

    def _receive(self, reply: Message) -> None:
        pending = self._pending.pop(reply.metadata.reply_to_message_id, None)
        if pending is None:
            return
        now = self.now()
        try:
            result, update = read_result(reply, pending.node)
        except ValueError as failure:
            self._push(self.core.lost(pending.job, str(failure), now))
            return
        self._push(self.core.arrival(pending.job, update, result.examples, result.loss, now))

    def _expire(self) -> None:
        """Jobs past ``job_timeout`` are lost, unless their reply came while the loop was busy."""
        if self.timeout is None:
            return
        now = self.now()
        late = [m for m, p in self._pending.items() if now - p.since > self.timeout]
        if not late:
            return
        for reply in self.grid.pull_messages(late):
            self._receive(reply)
        for message_id in late:
            pending = self._pending.pop(message_id, None)
            if pending is not None:
                reason = f"no result within job_timeout {self.timeout:g}s"
                self._push(self.core.lost(pending.job, reason, now))

    def _check_nodes(self) -> None:
        online = set(self.grid.get_node_ids())
        gone = [m for m, p in self._pending.items() if p.node not in online]
        for message_id in gone:
            pending = self._pending.pop(message_id)
            reason = f"node {pending.node} left the federation"
            self._push(self.core.lost(pending.job, reason, self.now()))
