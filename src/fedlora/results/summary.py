"""What a run's summary.json says: the headline numbers, and the target, local, diagnostics,
staleness and idling sections, computed from the run's outcome (:func:`summarize`) as a
:class:`~fedlora.results.run_summary.RunSummary`.

:mod:`~fedlora.results.store` writes it with the rest of the run folder.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedlora.config import ExperimentConfig, TargetConfig
from fedlora.data.tasks import TaskSpec
from fedlora.outcome import Clock, Evaluation, Outcome
from fedlora.predictions import Predictions
from fedlora.results.run_summary import (
    Diagnostics,
    EvaluationRow,
    LocalSummary,
    OverMerges,
    Reached,
    RunSummary,
    Staleness,
    TargetSummary,
    Tercile,
)
from fedlora.target import first_reaching, lower_is_better
from fedlora.terciles import length_terciles

if TYPE_CHECKING:
    from fedlora.aggregation.diagnostics import MergeDiagnostics


def evaluation_row(evaluation: Evaluation, clock: Clock = "virtual") -> EvaluationRow:
    """One evaluation as a metrics.csv row (and as the summary's ``final`` and ``best``): its
    time on the run's clock, and under a virtual one the wall seconds beside."""
    row = EvaluationRow(
        step=evaluation.step,
        round=evaluation.round,
        wall_time_s=evaluation.wall if clock == "virtual" else evaluation.time,
        metrics=dict(evaluation.metrics),
    )
    if clock == "virtual":  # set only here: under a wall clock the row has no virtual time
        row.virtual_time_s = evaluation.time
    return row


def summarize(
    config: ExperimentConfig,
    outcome: Outcome,
    task: TaskSpec,
    predictions: Predictions | None = None,
    local_sizes: Sequence[int] | None = None,
    global_own: Mapping[int, Mapping[str, float]] | None = None,
    clock: Clock = "virtual",
) -> RunSummary:
    """The run's headline numbers, its times on its runtime's ``clock``; ``best`` is the
    evaluation best on the task's first metric (highest, or lowest for a loss: an instruction
    task's).

    With the final model's ``predictions`` (carrying context lengths), ``final.by_length``
    slices its accuracy and loss by length tercile; ``local_sizes`` are the clients' own test
    split sizes, reported beside their local scores, and ``global_own`` the final global
    model's scores on each client's own test split (the control for them)."""
    metrics = task.metrics
    pick = min if lower_is_better(metrics[0]) else max
    best = pick(outcome.evaluations, key=lambda e: e.metrics[metrics[0]])
    # the final model, as of the run's end (lost jobs may advance rounds and time after its
    # last merge, never the model)
    final = evaluation_row(outcome.evaluations[-1], clock).model_copy(
        update={"round": outcome.rounds, f"{clock}_time_s": outcome.virtual_time}
    )
    if predictions is not None and predictions.lengths is not None:
        terciles = length_terciles(predictions)
        final.by_length = {name: Tercile.model_validate(t) for name, t in terciles.items()}
    summary = RunSummary(
        name=config.name,
        task=config.data.task,
        labels=list(task.label_names),
        policy=config.server.policy,
        aggregator=config.server.aggregator,
        clients=config.clients.num,
        seed=config.seed,
        stop_reason=outcome.stop_reason,
        clock=clock,
        final=final,
        best=evaluation_row(best, clock),
        wall_time_s=outcome.wall_time,
        server_steps=outcome.steps,
        rounds=outcome.rounds,
        bytes_down=outcome.bytes_down,
        bytes_up=outcome.bytes_up,
        updates_accepted=outcome.accepted,
        updates_applied=outcome.applied,
        updates_rejected=outcome.rejected,
        updates_clipped=outcome.clipped,
        updates_dropped=outcome.dropped,
        jobs_lost=outcome.lost,
        jobs_in_flight=outcome.in_flight,
        staleness=_staleness_summary(config, outcome),
        client_idle_fraction=_idle_fractions(config, outcome),
    )
    # Sections set only where they apply: what is never set is left out of the file.
    if clock == "virtual":
        summary.virtual_time_s = outcome.virtual_time
    if outcome.local_evaluations:
        summary.local = _local_summary(outcome, metrics[0], local_sizes, global_own)
    if outcome.diagnostics:
        summary.diagnostics = _diagnostics_summary(outcome.diagnostics)
    if config.eval.target is not None:
        summary.target = _target_summary(config.eval.target, outcome, clock)
    return summary


def _reached(evaluation: Evaluation | None, clock: Clock) -> Reached:
    if evaluation is None:
        return Reached(reached=False)
    return Reached(reached=True, at=evaluation_row(evaluation, clock))


def _target_summary(target: TargetConfig, outcome: Outcome, clock: Clock) -> TargetSummary:
    """The first noisy crossing (flat, as before), the first crossing of the running mean of the
    last ``smooth`` evaluations, and, with ``target.max_loss``, the first eval with loss ≤ it."""
    series = [e.metrics for e in outcome.evaluations]

    def first(metric: str, value: float, smooth: int) -> Reached:
        index = first_reaching(series, metric, value, smooth)
        return _reached(None if index is None else outcome.evaluations[index], clock)

    summary = TargetSummary(
        **target.model_dump(),
        first=_reached(outcome.target, clock),
        smoothed=first(target.metric, target.value, target.smooth),
    )
    if target.max_loss is not None:
        summary.on_loss = first("loss", target.max_loss, 1)
    return summary


def _local_summary(
    outcome: Outcome,
    metric: str,
    local_sizes: Sequence[int] | None,
    global_own: Mapping[int, Mapping[str, float]] | None = None,
) -> LocalSummary:
    """Each client's latest trained model on its own test split and on the global eval split:
    mean, spread across clients and range, against the final global model; the losses beside
    (``own_loss``, ``dev_loss``) where the evaluations scored them, and the size of each
    client's own split (``examples``) where known, since accuracy on a handful is noise.

    With ``global_own`` (the final global model scored on each client's own split, the same
    way), ``global_own`` and (beside ``own_loss``) ``global_own_loss``, and the paired
    difference per client of its own model minus the global one on the same split:
    ``own_gain`` (``own − global_own``) and ``own_loss_gain`` (``own_loss − global_own_loss``).
    For accuracy higher is better, so a positive gain is the client model's advantage on its
    own data; for a loss (``own_loss_gain``, and ``own_gain`` of an instruction task, whose
    metric is the response loss) lower is better, so the advantage is a negative gain. An
    easier own split lifts both scores alike and cancels in the gain."""
    latest = {e.client: e for e in outcome.local_evaluations}  # later evaluations win
    clients = sorted(latest)
    scored: dict[str, dict[int, Mapping[str, float]]] = {
        "own": {c: latest[c].own for c in clients},
        "dev": {c: latest[c].dev for c in clients},
        "global_own": {c: (global_own or {}).get(c, {}) for c in clients},
    }

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values),
            "min": min(values),
            "max": max(values),
        }

    per_client: dict[int, dict[str, Any]] = {
        c: {"started_from": latest[c].started_from} for c in clients
    }
    summary: dict[str, Any] = {"metric": metric, "evaluations": len(outcome.local_evaluations)}
    for name, side, key in (
        ("own", "own", metric),
        ("dev", "dev", metric),
        ("own_loss", "own", "loss"),
        ("dev_loss", "dev", "loss"),
        ("global_own", "global_own", metric),
        ("global_own_loss", "global_own", "loss"),
    ):
        if name == "global_own_loss" and "own_loss" not in summary:
            continue  # the control's loss only beside the client models' own
        if all(key in scored[side][c] for c in clients):  # dev: with eval.local_dev
            values = [scored[side][c][key] for c in clients]
            summary[name] = spread(values)
            for c, value in zip(clients, values, strict=True):
                per_client[c][name] = value
    for name, mine, theirs in (
        ("own_gain", "own", "global_own"),
        ("own_loss_gain", "own_loss", "global_own_loss"),
    ):
        if mine in summary and theirs in summary:
            values = [per_client[c][mine] - per_client[c][theirs] for c in clients]
            summary[name] = spread(values)
            for c, value in zip(clients, values, strict=True):
                per_client[c][name] = value
    if local_sizes is not None:
        sizes = [local_sizes[c] for c in clients]
        summary["examples"] = spread([float(n) for n in sizes])
        for c, size in zip(clients, sizes, strict=True):
            per_client[c]["examples"] = size
    return LocalSummary.model_validate(
        {
            **summary,
            "global_dev": outcome.evaluations[-1].metrics[metric],
            "clients": {str(c): entry for c, entry in per_client.items()},
        }
    )


