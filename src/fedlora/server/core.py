"""The server core: arrivals and losses in, what to send to whom out.

Clock-free and transport-free: a runtime (the simulator's virtual clock, Flower's Grid) tells
it the time with every call, moves the bytes, and sends what it answers. The core validates
each update, drives the policy, resolves its merge terms, merges through the aggregator,
remembers what each job was sent, counts, evaluates and says when the run must stop. Its whole
state is plain data (:meth:`ServerCore.state_dict`): checkpointing it makes any runtime
resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate
from fedlora.aggregation import Aggregator, WeightedState
from fedlora.aggregation.diagnostics import diagnose, shadow_aggregators
from fedlora.client.protocol import Evaluator
from fedlora.config import ExperimentConfig
from fedlora.outcome import Evaluation, LocalEvaluation, Outcome
from fedlora.policies import Arrival, Decision, Dispatch, Drop, Merge, Policy, Source
from fedlora.server.defence import defend
from fedlora.server.events import EventSink
from fedlora.server.jobs import Job, Send
from fedlora.server.screening import screen
from fedlora.snapshot import Snapshot
from fedlora.target import lower_is_better, meets


class ServerCore:
    """One federation's server, driven by a runtime through :meth:`start`, :meth:`sent`,
    :meth:`arrival`, :meth:`lost` and :meth:`finish`."""

    def __init__(
        self,
        config: ExperimentConfig,
        aggregator: Aggregator,
        policy: Policy,
        initial: AdapterState,
        ranks: Sequence[int],
        evaluator: Evaluator,
        log: EventSink,
        progress: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.config = config
        self.aggregator = aggregator
        self.policy = policy
        self.ranks = list(ranks)
        self.evaluator = evaluator
        self.log = log
        self.progress = progress
        self.outcome = Outcome(global_state=initial)
        self.in_flight: dict[int, Job] = {}
        self.stopped: str | None = None
        self._spec = AdapterSpec.of(initial)
        self._ranks = sorted(set(self.ranks))
        self._shadows = shadow_aggregators(config, self._ranks)
        self._held: dict[int, tuple[AdapterState, AdapterState]] = {}  # job: (update, sent)
        self._applied: set[int] = set()
        self._next_job = 0
        self._last_eval_time = 0.0
        # The global version this process last scored: a grid point with no merge since then
        # reuses its metrics (eval mode is deterministic), which saves synchronous runs most of
        # their grid evaluations. Not checkpointed, so a resumed run scores afresh.
        self._scored: tuple[int, dict[str, float]] | None = None

    # -- what a runtime calls ---------------------------------------------------------------

    def start(self, now: float) -> list[Send]:
        """Evaluate the initial global adapter and answer the first dispatches."""
        self._evaluate(now)
        return self._apply(self.policy.start(), now)

    def sent(self, send: Send, now: float, **details: object) -> None:
        """The runtime sent ``send`` at ``now``: log it (with the runtime's ``details``, e.g.
        the simulator's cost model) and charge its bytes."""
        self.in_flight[send.job].dispatched = now
        self.outcome.bytes_down += send.bytes
        self._emit(
            "dispatch",
            now,
            job=send.job,
            client=send.client,
            version=send.version,
            rank=send.rank,
            **self.aggregator.dispatch_details(send.client, send.state),
            **details,
            bytes=send.bytes,
        )

    def arrival(
        self,
        job_id: int,
        update: AdapterState | bytes,
        examples: int,
        loss: float,
        now: float,
        **details: object,
    ) -> list[Send]:
        """A job's result reached the server: validate, count, hand it to the policy. The
        arrival is logged with the runtime's ``details`` (e.g. where a deployment trained it)."""
        job = self.in_flight.pop(job_id, None)
        if job is None:  # a duplicate, late or forged reply: nothing to merge it with
            self.outcome.rejected += 1
            self._emit("reject", now, job=job_id, client=None, reason="no such job in flight")
            return []
        self._count_busy(job, now)
        size = (
            len(update) if isinstance(update, bytes) else self.aggregator.transmitted_bytes(update)
        )
        self.outcome.bytes_up += size
        staleness = self.policy.staleness_of(job.version)  # in server.staleness_unit
        self._emit(
            "arrival",
            now,
            job=job.id,
            client=job.client,
            version=self.policy.version,
            dispatched_version=job.version,
            staleness=staleness,
            staleness_merges=self.policy.version - job.version,
            examples=examples,
            loss=loss,
            bytes=size,
            **details,
        )
        server = self.config.server
        try:
            screened = screen(
                update, self._spec, job.sent, server.max_update_norm, server.norm_action
            )
        except InvalidUpdate as error:
            self.outcome.rejected += 1
            self._emit("reject", now, job=job.id, client=job.client, reason=str(error))
            return self._apply(self.policy.on_lost(job.id, job.client), now)
        state = screened.state
        if screened.clipped_from is not None:
            self.outcome.clipped += 1
            self._emit("clip", now, job=job.id, client=job.client, norm=screened.clipped_from)
        self.outcome.accepted += 1
        self.outcome.staleness[staleness] += 1
        self._evaluate_client(job, state, now)
        self.aggregator.remember(job.client, state)
        self._held[job.id] = (state, job.sent)
        arrival = Arrival(job.id, job.client, job.version, now)
        return self._apply(self.policy.on_arrival(arrival), now)

    def lost(self, job_id: int, reason: str, now: float) -> list[Send]:
        """A job will never deliver (its client failed, went offline or timed out)."""
        job = self.in_flight.pop(job_id, None)
        if job is None:
            return []
        self._count_busy(job, now)
        self.outcome.lost += 1
        self._emit("lost", now, job=job.id, client=job.client, reason=reason)
        return self._apply(self.policy.on_lost(job.id, job.client), now)

    def evaluate(self, now: float) -> None:
        """Evaluate the current global at ``now``: for a runtime that keeps an evaluation grid
        of its own (``eval.grid_seconds``), independent of merges."""
        self._evaluate(now)

    def stop(self, reason: str) -> None:
        """Stop for a reason only the runtime knows (e.g. its time limit)."""
        if self.stopped is None:
            self.stopped = reason

    def finish(self, now: float) -> Outcome:
        """Close the run at ``now``: a final evaluation if the last merge had none."""
        out = self.outcome
        if self.stopped is not None:
            out.stop_reason = self.stopped
        out.in_flight = len(self.in_flight)
        if not out.evaluations or out.evaluations[-1].step != out.steps:
            self._evaluate(now)
        out.virtual_time = now
        for job in self.in_flight.values():  # still at work when the run stopped
            self._count_busy(job, now)
        out.wall_time = self.log.wall()
        return out

    # -- decisions --------------------------------------------------------------------------

    def _apply(self, decisions: Sequence[Decision], now: float) -> list[Send]:
        sends = []
        for decision in decisions:
            if self.stopped is not None:
                break
            if isinstance(decision, Dispatch):
                sends.append(self._dispatch(decision.client))
            elif isinstance(decision, Merge):
                self._merge(decision, now)
            elif isinstance(decision, Drop):
                self.outcome.dropped += 1
                self._release([decision.job])
                self._emit("drop", now, job=decision.job, reason=decision.reason)
        self._check_rounds()
        return sends

    def _dispatch(self, client: int) -> Send:
        job_id = self._next_job
        self._next_job += 1
        rank = self.ranks[client]
        projected = self.aggregator.project(self.outcome.global_state, rank)
        sent = self.aggregator.personalize(projected, client)
        self.in_flight[job_id] = Job(job_id, client, self.policy.version, sent)
        down = self.aggregator.download_bytes(sent, client)
        up = self.aggregator.transmitted_bytes(sent)  # the update returns at the same shape
        return Send(job_id, client, self.policy.version, rank, sent, down, up)

    def _resolve(self, source: Source, job: int | None) -> AdapterState:
        if source is Source.GLOBAL:
            return self.outcome.global_state
        assert job is not None, f"a {source.value} term names no job"
        update, sent = self._held[job]
        return update if source is Source.UPDATE else sent

    def _merge(self, merge: Merge, now: float) -> None:
        terms = [
            WeightedState(self._resolve(t.source, t.job), t.weight, t.source, t.job)
            for t in merge.terms
        ]
        sent = {job: held_sent for job, (_, held_sent) in self._held.items()}
        terms = defend(terms, sent, self.config.server.defence)
        weights = [term.weight for term in merge.terms]
        jobs = [t.job for t in merge.terms if t.source is Source.UPDATE]
        merged, failure = self._combine(terms)
        self._release(merge.release)
        self.outcome.steps = self.policy.version
        self.outcome.rounds = self.policy.rounds
        if merged is None:
            self._refuse(jobs, failure, now)
        else:
            self.outcome.global_state = merged
            diagnostics = diagnose(terms, merged, self._ranks, self._shadows)
            self.outcome.diagnostics.append(diagnostics)
            self._applied.update(j for j in jobs if j is not None)
            self.outcome.applied = len(self._applied)
            self._emit(
                "merge",
                now,
                version=self.policy.version,
                round=self.policy.rounds,
                jobs=jobs,
                weights=weights,
                diagnostics=diagnostics.as_event(),
            )
        if self._evaluation_due(now):
            self._evaluate(now)
        max_steps = self.config.server.max_steps
        if max_steps is not None and self.policy.version >= max_steps:
            self.stop(f"{max_steps} server steps reached")
        self._check_rounds()

    def _combine(self, terms: Sequence[WeightedState]) -> tuple[AdapterState | None, str]:
        """The merged global, or None and why: screening keeps every accepted update far
        from what could make a merge raise or overflow, and this is the last line behind it."""
        try:
            merged = self.aggregator.combine(terms)
        except (RuntimeError, ValueError) as error:  # torch.linalg.LinAlgError included
            return None, f"the merge failed ({type(error).__name__}: {error})"
        if not all(bool(torch.isfinite(t).all()) for t in merged.tensors()):
            return None, "the merge gave a non-finite global"
        return merged, ""

    def _refuse(self, jobs: Sequence[int | None], failure: str, now: float) -> None:
        """Keep the last finite global; the merge's client results count as rejected."""
        for job in jobs:
            self.outcome.rejected += 1
            self._emit("reject", now, job=job, client=None, reason=failure)
        self._emit(
            "merge_refused",
            now,
            version=self.policy.version,
            jobs=list(jobs),
            reason=f"{failure}: the global stays the last finite one",
        )

    def _check_rounds(self) -> None:
        self.outcome.rounds = self.policy.rounds
        if self.policy.rounds >= self.config.server.rounds:
            self.stop(f"{self.config.server.rounds} rounds reached")

    def _release(self, jobs: Sequence[int]) -> None:
        for job in jobs:
            self._held.pop(job, None)

    # -- evaluation and bookkeeping -----------------------------------------------------------

    def _evaluation_due(self, now: float) -> bool:
        if self.config.eval.grid_seconds is not None:
            return False  # the runtime evaluates on its grid
        every_seconds = self.config.eval.every_seconds
        if every_seconds is not None:
            return now - self._last_eval_time >= every_seconds
        return self.policy.version % self.config.eval.every == 0

    def _evaluate(self, now: float) -> None:
        self._last_eval_time = now
        if self._scored is None or self._scored[0] != self.policy.version:
            self._scored = (self.policy.version, self.evaluator.evaluate(self.outcome.global_state))
        metrics = dict(self._scored[1])
        evaluation = Evaluation(
            step=self.policy.version,
            round=self.policy.rounds,
            time=now,
            wall=self.log.wall(),
            metrics=metrics,
        )
        self.outcome.evaluations.append(evaluation)
        self._emit("eval", now, version=evaluation.step, round=evaluation.round, metrics=metrics)
        target = self.config.eval.target
        reached = target is not None and meets(metrics, target.metric, target.value)
        if target is not None and reached and self.outcome.target is None:
            self.outcome.target = evaluation
            if target.stop:
                sign = "≤" if lower_is_better(target.metric) else "≥"
                self.stop(f"target {target.metric} {sign} {target.value:g} reached")
        if self.progress is not None:
            self.progress(self.outcome)

    def _evaluate_client(self, job: Job, state: AdapterState, now: float) -> None:
        if job.version < self.config.eval.local_from:
            return
        scores = self.evaluator.evaluate_client(job.client, state)
        if scores is None:
            return
        local = LocalEvaluation(job.client, job.version, now, scores.own, scores.dev)
        self.outcome.local_evaluations.append(local)
        self._emit(
            "local_eval",
            now,
            job=job.id,
            client=job.client,
            started_from=job.version,
            own=scores.own,
            dev=scores.dev,
        )

    def _count_busy(self, job: Job, now: float) -> None:
        busy = self.outcome.busy_time
        busy[job.client] = busy.get(job.client, 0.0) + now - job.dispatched

    def _emit(self, kind: str, now: float, **fields: object) -> None:
        self.log.emit(kind, t=now, wall=self.log.wall(), **fields)

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> Snapshot:
        """The core's whole state: the policy's and the aggregator's with it."""
        snap = Snapshot()
        snap.put_state("global", self.outcome.global_state)
        jobs = []
        for job in self.in_flight.values():
            snap.put_state(f"sent.{job.id}", job.sent)
            jobs.append([job.id, job.client, job.version, job.dispatched])
        for job_id, (update, sent) in self._held.items():
            snap.put_state(f"held.{job_id}.update", update)
            snap.put_state(f"held.{job_id}.sent", sent)
        for name, tensor in self.aggregator.state_dict().items():
            snap.tensors[f"aggregator.{name}"] = tensor
        snap.meta.update(
            outcome=self.outcome.to_json(),
            jobs=jobs,
            held=sorted(self._held),
            applied=sorted(self._applied),
            next_job=self._next_job,
            last_eval_time=self._last_eval_time,
            stopped=self.stopped,
            policy=self.policy.state_dict(),
        )
        return snap

    def load_state_dict(self, snap: Snapshot) -> None:
        meta = snap.meta
        self.outcome = Outcome.from_json(meta["outcome"], snap.get_state("global"))
        self.in_flight = {
            job_id: Job(job_id, client, version, snap.get_state(f"sent.{job_id}"), dispatched)
            for job_id, client, version, dispatched in meta["jobs"]
        }
        self._held = {
            job_id: (snap.get_state(f"held.{job_id}.update"), snap.get_state(f"held.{job_id}.sent"))
            for job_id in meta["held"]
        }
        self._applied = set(meta["applied"])
        self._next_job = meta["next_job"]
        self._last_eval_time = meta["last_eval_time"]
        self.stopped = meta["stopped"]
        self.policy.load_state_dict(meta["policy"])
        prefix = "aggregator."
        self.aggregator.load_state_dict(
            {k.removeprefix(prefix): t for k, t in snap.tensors.items() if k.startswith(prefix)}
        )
