"""Where the server core's events go, as the core sees it: a sink it emits to and reads the
run's wall clock from. The results package's ``EventLog`` writes them to ``events.jsonl``; the
server never knows the file."""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    def emit(self, kind: str, **fields: Any) -> None: ...

    def wall(self) -> float:
        """Wall seconds of the run so far, across resumptions."""
        ...
