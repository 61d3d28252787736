"""The simulator: drives the server core in virtual time.

A job's inputs (the projected adapter, its batches, its seed) and its virtual duration are
fixed at dispatch; its training runs when the clock reaches its completion. Completions are
consumed in (finish time, sequence) order, so the same config and seed give the same event
log. Nothing sleeps: time is a number. Everything the server does is the core's
(:class:`~fedlora.server.ServerCore`); the simulator keeps the clock, the cost model and the
clients' availability, and checkpoints all of it at safe points between completions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlora import policies
from fedlora.client.protocol import Learner, plan_job
from fedlora.config import ExperimentConfig
from fedlora.outcome import Clock, Outcome
from fedlora.profiles import ClientProfile, draw_profiles
from fedlora.runtimes import NODES_ONLY, CheckpointSchedule, Wiring, refuse
from fedlora.server import Send, ServerCore
from fedlora.server.build import build_core
from fedlora.server.events import EventSink
from fedlora.sim.availability import Availability
from fedlora.sim.clock import EventClock
from fedlora.sim.cost import job_seconds
from fedlora.sim.jobs import InProcess, JobFailed, JobRunner
from fedlora.snapshot import Snapshot


@dataclass(frozen=True)
class SimJob:
    """What the simulator fixed at dispatch: the job's batches, its seed, and whether (and
    why) it never delivers."""

    id: int
    batches: list[np.ndarray]
    seed: int
    lost: str | None

    def to_json(self) -> list[object]:
        return [self.id, [b.tolist() for b in self.batches], self.seed, self.lost]

    @classmethod
    def from_json(cls, data: list[Any]) -> SimJob:
        job_id, batches, seed, lost = data
        return cls(job_id, [np.asarray(b, dtype=np.int64) for b in batches], seed, lost)


class Simulation:
    """One run of one experiment in virtual time.

    ``checkpoint`` (if given) is called at safe points with the whole state when one is due
    (every ``runtime.checkpoint_every`` merges, or ``runtime.checkpoint_seconds`` of wall
    time); ``interrupted`` is polled at the same points and stops the run there. ``runner``
    trains the jobs (default: the learner, in this process).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        learner: Learner,
        core: ServerCore,
        profiles: Sequence[ClientProfile],
        checkpoint: Callable[[Snapshot], None] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        runner: JobRunner | None = None,
    ) -> None:
        self.config = config
        self.learner = learner
        self.runner = runner or InProcess(learner)
        self.core = core
        self.profiles = list(profiles)
        self.clock: EventClock[SimJob] = EventClock()
        self.availability = Availability(config.clients.availability, len(profiles), config.seed)
        self._checkpoint = checkpoint
        self._interrupted = interrupted
        self._schedule = CheckpointSchedule(config.runtime, checkpoint is not None)
        self._started = False
        self._grid_point = 1  # eval.grid_seconds: the next evaluation is at this multiple of it

    def run(self) -> Outcome:
        core = self.core
        if not self._started:
            self._started = True
            self._send(core.start(self.clock.now))
            self.save()  # resumable from the first moment on
        max_time = self.config.server.max_virtual_time
        while core.stopped is None and len(self.clock):
            if self._interrupted():
                self.save()
                core.stop("interrupted")
                return core.outcome
            grid_time = self._next_grid_time()
            if grid_time < self.clock.next_finish and (max_time is None or grid_time <= max_time):
                self.clock.advance(grid_time)  # completions at the same time come first
                core.evaluate(grid_time)
                self._grid_point += 1
                continue
            if max_time is not None and self.clock.next_finish > max_time:
                self.clock.advance(max_time)
                core.stop(f"virtual time {max_time:g}s reached")
                break
            self._send(self._complete(self.clock.pop()))
            if self._schedule.due(self.core.outcome.steps):
                self.save()
        return core.finish(self.clock.now)

    def _next_grid_time(self) -> float:
        """When the latest global is next evaluated on ``eval.grid_seconds`` (inf: no grid).
        A multiple, not a running sum, so every policy's grid is the same floats."""
        grid = self.config.eval.grid_seconds
        return math.inf if grid is None else self._grid_point * grid

    def _complete(self, job: SimJob) -> list[Send]:
        now = self.clock.now
        if job.lost is not None:  # never trained: its result would never have arrived
            return self.core.lost(job.id, job.lost, now)
        try:
            result = self.runner.result(self.core.in_flight[job.id], job.batches, job.seed)
        except JobFailed as failure:
            return self.core.lost(job.id, str(failure), now)
        return self.core.arrival(job.id, result.state, result.examples, result.loss, now)

    def _send(self, sends: Sequence[Send]) -> None:
        for send in sends:
            self._dispatch(send)

    def _dispatch(self, send: Send) -> None:
        profile = self.profiles[send.client]
        batches, seed = plan_job(self.learner, self.config.seed, send.client, send.job)
        tokens = self.learner.tokens(batches)
        cost = job_seconds(
            profile, tokens, self.config.clients.seconds_per_token, send.bytes, send.upload_bytes
        )
        now = self.clock.now
        lost = self.availability.failure(send.client, now, now + cost)
        timeout = self.config.server.job_timeout
        if timeout is not None and (lost or cost > timeout):
            # the server learns of a missing result at the deadline
            lost, cost = lost or f"no result within job_timeout {timeout:g}s", timeout
        self.clock.schedule(cost, SimJob(send.job, batches, seed, lost))
        self.core.sent(send, now, tokens=tokens, duration=cost)
        if lost is None:
            self.runner.submit(self.core.in_flight[send.job], batches, seed)

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        """Checkpoint the whole run now (a safe point: between two completions)."""
        if self._checkpoint is None:
            return
        snap = self.core.state_dict()
        snap.meta["simulation"] = {
            "clock": self.clock.state_dict(lambda job: job.to_json()),
            "availability": self.availability.state_dict(),
            "grid_point": self._grid_point,
        }
        self._checkpoint(snap)
        self._schedule.saved(self.core.outcome.steps)

    def load_state_dict(self, snap: Snapshot) -> None:
        """Continue from a checkpoint instead of starting."""
        self.core.load_state_dict(snap)
        state = snap.meta["simulation"]
        self.clock.load_state_dict(state["clock"], SimJob.from_json)
        self.availability.load_state_dict(state["availability"])
        self._grid_point = state.get("grid_point", 1)  # absent from checkpoints made before it
        self._schedule.saved(self.core.outcome.steps)
        self._started = True
        for job in self.clock.pending():  # the jobs in flight start again, all at once
            if job.lost is None:
                self.runner.submit(self.core.in_flight[job.id], job.batches, job.seed)