def _diagnostics_summary(merges: list[MergeDiagnostics]) -> Diagnostics:
    """Mean, max and last of each per-merge diagnostic (shadow errors by aggregator)."""

    def over_merges(values: list[float]) -> OverMerges:
        return OverMerges(mean=statistics.fmean(values), max=max(values), last=values[-1])

    ranks = merges[-1].energy_above
    summary = Diagnostics(
        merges=len(merges),
        error=over_merges([m.error for m in merges]),
        spread=over_merges([m.spread for m in merges]),
        energy_above={str(r): over_merges([m.energy_above[r] for m in merges]) for r in ranks},
    )
    if merges[-1].shadow:
        summary.shadow = {
            name: over_merges([m.shadow[name] for m in merges]) for name in merges[-1].shadow
        }
    return summary


def _staleness_summary(config: ExperimentConfig, outcome: Outcome) -> Staleness:
    """Histogram of accepted results by staleness (in ``server.staleness_unit``), mean and max."""
    counts = outcome.staleness
    total = sum(counts.values())
    return Staleness(
        unit=config.server.staleness_unit,
        histogram={str(k): counts[k] for k in sorted(counts)},
        mean=sum(k * n for k, n in counts.items()) / total if total else None,
        max=max(counts, default=None),
    )


def _idle_fractions(config: ExperimentConfig, outcome: Outcome) -> list[float]:
    """Per client, the share of the run's virtual time it had no job (waiting or unused)."""
    span = outcome.virtual_time
    return [
        round(1.0 - outcome.busy_time.get(c, 0.0) / span, 6) if span > 0 else 1.0
        for c in range(config.clients.num)
    ]
