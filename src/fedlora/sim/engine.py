"""The simulator: drives a policy and an aggregator in virtual time.

A job's inputs (the projected adapter, its batches, its seed) and its virtual duration are
fixed at dispatch; its training runs when the clock reaches its completion. The server consumes
completions in (finish time, sequence) order, so the same config and seed give the same event
log. Nothing sleeps: time is a number.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate
from fedlora.aggregation import Aggregator, WeightedState
from fedlora.aggregation.diagnostics import MergeDiagnostics, diagnose, shadow_aggregators
from fedlora.client.trainer import ClientEvaluation, LocalResult
from fedlora.config import ExperimentConfig
from fedlora.policies import Arrival, Decision, Dispatch, Drop, Merge, Policy, Source
from fedlora.results.events import EventLog
from fedlora.sim.availability import Availability
from fedlora.sim.clock import EventClock
from fedlora.sim.profiles import ClientProfile, job_seconds


class Learner(Protocol):
    """What the simulator needs from the model side (a fake one in tests)."""

    def initial_state(self) -> AdapterState: ...

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]: ...

    def tokens(self, batches: Sequence[np.ndarray]) -> int: ...

    def train(
        self, start: AdapterState, batches: Sequence[np.ndarray], seed: int
    ) -> LocalResult: ...

    def evaluate(self, state: AdapterState) -> dict[str, float]: ...

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None: ...


@dataclass(frozen=True)
class Job:
    id: int
    client: int
    version: int
    sent: AdapterState
    batches: list[np.ndarray]
    seed: int
    dispatched: float
    lost: str | None  # why it never delivers (fixed at dispatch), or None


@dataclass
class Evaluation:
    step: int
    round: int
    time: float
    wall: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class LocalEvaluation:
    """One client's trained model: ``started_from`` is the global version it trained from."""

    client: int
    started_from: int
    time: float
    own: dict[str, float]
    dev: dict[str, float]


@dataclass
class Outcome:
    """What a finished simulation knows; the results writer turns it into files."""

    global_state: AdapterState
    evaluations: list[Evaluation] = field(default_factory=list)
    stop_reason: str = "no work left"
    steps: int = 0
    rounds: int = 0
    virtual_time: float = 0.0
    wall_time: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    accepted: int = 0
    rejected: int = 0
    dropped: int = 0
    lost: int = 0
    applied: int = 0  # accepted results that went into at least one merge
    in_flight: int = 0
    target: Evaluation | None = None
    staleness: Counter[int] = field(default_factory=Counter)  # accepted results by staleness
    busy_time: dict[int, float] = field(default_factory=dict)  # per client: time with a job
    local_evaluations: list[LocalEvaluation] = field(default_factory=list)
    diagnostics: list[MergeDiagnostics] = field(default_factory=list)  # one per merge


ProgressCallback = Callable[[Outcome], None]


