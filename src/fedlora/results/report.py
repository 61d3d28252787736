"""Compare finished runs: a table of headline numbers and overlaid learning curves.

A run folder whose files were damaged (cut short, edited, from another tool) is refused with
the file and what is wrong with it, before anything is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from fedlora.results.plots import plot_curves, run_title
from fedlora.results.run_summary import RunSummary, TargetMeasure, clock_seconds
from fedlora.results.store import read_metrics, read_summary


@dataclass(frozen=True)
class Run:
    """A finished run as the report reads it: its folder, summary and metrics rows."""

    folder: Path
    summary: RunSummary
    metrics: list[dict[str, float]]


def read_run(folder: Path) -> Run:
    """The run in ``folder``; a damaged summary.json or metrics.csv is a RunFolderError."""
    return Run(folder, read_summary(folder), read_metrics(folder))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f}"


def time_to_target(summary: RunSummary, measure: TargetMeasure = None) -> float | None:
    """Seconds on the run's clock (virtual; a deployment's wall) until the global model first
    reached ``eval.target`` (None: never, or not measured): its first crossing, or by
    ``measure``, ``smoothed`` (the running mean) or ``on_loss``."""
    crossing = None if summary.target is None else summary.target.by(measure)
    return None if crossing is None or crossing.at is None else clock_seconds(crossing.at)


def speedup(baseline: RunSummary, run: RunSummary, measure: TargetMeasure = None) -> float | None:
    """How many times sooner ``run`` reached the target than ``baseline`` (None: either never),
    by :func:`time_to_target`'s ``measure``."""
    base, this = time_to_target(baseline, measure), time_to_target(run, measure)
    if base is None or this is None or this == 0:
        return None
    return base / this


def comparison_table(runs: list[Run]) -> Table:
    """One row per run; speedups are time-to-target ratios against the first run."""
    table = Table(title=f"fedlora runs (speedup: time to target against {runs[0].folder.name})")
    for column in (
        "run", "policy", "aggregator", "final acc", "final f1", "best acc", "final loss",
        "loss from start [95% CI]", "MC acc start → final", "steps", "rounds",
        "virtual s", "wall s", "MB down", "MB up", "to target (s)", "speedup",
    ):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("run", "policy", "aggregator") else "right"
        )
    baseline = runs[0].summary
    for run in runs:
        s = run.summary
        ratio = speedup(baseline, s)
        final, best = s.final.metrics, s.best.metrics  # the task's: accuracy and F1, or not
        table.add_row(
            run.folder.name,
            s.policy,
            s.aggregator,
            _fmt(final.get("accuracy")),
            _fmt(final.get("f1")),
            _fmt(best.get("accuracy")),
            _fmt(final.get("loss")),
            _loss_change(s),
            _choices_change(s),
            str(s.server_steps),
            str(s.rounds),
            _fmt(s.virtual_time_s, 1),  # none under a deployment's wall clock
            _fmt(s.wall_time_s, 1),
            _megabytes(s.bytes_down),
            _megabytes(s.bytes_up),
            _fmt(time_to_target(s), 1),
            "—" if ratio is None else f"{ratio:.2f}×",
        )
    return table


def _loss_change(summary: RunSummary) -> str:
    """The eval loss's paired change from the base model, where the run measured it."""
    if summary.from_start is None:
        return "—"
    change = summary.from_start.change["loss"]
    return f"{change.mean:+.4f} [{change.low:+.4f}, {change.high:+.4f}]"


def _choices_change(summary: RunSummary) -> str:
    """Multiple-choice accuracy of the base model and the final one, where scored."""
    block = summary.choices
    if block is None:
        return "—"
    start = "—" if block.start is None else _fmt(block.start.mc_accuracy)
    return f"{start} → {_fmt(block.final.mc_accuracy)}"


def write_comparison_plot(runs: list[Run], path: Path) -> None:
    """Overlay every run's curves; the legend names each run and its policy × aggregator."""
    summaries = [run.summary for run in runs]
    curves = {
        f"{run.folder.name} ({run.summary.policy} × {run.summary.aggregator})": run.metrics
        for run in runs
    }
    tasks = ", ".join(sorted({s.task for s in summaries}))
    title = run_title(summaries[0]) if len(runs) == 1 else f"{len(runs)} runs on {tasks}"
    plot_curves(curves, summaries, path, title)
