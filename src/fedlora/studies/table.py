"""A study's results across seeds: a markdown table per task (and setting); the figures are
:mod:`~fedlora.studies.figures`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from fedlora.results.report import time_to_target
from fedlora.results.run_summary import RunSummary, Spread, TargetMeasure, clock_seconds
from fedlora.results.store import read_summary
from fedlora.studies.paired import PairedDifference, compare_local, holm
from fedlora.studies.sections import (
    at_step,
    by_category,
    cell_text,
    compared_predictions,
    contrast_lines,
    find_contrasts,
    multiplicity_note,
    seed_pairs,
)
from fedlora.studies.sweep import Cell, done_by_group_arm


def _spread(values: Sequence[float], digits: int = 3) -> str:
    """mean ± sample standard deviation (just the value for one seed)."""
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _reached(values: Sequence[float], runs: int, digits: int) -> str:
    """The spread of what was reached, and in how many of the runs."""
    return f"{_spread(values, digits)} ({len(values)}/{runs})"


def _measured(summary: RunSummary, measure: TargetMeasure) -> bool:
    """Whether a summary has the target ``measure`` (older summaries or no max_loss: not)."""
    return summary.target is not None and summary.target.by(measure) is not None


_COLUMNS = ("arm", "seeds", "final acc", "final F1", "best acc", "final loss", "best loss",
            "final MC acc", "final MC acc norm", "rounds to target", "virtual s to target",
            "s to smoothed target", "s to loss target")  # fmt: skip
_AFTER_SPEEDUPS = ("mean staleness", "idle share", "MB sent", "update spread")
# Time to target, and speedups, by the first crossing, the running mean, and the loss target.
_MEASURES: dict[TargetMeasure, str] = {None: "", "smoothed": " (smoothed)", "on_loss": " (loss)"}
# "global acc, own split": the final global model on the clients' own splits; "local gain,
# own split": the client models minus it there, per client (an easier split cancels); both in
# the task's first metric, "—" in summaries written before they were scored
_LOCAL_COLUMNS = ("local acc, own split", "client sd, own split", "local loss, own split",
                  "own split size", "local acc, dev", "global acc, own split",
                  "local gain, own split")  # fmt: skip
# (column label, key of compare_runs / compare_local): each against every baseline
_PAIRED = (("acc", "accuracy"), ("loss", "loss"), ("acc short", "accuracy, short"),
           ("acc middle", "accuracy, middle"), ("acc long", "accuracy, long"),
           ("loss short", "loss, short"), ("loss middle", "loss, middle"),
           ("loss long", "loss, long"), ("MC acc", "mc accuracy"),
           ("local acc", "local"), ("local loss", "local loss"))  # fmt: skip


def study_table(
    cells: Sequence[Cell],
    baselines: Sequence[str] = (),
    contrasts: Sequence[tuple[str, str]] = (),
    paired_steps: Sequence[int] = (),
) -> str:
    """One markdown table per task (and setting): final and best dev metrics, rounds and
    virtual seconds to the target, speedups against the ``baselines`` arms, the mean
    staleness of accepted results, the mean share of time clients had no job, traffic, the
    spread of client updates around their mean (per merge, averaged over the run's merges),
    and where clients held local test splits, how their own trained models did on them (with
    loss and split size) and on the dev set, the final global model on the same splits, and
    the clients' gain over it there (client minus global model per client, in the task's
    first metric: an easier split lifts both and cancels). Where cells wrote predictions, each
    arm's paired differences against the baselines (:mod:`fedlora.studies.paired`): accuracy
    and loss, accuracy per length tercile of the eval split, and the clients' local accuracy
    and loss.
    A column with no value in any row is left out. Below it, for each of the ``contrasts``
    (arm, reference) both ran with predictions, their paired accuracy and loss differences.
    Then, for each of ``paired_steps`` (evaluation steps: global model versions, under FedAvg
    rounds), the same paired differences of the models evaluated at that step, each arm
    against each baseline and each contrast, where both kept predictions at that step
    (:func:`at_step`); a table of its own, with its own Holm family. Where no cell kept
    predictions at that step (cells kept before every evaluation's were), nothing is shown.
    Last, for an instruction task, each arm's loss difference against each baseline within
    each category of the eval examples (:func:`~fedlora.studies.sections.by_category`).

    A speedup is the baseline's time to target over the arm's, taken per seed (the same
    seed gives both the same clients and speeds) and then combined by a geometric mean; a run
    that never reached the target bounds it by its length (:func:`_speedups`).
    """
    lines: list[str] = []
    for group, arms in done_by_group_arm(cells).items():
        summaries = {
            arm: {c.seed: read_summary(c.folder) for c in done} for arm, done in arms.items()
        }
        present = [b for b in baselines if b in summaries]
        header = [
            *_COLUMNS,
            *(f"speedup vs {b}{label}" for b in present for label in _MEASURES.values()),
            *_AFTER_SPEEDUPS,
            *_local_columns(summaries),
            *(f"Δ {label} vs {b} [95% CI]" for b in present for label, _ in _PAIRED),
        ]
        measured = [[arm, *_row(summaries[arm], summaries, present)] for arm in summaries]
        paired = [_paired(arms, summaries, arm, present) for arm in summaries]
        contrasts_found = find_contrasts(arms, contrasts)
        family = [d for row in paired for d in row if d is not None]
        family += [d for *_, acc, loss in contrasts_found for d in (acc, loss) if d is not None]
        verdicts = dict(zip(map(id, family), holm(family), strict=True))
        rows = [
            m + [cell_text(d, verdicts) for d in row]
            for m, row in zip(measured, paired, strict=True)
        ]
        # a column with no value is left out, and so is one named as an earlier one (a loss
        # metric's local columns: the same values)
        shown = [
            i
            for i in range(len(header))
            if any(row[i] != "—" for row in rows) and header[i] not in header[:i]
        ]
        lines += [
            f"### {group}",
            "",
            "| " + " | ".join(header[i] for i in shown) + " |",
            "|" + " --- |" * len(shown),
            *("| " + " | ".join(row[i] for i in shown) + " |" for row in rows),
            "",
        ]
        lines += contrast_lines(contrasts_found, verdicts)
        if family:
            lines += [multiplicity_note(len(family)), ""]
        for step in paired_steps:
            lines += at_step(arms, present, contrasts, step)
        lines += by_category(arms, present)
    return "\n".join(lines)


def _row(
    by_seed: dict[int, RunSummary],
    summaries: dict[str, dict[int, RunSummary]],
    baselines: Sequence[str],
) -> list[str]:
    """One arm's cells after its name (summaries written before a field existed show "—"):
    its levels, time to target, speedups, resources and clients' local models, in
    :data:`_COLUMNS`, speedup, :data:`_AFTER_SPEEDUPS` and :data:`_LOCAL_COLUMNS` order."""
    runs = list(by_seed.values())
    speedups = [
        _speedups(
            [(summaries[b][seed], s) for seed, s in by_seed.items() if seed in summaries[b]], m
        )
        for b in baselines
        for m in _MEASURES
    ]
    return [*_levels(runs), *_to_target(runs), *speedups, *_resources(runs), *_locals(runs)]


def _local_columns(summaries: dict[str, dict[int, RunSummary]]) -> list[str]:
    """:data:`_LOCAL_COLUMNS`, named by the metric the clients' models were scored in: an
    instruction task's is its response loss, not an accuracy."""
    metrics = {s.local.metric for by_seed in summaries.values() for s in by_seed.values()
               if s.local is not None}  # fmt: skip
    if metrics != {"loss"}:
        return list(_LOCAL_COLUMNS)
    return [c.replace(" acc,", " loss,") for c in _LOCAL_COLUMNS]


def _levels(runs: Sequence[RunSummary]) -> list[str]:
    """Final and best accuracy, F1 and loss, and final multiple-choice accuracy."""
    finals = [s.final.metrics for s in runs]
    bests = [s.best.metrics for s in runs]
    choices = [s.choices.final for s in runs if s.choices is not None]
    return [
        str(len(runs)),
        _spread([f["accuracy"] for f in finals if "accuracy" in f]),
        _spread([f["f1"] for f in finals if "f1" in f]),
        _spread([b["accuracy"] for b in bests if "accuracy" in b]),
        _spread([f["loss"] for f in finals if "loss" in f]),
        # the best evaluation is the lowest loss only where there is no accuracy to pick it by
        _spread([b["loss"] for b in bests if "accuracy" not in b]),
        _spread([c.mc_accuracy for c in choices]),
        _spread([c.mc_accuracy_norm for c in choices]),
    ]


def _to_target(runs: Sequence[RunSummary]) -> list[str]:
    """Rounds to the target, then seconds to it by each of :data:`_MEASURES`."""
    targets = [s.target for s in runs]
    hits = [t.first.at for t in targets if t is not None and t.first.at is not None]
    row = [_reached([at.round for at in hits], len(runs), 1) if targets[0] is not None else "—"]
    for measure in _MEASURES:
        reached = [time_to_target(s, measure) for s in runs]
        times = [t for t in reached if t is not None]
        measured = any(_measured(s, measure) for s in runs)
        row.append(_reached(times, len(runs), 0) if measured else "—")
    return row


def _resources(runs: Sequence[RunSummary]) -> list[str]:
    """:data:`_AFTER_SPEEDUPS`: staleness, idle share, traffic and the update spread."""
    staleness = [s.staleness.mean for s in runs if s.staleness.mean is not None]  # any accepted
    return [
        _spread(staleness, 2),
        _spread([statistics.fmean(s.client_idle_fraction) for s in runs], 2),
        _spread([(s.bytes_down + s.bytes_up) / 1e6 for s in runs], 1),
        _spread([s.diagnostics.spread.mean for s in runs if s.diagnostics is not None]),
    ]


def _locals(runs: Sequence[RunSummary]) -> list[str]:
    """:data:`_LOCAL_COLUMNS`: the clients' own models, and the global one on their splits."""
    local = [s.local for s in runs if s.local is not None]
    return [
        _means([entry.own for entry in local]),
        _spread([entry.own.std for entry in local if entry.own is not None]),
        _means([entry.own_loss for entry in local]),
        _means([entry.examples for entry in local], 1),
        _means([entry.dev for entry in local]),
        _means([entry.global_own for entry in local]),
        _means([entry.own_gain for entry in local]),
    ]


def _means(spreads: Sequence[Spread | None], digits: int = 3) -> str:
    """The spread over runs of a score's mean over clients, in the runs that scored it."""
    return _spread([s.mean for s in spreads if s is not None], digits)


def _speedups(pairs: Sequence[tuple[RunSummary, RunSummary]], measure: TargetMeasure) -> str:
    """The baseline's time to target over the arm's, per seed, as a geometric mean (ratios
    average on the log scale: 2× and 0.5× are no speedup) with its geometric sd; where one of
    the two never reached the target, its run's length bounds the ratio (≥ where the baseline
    never did, ≤ where the arm never did), and each seed's value is listed instead. A seed in
    which neither reached it has no ratio: it is shown as "neither", counted, and left out."""
    values: list[float] = []
    shown: list[str] = []
    neither = 0
    for baseline, run in pairs:
        if not (_measured(baseline, measure) and _measured(run, measure)):
            continue  # no such target was set: nothing to reach, not a "neither"
        theirs, mine = time_to_target(baseline, measure), time_to_target(run, measure)
        if mine == 0:  # reached at the start: no ratio to take
            continue
        if theirs is None and mine is None:
            neither += 1
            shown.append("neither")
        elif theirs is not None and mine is not None:
            values.append(theirs / mine)
            shown.append(f"{theirs / mine:.2f}×")
        elif mine is not None:  # the baseline ran its whole length without reaching it
            shown.append(f"≥{clock_seconds(baseline) / mine:.2f}×")
        elif theirs is not None:
            shown.append(f"≤{theirs / clock_seconds(run):.2f}×")
    if len(values) + neither < len(shown):
        return ", ".join(shown)
    if not values:
        return f"— ({neither} neither)" if neither else "—"
    return _geometric(values) + (f" ({neither} neither)" if neither else "")


def _geometric(ratios: Sequence[float]) -> str:
    """geometric mean ×/÷ geometric sd (just the value for one seed)."""
    logs = [math.log(r) for r in ratios]
    mean = math.exp(statistics.fmean(logs))
    if len(logs) == 1:
        return f"{mean:.2f}×"
    return f"{mean:.2f}× ×/÷ {math.exp(statistics.stdev(logs)):.2f}"


def _paired(
    arms: dict[str, list[Cell]],
    summaries: dict[str, dict[int, RunSummary]],
    arm: str,
    baselines: Sequence[str],
) -> list[PairedDifference | None]:
    """Per baseline, the arm's paired differences (:data:`_PAIRED`) over the seeds both ran:
    global ones where every cell has a predictions.csv, local ones where every summary has a
    local block; None for the baseline itself and for what is missing."""
    cells: list[PairedDifference | None] = []
    for baseline in baselines:
        pairs = seed_pairs(arms, baseline, arm)
        differences: dict[str, PairedDifference] = {}
        if arm != baseline and pairs:
            differences |= compared_predictions(pairs)
            seeds = [b.seed for _, b in pairs]
            mine = [summaries[arm][seed] for seed in seeds]
            theirs = [summaries[baseline][seed] for seed in seeds]
            theirs_local = [s.local for s in theirs if s.local is not None]
            mine_local = [s.local for s in mine if s.local is not None]
            if len(theirs_local) == len(mine_local) == len(seeds):
                differences |= compare_local(theirs_local, mine_local)
        cells += [differences.get(key) for _, key in _PAIRED]
    return cells
