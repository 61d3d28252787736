"""The event log: one JSON object per line for every dispatch, arrival, merge, eval, rejection.

Every event carries the virtual time ``t`` and the wall-clock ``wall``; everything but ``wall``
is a pure function of the config and seed, which the determinism tests rely on. A resumed run
appends to the log from the position its checkpoint recorded, so a crash between a checkpoint
and the next leaves no duplicate events; the checkpoint also records the sha256 of the log up to
there, so a log cut short or changed since is refused instead of continued.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from fedlora.results.errors import RunFolderError


@dataclass(frozen=True)
class LogMark:
    """Where a log file stands: its size in bytes and the sha256 of those bytes."""

    offset: int
    sha256: str


class EventLog:
    """Appends events to ``events.jsonl`` (or keeps them in memory when ``path`` is None).

    ``resume_at`` (a mark a checkpoint recorded) continues an existing log from there, once
    :func:`verified_prefix` agrees; ``wall_offset`` is the wall time already spent before this
    process took over.
    """

    def __init__(
        self, path: Path | None = None, resume_at: LogMark | None = None, wall_offset: float = 0.0
    ) -> None:
        self.records: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        self._sha = hashlib.sha256()
        if path is not None:
            if resume_at is not None:
                self._sha = verified_prefix(path, resume_at)
            # line-buffered, so `tail -f events.jsonl` follows a run as it goes
            self._file = path.open(
                "w" if resume_at is None else "r+", encoding="utf-8", buffering=1
            )
            if resume_at is not None:
                self._file.truncate(resume_at.offset)
                self._file.seek(resume_at.offset)
        self._started = time.perf_counter() - wall_offset

    def wall(self) -> float:
        """Wall seconds of the run so far, across resumptions."""
        return time.perf_counter() - self._started

    def emit(self, kind: str, **fields: Any) -> None:
        record = {"type": kind, **fields}
        if self._file is not None:
            line = json.dumps(record, default=_plain) + "\n"
            self._file.write(line)
            self._sha.update(line.encode("utf-8"))
        else:
            self.records.append(record)

    def sync(self) -> int:
        """Make every event so far durable; returns the log's position (for a checkpoint)."""
        if self._file is None:
            return len(self.records)
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def mark(self) -> LogMark:
        """:meth:`sync`, and where the log file now stands (for a checkpoint)."""
        return LogMark(self.sync(), self._sha.hexdigest())

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


def verified_prefix(path: Path, mark: LogMark) -> hashlib._Hash:
    """The sha256 of the first ``mark.offset`` bytes of the log, ready to go on hashing, if they
    are the bytes ``mark`` recorded; else :class:`RunFolderError` (a resumed run never pads a
    short log or continues a changed one)."""
    size = path.stat().st_size if path.is_file() else 0
    sha = hashlib.sha256()
    if size >= mark.offset:
        with path.open("rb") as handle:
            sha.update(handle.read(mark.offset))
    if size < mark.offset or sha.hexdigest() != mark.sha256:
        detail = (
            f"it holds {size:,} of {mark.offset:,} bytes"
            if size < mark.offset
            else f"its first {mark.offset:,} bytes differ"
        )
        raise RunFolderError(
            f"{path} is not the log its checkpoint recorded ({detail}): it was cut short or"
            " changed since, so the run cannot continue exactly; start it again with --overwrite"
        )
    return sha


def read_events(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
