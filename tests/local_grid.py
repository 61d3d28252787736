"""An in-process Grid: the ServerApp's loop against ClientApps called directly, one Context per
node (so ``Context.state`` persists as on a SuperNode). No sockets, no Ray, no sleeping: the
fast way to test the Flower runtime, as Flower's own in-memory Grid does for its server code."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ClientCall = Callable[[Message, Context], Message | None]  # None: the node never answers


class LocalGrid(Grid):
    """Node ``FIRST_NODE + k`` holds ``partition-id`` k; ``apps[k]`` answers for it.

    A pushed message is answered at once; a node can be removed to play one that left. A reply
    is handed out once: pulling its id again gives the "message unavailable" error a SuperLink
    gives. Like Flower's own ServerApp process, it sets this process's task identity (messages
    need it)."""

    FIRST_NODE = 1000

    def __init__(
        self,
        apps: Mapping[int, ClientCall],
        node_configs: Mapping[int, dict[str, int]] | None = None,
    ) -> None:
        """``node_configs[k]``: more of node k's node config (e.g. ``{"rank": 8}``)."""
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._apps = {self.FIRST_NODE + k: app for k, app in apps.items()}
        self._contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={
                    "partition-id": node - self.FIRST_NODE,
                    "num-partitions": len(apps),
                    **(node_configs or {}).get(node - self.FIRST_NODE, {}),
                },
                state=RecordDict(),
                run_config={},
            )
            for node in self._apps
        }
        self._replies: dict[str, Message] = {}
        self._sent: dict[str, Message] = {}
        self._delivered: set[str] = set()  # message ids whose reply was pulled
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._apps)

    def remove(self, node: int) -> None:
        """The node leaves: it answers nothing more and is no longer listed."""
        del self._apps[node]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id  # the SuperLink's job
            ids.append(message_id)
            self._sent[message_id] = message
            node = message.metadata.dst_node_id
            app = self._apps.get(node)
            reply = None if app is None else self._call(app, message, self._contexts[node])
            if reply is not None:
                self._replies[message_id] = reply
        return ids

    @staticmethod
    def _call(app: ClientCall, message: Message, context: Context) -> Message | None:
        """As a SuperNode does: an app that raises is answered with an error reply."""
        try:
            return app(message, context)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        pulled = []
        for message_id in message_ids:
            if message_id in self._delivered:
                unavailable = Error(ErrorCode.MESSAGE_UNAVAILABLE, "message unavailable")
                pulled.append(Message(unavailable, reply_to=self._sent[message_id]))
            elif message_id in self._replies:
                reply = self._replies.pop(message_id)
                self._delivered.add(message_id)
                pulled.append(reply)
        return pulled

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
