"""The virtual clock: completions are consumed in (finish time, sequence number) order.

The sequence number breaks ties deterministically, so the same dispatches always produce the
same event order, however the jobs' real work was scheduled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(order=True)
class _Entry(Generic[T]):
    finish: float
    seq: int
    item: T = field(compare=False)


class EventClock(Generic[T]):
    """A heap of pending completions and the current virtual time, which never runs backwards."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[_Entry[T]] = []
        self._seq = 0

    def schedule(self, duration: float, item: T) -> float:
        if not duration >= 0:
            raise ValueError(f"a duration must be non-negative, got {duration}")
        finish = self.now + duration
        heapq.heappush(self._heap, _Entry(finish, self._seq, item))
        self._seq += 1
        return finish

    @property
    def next_finish(self) -> float:
        return self._heap[0].finish

    def advance(self, to: float) -> None:
        """Move the clock forward to ``to`` without a completion (e.g. a time limit)."""
        if to < self.now or (self._heap and to > self._heap[0].finish):
            raise ValueError(f"cannot move the clock from {self.now} to {to}")
        self.now = to

    def pop(self) -> T:
        """The next completion; advances ``now`` to its finish time."""
        entry = heapq.heappop(self._heap)
        self.now = entry.finish
        return entry.item

    def __len__(self) -> int:
        return len(self._heap)

    def pending(self) -> list[T]:
        """The scheduled items, in completion order."""
        return [e.item for e in sorted(self._heap)]

    def state_dict(self, item_to_json: Callable[[T], Any]) -> dict[str, Any]:
        """The clock's state as JSON-ready data; ``item_to_json`` encodes each pending item."""
        heap = [[e.finish, e.seq, item_to_json(e.item)] for e in self._heap]
        return {"now": self.now, "seq": self._seq, "heap": heap}

    def load_state_dict(self, state: dict[str, Any], item_from_json: Callable[[Any], T]) -> None:
        self.now = state["now"]
        self._seq = state["seq"]
        self._heap = [
            _Entry(finish, seq, item_from_json(item)) for finish, seq, item in state["heap"]
        ]
        heapq.heapify(self._heap)
