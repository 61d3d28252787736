"""The event log: one JSON object per line for every dispatch, arrival, merge, eval, rejection.

Every event carries the virtual time ``t`` and the wall-clock ``wall``; everything but ``wall``
is a pure function of the config and seed, which the determinism tests rely on. A resumed run
appends to the log from the position its checkpoint recorded, so a crash between a checkpoint
and the next leaves no duplicate events.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

WALL_FIELDS = frozenset({"wall"})


class EventLog:
    """Appends events to ``events.jsonl`` (or keeps them in memory when ``path`` is None).

    ``resume_at`` (a byte offset a checkpoint recorded) continues an existing log from there;
    ``wall_offset`` is the wall time already spent before this process took over.
    """

    def __init__(
        self, path: Path | None = None, resume_at: int | None = None, wall_offset: float = 0.0
    ) -> None:
        self.records: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        if path is not None:
            # line-buffered, so `tail -f events.jsonl` follows a run as it goes
            self._file = path.open(
                "w" if resume_at is None else "r+", encoding="utf-8", buffering=1
            )
            if resume_at is not None:
                self._file.truncate(resume_at)
                self._file.seek(resume_at)
        self._started = time.perf_counter() - wall_offset

    def wall(self) -> float:
        """Wall seconds of the run so far, across resumptions."""
        return time.perf_counter() - self._started

    def emit(self, kind: str, **fields: Any) -> None:
        record = {"type": kind, **fields}
        if self._file is not None:
            self._file.write(json.dumps(record, default=_plain) + "\n")
        else:
            self.records.append(record)

    def sync(self) -> int:
        """Make every event so far durable; returns the log's position (for a checkpoint)."""
        if self._file is None:
            return len(self.records)
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_events(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def without_wall_clock(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deterministic part of an event log."""
    return [{k: v for k, v in e.items() if k not in WALL_FIELDS} for e in events]
