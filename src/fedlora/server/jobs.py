"""What the server core hands a runtime (:class:`Send`) and remembers of each job in flight
(:class:`Job`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlora.adapters import AdapterState


@dataclass(frozen=True)
class Send:
    """Work for one client: train from ``state`` (already projected to its ``rank``)."""

    job: int
    client: int
    version: int
    rank: int
    state: AdapterState
    bytes: int  # down, charged when sent
    upload_bytes: int  # what its result costs back (parts some aggregators keep local)


@dataclass
class Job:
    """A job in flight: what it was sent, from which global version, since when."""

    id: int
    client: int
    version: int
    sent: AdapterState
    dispatched: float = math.nan  # set when the runtime confirms the send
