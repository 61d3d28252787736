"""A study's results across seeds: a markdown table per task (and setting); the figures are
:mod:`~fedlora.studies.figures`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from fedlora.results.report import time_to_target
from fedlora.results.run_summary import RunSummary, Spread, TargetMeasure, clock_seconds
from fedlora.results.store import read_metrics, read_summary
from fedlora.studies.kept import has_predictions, has_step_predictions
from fedlora.studies.paired import (
    FEW_SEEDS,
    PairedDifference,
    compare_at_step,
    compare_choices,
    compare_local,
    compare_runs,
    holm,
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
    (:func:`_at_step`); a table of its own, with its own Holm family. Where no cell kept
    predictions at that step (cells kept before every evaluation's were), nothing is shown.

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
        contrasts_found = _contrasts(arms, contrasts)
        family = [d for row in paired for d in row if d is not None]
        family += [d for *_, acc, loss in contrasts_found for d in (acc, loss) if d is not None]
        verdicts = dict(zip(map(id, family), holm(family), strict=True))
        rows = [
            m + [_cell(d, verdicts) for d in row] for m, row in zip(measured, paired, strict=True)
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
        lines += _contrast_lines(contrasts_found, verdicts)
        if family:
            lines += [_multiplicity_note(len(family)), ""]
        for step in paired_steps:
            lines += _at_step(arms, present, contrasts, step)
    return "\n".join(lines)


_Contrast = tuple[str, str, str, PairedDifference | None, PairedDifference]


def _contrast_lines(found: Sequence[_Contrast], verdicts: dict[int, bool]) -> list[str]:
    """A table of paired contrasts (arm, against, seeds, Δ acc, Δ loss); none: no lines."""
    if not found:
        return []
    return [
        "| arm | against | seeds | Δ acc [95% CI] | Δ loss [95% CI] |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {arm} | {against} | {seeds} | {_cell(acc, verdicts)} | {_cell(loss, verdicts)} |"
            for arm, against, seeds, acc, loss in found
        ),
        "",
    ]


def _at_step(
    arms: dict[str, list[Cell]],
    baselines: Sequence[str],
    contrasts: Sequence[tuple[str, str]],
    step: int,
) -> list[str]:
    """The paired accuracy and loss differences of the global models evaluated at ``step``:
    each arm against each of the ``baselines``, then the ``contrasts`` (arm, reference), where
    both arms kept predictions at that step; Holm over this section's intervals."""
    pairs = [(arm, b) for b in baselines for arm in arms if arm != b]
    found = _contrasts(arms, pairs, step)
    if not found:
        return []
    family = [d for *_, acc, loss in found for d in (acc, loss) if d is not None]
    verdicts = dict(zip(map(id, family), holm(family), strict=True))
    compared = {name for arm, against, *_ in found for name in (arm, against)}
    rounds = {
        row["round"]
        for cell in (c for name in compared for c in arms[name])
        for row in read_metrics(cell.folder)
        if row["step"] == step and "round" in row
    }
    at = f"step {step}" + (f" (round {int(rounds.pop())})" if len(rounds) == 1 else "")
    return [
        f"At {at}: the global models evaluated then, paired seed by seed and example by example.",
        "",
        *_contrast_lines(found, verdicts),
        _multiplicity_note(len(family)),
        "",
    ]


def _cell(difference: PairedDifference | None, verdicts: dict[int, bool]) -> str:
    """A paired difference as shown, with its Holm verdict (by object id)."""
    return "—" if difference is None else difference.shown(verdicts[id(difference)])


def _multiplicity_note(count: int) -> str:
    """What a star means under a table of ``count`` paired intervals."""
    return (
        "Intervals: 95 % bootstrap of seeds and examples, crossed where every seed scores"
        " the same examples, else of the seeds' own differences (a seeded eval subset per"
        " seed; the clients' own splits). * : the difference holds with the family-wise"
        f" error rate held at 5 % over this table's {count} intervals (Holm). Under"
        f" {FEW_SEEDS} seeds no star: each seed's difference, and how many were positive,"
        " stand beside the interval."
    )


def _seed_pairs(arms: dict[str, list[Cell]], reference: str, arm: str) -> list[tuple[Cell, Cell]]:
    """(reference cell, arm cell) for every seed both finished."""
    by_seed = {c.seed: c for c in arms.get(reference, [])}
    return [(by_seed[c.seed], c) for c in arms.get(arm, []) if c.seed in by_seed]


def _compared_predictions(
    pairs: Sequence[tuple[Cell, Cell]], step: int | None = None
) -> dict[str, PairedDifference]:
    """:func:`compare_runs` of the (reference, arm) cell pairs, or at ``step``
    :func:`compare_at_step`; empty when there are none or a cell has no such predictions."""
    folders = [c.folder for pair in pairs for c in pair]
    reference, arm = [a.folder for a, _ in pairs], [b.folder for _, b in pairs]
    if step is not None:
        if not pairs or not all(has_step_predictions(f, step) for f in folders):
            return {}
        return compare_at_step(reference, arm, step)
    if not pairs or not all(has_predictions(f) for f in folders):
        return {}
    return compare_runs(reference, arm) | compare_choices(reference, arm)


def _contrasts(
    arms: dict[str, list[Cell]], contrasts: Sequence[tuple[str, str]], step: int | None = None
) -> list[_Contrast]:
    """Each contrast (arm, reference) both arms finished with predictions (at ``step``, if
    given, else the final ones): the seeds, and the paired accuracy (None for a task without)
    and loss differences."""
    found = []
    for arm, reference in contrasts:
        pairs = _seed_pairs(arms, reference, arm)
        differences = _compared_predictions(pairs, step)
        if differences:
            seeds = ", ".join(str(b.seed) for _, b in pairs)
            accuracy = differences.get("accuracy")
            found.append((arm, reference, seeds, accuracy, differences["loss"]))
    return found


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
        pairs = _seed_pairs(arms, baseline, arm)
        differences: dict[str, PairedDifference] = {}
        if arm != baseline and pairs:
            differences |= _compared_predictions(pairs)
            seeds = [b.seed for _, b in pairs]
            mine = [summaries[arm][seed] for seed in seeds]
            theirs = [summaries[baseline][seed] for seed in seeds]
            theirs_local = [s.local for s in theirs if s.local is not None]
            mine_local = [s.local for s in mine if s.local is not None]
            if len(theirs_local) == len(mine_local) == len(seeds):
                differences |= compare_local(theirs_local, mine_local)
        cells += [differences.get(key) for _, key in _PAIRED]
    return cells
