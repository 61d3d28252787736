"""Whether a client can finish a job: random failures and offline stretches, seeded.

Each client alternates online and offline stretches of exponentially distributed lengths, drawn
lazily from its own seeded stream, so a client's timeline does not depend on when or how often
it is asked about. A job fails when its client is offline at any moment of it, or with
``failure_prob``; a failed job never delivers.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from fedlora.config import AvailabilityConfig


class Availability:
    def __init__(self, config: AvailabilityConfig, num_clients: int, seed: int) -> None:
        self.config = config
        self._streams = [np.random.default_rng([seed, 0x53, c]) for c in range(num_clients)]
        self._failures = np.random.default_rng([seed, 0x54])
        # per client: the times its state flips, and whether it is online before the first
        self._switches: list[list[float]] = [[] for _ in range(num_clients)]
        self._online_first = [self._starts_online(rng) for rng in self._streams]

    def _starts_online(self, rng: np.random.Generator) -> bool:
        on, off = self.config.mean_online_s, self.config.mean_offline_s
        return on is None or off is None or bool(rng.random() < on / (on + off))

    def _extend(self, client: int, until: float) -> list[float]:
        switches = self._switches[client]
        on, off = self.config.mean_online_s, self.config.mean_offline_s
        assert on is not None and off is not None
        rng = self._streams[client]
        while not switches or switches[-1] <= until:
            online_now = self._online_first[client] == (len(switches) % 2 == 0)
            last = switches[-1] if switches else 0.0
            switches.append(last + float(rng.exponential(on if online_now else off)))
        return switches

    def online_throughout(self, client: int, start: float, end: float) -> bool:
        """Online at every moment of [start, end]."""
        if self.config.mean_online_s is None:
            return True
        switches = self._extend(client, end)
        first = bisect.bisect_right(switches, start)
        online_at_start = self._online_first[client] == (first % 2 == 0)
        return online_at_start and switches[first] > end

    def failure(self, client: int, start: float, end: float) -> str | None:
        """Why a job of ``client`` over [start, end] never delivers, or None if it does."""
        fails = self._failures.random() < self.config.failure_prob  # one draw per job, always
        if not self.online_throughout(client, start, end):
            return "client offline"
        return "client failed" if fails else None

    def state_dict(self) -> dict[str, Any]:
        """Every stream's position and each client's timeline so far (JSON-ready)."""
        return {
            "streams": [rng.bit_generator.state for rng in self._streams],
            "failures": self._failures.bit_generator.state,
            "switches": self._switches,
            "online_first": self._online_first,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rng, stream in zip(self._streams, state["streams"], strict=True):
            rng.bit_generator.state = stream
        self._failures.bit_generator.state = state["failures"]
        self._switches = [list(s) for s in state["switches"]]
        self._online_first = list(state["online_first"])
