"""Jobs pushed to a Grid's nodes and their replies: the one pull loop of both Flower runtimes.

Its own loop, not ``Grid.send_and_receive`` (which waits for a whole batch and sleeps 3 s
between pulls): each call of :meth:`Inbox.answers` pulls every pending job once and hands back
what came, so a runtime can act on each reply at once. A job whose node leaves the federation,
or that outlives the inbox's timeout (wall seconds), comes back lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora.adapters import AdapterState
from fedlora.flower.client_app import put_experiment
from fedlora.flower.records import JobFields, ResultFields, get_state, put_state


def train_message(
    state: AdapterState, fields: JobFields, node: int, config_json: str, ttl: float | None = None
) -> Message:
    """A job for ``node``: the adapter it starts from, the job's fields and the experiment."""
    content = RecordDict()
    put_state(content, state)
    fields.put(content)
    put_experiment(content, config_json)
    return Message(content, node, MessageType.TRAIN, ttl=ttl, group_id=str(fields.version))


@dataclass(frozen=True)
class Pending:
    """A pushed job: the node it went to and when (the inbox's clock)."""

    job: int
    node: int
    since: float


@dataclass(frozen=True)
class Answer:
    """What became of a pending job: its node's reply, or why it is lost."""

    pending: Pending
    reply: Message | None
    lost: str | None = None

    def read(self) -> tuple[ResultFields, AdapterState]:
        """The job's result; ``ValueError`` naming the node when the job is lost, or its reply
        is an error or malformed."""
        node = self.pending.node
        if self.reply is None:
            raise ValueError(self.lost or f"node {node}: no reply")
        if self.reply.has_error():
            raise ValueError(f"node {node}: {self.reply.error.reason}")
        try:
            return ResultFields.get(self.reply.content), get_state(self.reply.content)
        except (KeyError, ValueError) as error:  # InvalidUpdate is a ValueError
            raise ValueError(f"node {node}: malformed reply: {error}") from None


class Inbox:
    """Jobs pushed over ``grid`` awaiting replies. A SuperLink hands out each reply once, so
    only ids not answered yet are pulled. ``timeout``: wall seconds a job may take (null: no
    deadline); which nodes are still connected is asked every ``liveness_s``."""

    def __init__(
        self,
        grid: Grid,
        timeout: float | None = None,
        poll_s: float = 0.05,
        liveness_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = grid
        self.timeout = timeout
        self.poll_s = poll_s
        self.liveness_s = liveness_s
        self._clock = clock
        self._checked = clock()
        self._pending: dict[str, Pending] = {}  # message id: job

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, message: Message, job: int) -> None:
        (message_id,) = self.grid.push_messages([message])
        self._pending[message_id] = Pending(job, message.metadata.dst_node_id, self._clock())

    def answers(self) -> list[Answer]:
        """One pull of every pending job: the replies that came, the jobs past the timeout
        (unless their reply came meanwhile) and, every ``liveness_s``, the jobs whose node left;
        sleeps ``poll_s`` when nothing came."""
        answers = self._pull(list(self._pending))
        if self.timeout is not None:
            now = self._clock()
            late = [m for m, p in self._pending.items() if now - p.since > self.timeout]
            answers += self._pull(late)  # a reply may have come while the caller was busy
            reason = f"no result within job_timeout {self.timeout:g}s"
            answers += [self._lose(m, reason) for m in late if m in self._pending]
        if self._clock() - self._checked >= self.liveness_s:
            online = set(self.grid.get_node_ids())
            gone = [(m, p.node) for m, p in self._pending.items() if p.node not in online]
            answers += [self._lose(m, f"node {node} left the federation") for m, node in gone]
            self._checked = self._clock()
        if not answers:
            time.sleep(self.poll_s)
        return answers

    def _pull(self, message_ids: list[str]) -> list[Answer]:
        if not message_ids:
            return []
        answers = []
        for reply in self.grid.pull_messages(message_ids):
            pending = self._pending.pop(reply.metadata.reply_to_message_id, None)
            if pending is not None:
                answers.append(Answer(pending, reply))
        return answers

    def _lose(self, message_id: str, reason: str) -> Answer:
        return Answer(self._pending.pop(message_id), None, reason)