class Simulation:
    """One run of one experiment in virtual time."""

    def __init__(
        self,
        config: ExperimentConfig,
        learner: Learner,
        aggregator: Aggregator,
        policy: Policy,
        profiles: Sequence[ClientProfile],
        log: EventLog,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.learner = learner
        self.aggregator = aggregator
        self.policy = policy
        self.profiles = list(profiles)
        self.log = log
        self.progress = progress
        self.clock: EventClock[Job] = EventClock()
        self._next_job = 0
        self._updates: dict[int, AdapterState] = {}
        self._sent: dict[int, AdapterState] = {}
        self._applied: set[int] = set()
        self._running: dict[int, Job] = {}  # in flight, by job id
        self._last_eval_time = 0.0
        self.availability = Availability(config.clients.availability, len(profiles), config.seed)
        self._stopped: str | None = None
        self._started = time.perf_counter()
        self.outcome = Outcome(global_state=learner.initial_state())
        self._spec = AdapterSpec.of(self.outcome.global_state)
        self._ranks = sorted({p.rank for p in self.profiles})
        self._shadows = shadow_aggregators(config, self._ranks)

    def run(self) -> Outcome:
        self._evaluate()
        self._apply(self.policy.start())
        max_time = self.config.server.max_virtual_time
        while self._stopped is None and len(self.clock):
            if max_time is not None and self.clock.next_finish > max_time:
                self.clock.advance(max_time)
                self._stopped = f"virtual time {max_time:g}s reached"
                break
            self._apply(self._receive(self.clock.pop()))
        out = self.outcome
        if self._stopped is not None:
            out.stop_reason = self._stopped
        out.in_flight = len(self.clock)
        if not out.evaluations or out.evaluations[-1].step != out.steps:
            self._evaluate()
        out.virtual_time = self.clock.now
        for job in self._running.values():  # still at work when the run stopped
            self._count_busy(job)
        out.wall_time = self._wall()
        return out

    def _wall(self) -> float:
        return time.perf_counter() - self._started

    def _emit(self, kind: str, **fields: object) -> None:
        self.log.emit(kind, t=self.clock.now, wall=self._wall(), **fields)

    def _dispatch(self, client: int) -> None:
        job_id = self._next_job
        self._next_job += 1
        profile = self.profiles[client]
        projected = self.aggregator.project(self.outcome.global_state, profile.rank)
        sent = self.aggregator.personalize(projected, client)
        batches = self.learner.plan(client, np.random.default_rng([self.config.seed, 1, job_id]))
        tokens = self.learner.tokens(batches)
        size = self.aggregator.download_bytes(sent, client)
        up = self.aggregator.transmitted_bytes(sent)  # the update returns at the same shape
        duration = job_seconds(profile, tokens, self.config.clients.seconds_per_token, size, up)
        seed = int(np.random.SeedSequence([self.config.seed, 2, job_id]).generate_state(1)[0])
        now = self.clock.now
        lost = self.availability.failure(client, now, now + duration)
        timeout = self.config.server.job_timeout
        if timeout is not None and (lost or duration > timeout):
            # the server learns of a missing result at the deadline
            lost, duration = lost or f"no result within job_timeout {timeout:g}s", timeout
        job = Job(job_id, client, self.policy.version, sent, batches, seed, now, lost)
        self.clock.schedule(duration, job)
        self._running[job_id] = job
        self.outcome.bytes_down += size
        self._emit(
            "dispatch",
            job=job_id,
            client=client,
            version=job.version,
            rank=profile.rank,
            tokens=tokens,
            duration=duration,
            bytes=size,
        )

    def _count_busy(self, job: Job) -> None:
        busy = self.outcome.busy_time
        busy[job.client] = busy.get(job.client, 0.0) + self.clock.now - job.dispatched

    def _receive(self, job: Job) -> list[Decision]:
        del self._running[job.id]
        self._count_busy(job)
        if job.lost is not None:  # never trained: its result would never have arrived
            self.outcome.lost += 1
            self._emit("lost", job=job.id, client=job.client, reason=job.lost)
            return self.policy.on_lost(job.id, job.client)
        result = self.learner.train(job.sent, job.batches, job.seed)
        size = self.aggregator.transmitted_bytes(result.state)
        self.outcome.bytes_up += size
        staleness = self.policy.version - job.version
        self._emit(
            "arrival",
            job=job.id,
            client=job.client,
            version=self.policy.version,
            dispatched_version=job.version,
            staleness=staleness,
            examples=result.examples,
            loss=result.loss,
            bytes=size,
        )
        try:
            self._spec.validate(result.state, job.sent.rank)
        except InvalidUpdate as error:
            self.outcome.rejected += 1
            self._emit("reject", job=job.id, client=job.client, reason=str(error))
            return self.policy.on_lost(job.id, job.client)
        self.outcome.accepted += 1
        self.outcome.staleness[staleness] += 1
        self._evaluate_client(job, result.state)
        self.aggregator.remember(job.client, result.state)
        self._updates[job.id] = result.state
        self._sent[job.id] = job.sent
        arrival = Arrival(job.id, job.client, job.version, self.clock.now)
        return self.policy.on_arrival(arrival)

    def _evaluate_client(self, job: Job, state: AdapterState) -> None:
        scores = self.learner.evaluate_client(job.client, state)
        if scores is None:
            return
        local = LocalEvaluation(job.client, job.version, self.clock.now, scores.own, scores.dev)
        self.outcome.local_evaluations.append(local)
        self._emit(
            "local_eval",
            job=job.id,
            client=job.client,
            started_from=job.version,
            own=scores.own,
            dev=scores.dev,
        )

    def _apply(self, decisions: Sequence[Decision]) -> None:
        for decision in decisions:
            if self._stopped is not None:
                return
            if isinstance(decision, Dispatch):
                self._dispatch(decision.client)
            elif isinstance(decision, Merge):
                self._merge(decision)
            elif isinstance(decision, Drop):
                self.outcome.dropped += 1
                self._release([decision.job])
                self._emit("drop", job=decision.job, reason=decision.reason)
        self._check_rounds()

    def _resolve(self, source: Source, job: int | None) -> AdapterState:
        if source is Source.GLOBAL:
            return self.outcome.global_state
        assert job is not None, f"a {source.value} term names no job"
        return (self._updates if source is Source.UPDATE else self._sent)[job]

    def _merge(self, merge: Merge) -> None:
        terms = [
            WeightedState(self._resolve(t.source, t.job), t.weight, t.source, t.job)
            for t in merge.terms
        ]
        weights = [term.weight for term in merge.terms]
        self.outcome.global_state = self.aggregator.combine(terms)
        diagnostics = diagnose(terms, self.outcome.global_state, self._ranks, self._shadows)
        self.outcome.diagnostics.append(diagnostics)
        self._release(merge.release)
        self.outcome.steps = self.policy.version
        self.outcome.rounds = self.policy.rounds
        jobs = [t.job for t in merge.terms if t.source is Source.UPDATE]
        self._applied.update(j for j in jobs if j is not None)
        self.outcome.applied = len(self._applied)
        self._emit(
            "merge",
            version=self.policy.version,
            round=self.policy.rounds,
            jobs=jobs,
            weights=weights,
            diagnostics=diagnostics.as_event(),
        )
        if self._evaluation_due():
            self._evaluate()
        max_steps = self.config.server.max_steps
        if max_steps is not None and self.policy.version >= max_steps:
            self._stopped = f"{max_steps} server steps reached"
        self._check_rounds()

    def _check_rounds(self) -> None:
        self.outcome.rounds = self.policy.rounds
        if self._stopped is None and self.policy.rounds >= self.config.server.rounds:
            self._stopped = f"{self.config.server.rounds} rounds reached"

    def _release(self, jobs: Sequence[int]) -> None:
        for job in jobs:
            self._updates.pop(job, None)
            self._sent.pop(job, None)

    def _evaluation_due(self) -> bool:
        every_seconds = self.config.eval.every_seconds
        if every_seconds is not None:
            return self.clock.now - self._last_eval_time >= every_seconds
        return self.policy.version % self.config.eval.every == 0

    def _evaluate(self) -> None:
        self._last_eval_time = self.clock.now
        metrics = self.learner.evaluate(self.outcome.global_state)
        evaluation = Evaluation(
            step=self.policy.version,
            round=self.policy.rounds,
            time=self.clock.now,
            wall=self._wall(),
            metrics=metrics,
        )
        self.outcome.evaluations.append(evaluation)
        self._emit("eval", version=evaluation.step, round=evaluation.round, metrics=metrics)
        target = self.config.eval.target
        reached = target is not None and metrics.get(target.metric, -math.inf) >= target.value
        if target is not None and reached and self.outcome.target is None:
            self.outcome.target = evaluation
            if target.stop:
                self._stopped = f"target {target.metric} ≥ {target.value:g} reached"
        if self.progress is not None:
            self.progress(self.outcome)