def build_simulation(
    config: ExperimentConfig,
    learner: Learner,
    client_sizes: Sequence[int],
    log: EventSink,
    *,
    profiles: Sequence[ClientProfile] | None = None,
    policy: policies.Policy | None = None,
    progress: Callable[[Outcome], None] | None = None,
    checkpoint: Callable[[Snapshot], None] | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    runner: JobRunner | None = None,
) -> Simulation:
    """The config's policy and aggregator in a server core, driven in virtual time over
    clients holding ``client_sizes`` examples (profiles drawn from the config unless given)."""
    profiles = profiles or draw_profiles(config.clients, config.lora.r, config.seed)
    ranks = [p.rank for p in profiles]
    core = build_core(
        config,
        learner.initial_state(),
        client_sizes,
        ranks,
        learner,
        log,
        policy=policy,
        progress=progress,
    )
    return Simulation(config, learner, core, profiles, checkpoint, interrupted, runner)


@dataclass(frozen=True)
class SimRuntime:
    """The simulator as a runtime: virtual time, the config's cost model and availability;
    ``runner`` trains the jobs (default: the learner, in this process)."""

    runner: JobRunner | None = None
    name: str = "sim"
    clock: Clock = "virtual"

    def check(self, config: ExperimentConfig) -> None:
        """Every key means something in virtual time, but no node reports a rank."""
        refuse(config, self.name, NODES_ONLY)

    def connect(self, config: ExperimentConfig) -> Mapping[int, int]:
        """Nothing to find: the clients are this process's, and report no ranks."""
        return {}

    def driver(self, wiring: Wiring) -> Simulation:
        return build_simulation(
            wiring.config,
            wiring.learner,
            wiring.client_sizes,
            wiring.log,
            profiles=wiring.profiles,
            progress=wiring.progress,
            checkpoint=wiring.checkpoint,
            interrupted=wiring.interrupted,
            runner=self.runner,
        )
