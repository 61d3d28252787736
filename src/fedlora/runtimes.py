"""What the one composition root (:mod:`fedlora.experiment`) asks of a runtime.

A runtime only moves bytes and keeps time: the root prepares the experiment, claims the run
folder, opens the event log, checkpoints and writes the results; a runtime turns what the root
built (:class:`Wiring`) into a :class:`Driver` that drives the server core to its end. The
simulator (``sim``), Flower's simulation engine (``flower-sim``) and Flower's wall-clock Grid
(``flower``) are each one small :class:`Runtime`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedlora.client.protocol import Learner
from fedlora.config import ConfigError, ExperimentConfig, RuntimeConfig
from fedlora.outcome import Clock, Outcome
from fedlora.profiles import ClientProfile
from fedlora.server import ServerCore
from fedlora.server.events import EventSink
from fedlora.snapshot import Snapshot


@dataclass(frozen=True)
class Wiring:
    """What the root hands a runtime: the prepared experiment and the run folder's sinks."""

    config: ExperimentConfig
    learner: Learner
    client_sizes: Sequence[int]
    log: EventSink
    progress: Callable[[Outcome], None]
    checkpoint: Callable[[Snapshot], None]
    interrupted: Callable[[], bool]
    profiles: Sequence[ClientProfile]  # assigned by the root: the ranks, and the sim's speeds


class Driver(Protocol):
    """One run of the core: started, or continued from a checkpoint, and driven to its end."""

    @property
    def core(self) -> ServerCore: ...

    def run(self) -> Outcome: ...

    def load_state_dict(self, snap: Snapshot) -> None:
        """Continue from a checkpoint instead of starting."""


class Runtime(Protocol):
    @property
    def name(self) -> str:
        """As ``fedlora run --runtime`` names it."""
        ...

    @property
    def clock(self) -> Clock:
        """The time it keeps, which the run's files name their times by."""
        ...

    def check(self, config: ExperimentConfig) -> None:
        """Raise :class:`ConfigError` for a key that means nothing under this runtime."""

    def connect(self, config: ExperimentConfig) -> Mapping[int, int]:
        """Find the clients' trainers (before the run folder is written); returns the ranks
        they report, by client (``clients.rank_by: node``), where they report any."""

    def driver(self, wiring: Wiring) -> Driver: ...


class CheckpointSchedule:
    """When a driver's next checkpoint is due: ``runtime.checkpoint_every`` merges and/or
    ``runtime.checkpoint_seconds`` wall seconds after the last one (never when ``enabled`` is
    false)."""

    def __init__(self, config: RuntimeConfig, enabled: bool = True) -> None:
        self.config = config
        self.enabled = enabled
        self.saved(0)

    def saved(self, steps: int) -> None:
        self._steps, self._wall = steps, time.perf_counter()

    def due(self, steps: int) -> bool:
        every, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return self.enabled and (
            (every is not None and steps - self._steps >= every)
            or (seconds is not None and time.perf_counter() - self._wall >= seconds)
        )


@dataclass(frozen=True)
class Meaningless:
    """A config key that means nothing under a runtime, refused there when set."""

    key: str  # dotted: section.field
    why: str
    allowed: tuple[object, ...] = ()  # values besides the default that do mean something

    def value(self, config: ExperimentConfig) -> object:
        section, field = self.key.split(".")
        return getattr(getattr(config, section), field)

    def default(self, config: ExperimentConfig) -> object:
        section, field = self.key.split(".")
        return (
            type(getattr(config, section))
            .model_fields[field]
            .get_default(call_default_factory=True)
        )


def refuse(config: ExperimentConfig, runtime: str, keys: Sequence[Meaningless]) -> None:
    """:class:`ConfigError` naming every key of ``keys`` that ``config`` sets to anything but
    its default (or a value it allows): under ``runtime`` it would be silently ignored."""
    set_keys = [k for k in keys if k.value(config) not in (k.default(config), *k.allowed)]
    if set_keys:
        lines = "; ".join(f"{k.key} ({k.why})" for k in set_keys)
        raise ConfigError(
            f"--runtime {runtime}: {lines}: these keys mean nothing under this runtime;"
            " remove them from the config, or run under --runtime sim"
        )


NODES_ONLY = (
    Meaningless(
        "clients.rank_by",
        "node: simulated clients have no nodes to report ranks; set clients.ranks",
        allowed=("speed",),
    ),
)
