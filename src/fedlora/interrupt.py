"""Stop requests: Ctrl-C (or SIGTERM) asks a run to stop at its next safe point, where it
checkpoints, instead of dying mid-job; a second request stops at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_requests(announce: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """Yields ``requested()``: True once a stop was asked for. Outside the main thread
    (where signals cannot be caught) it is never True."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        announce("stopping at the next safe point, with a checkpoint (again: stop at once)")

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield lambda: requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
