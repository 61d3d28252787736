"""Learning curves: every metric (loss beside accuracy) against the run's time (virtual, or a
deployment's wall) and server steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from fedlora.results.run_summary import RunSummary

Rows = Sequence[Mapping[str, float]]

_NOT_METRICS = {"step", "round", "virtual_time_s", "wall_time_s"}


def run_title(summary: RunSummary) -> str:
    """Name, policy, aggregator and task of a run, from its summary."""
    return f"{summary.name}: {summary.policy} × {summary.aggregator} on {summary.task}"


def curve_metrics(runs: Mapping[str, Rows]) -> list[str]:
    """The metrics every run recorded, in recorded order with loss last."""
    shared = [k for k in next(iter(runs.values()))[0] if k not in _NOT_METRICS]
    shared = [m for m in shared if all(m in rows[0] for rows in runs.values())]
    return sorted(shared, key=lambda m: m == "loss")


def plot_curves(
    runs: Mapping[str, Rows], summaries: Sequence[RunSummary], path: Path, title: str
) -> None:
    """Write :func:`curve_figure` to ``path``."""
    figure = curve_figure(runs, summaries, title)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def curve_figure(runs: Mapping[str, Rows], summaries: Sequence[RunSummary], title: str) -> Figure:
    """One column per metric, one row per x axis; each run's ``eval.target`` as a dashed line."""
    metrics = curve_metrics(runs)
    targets = {(s.target.metric, s.target.value) for s in summaries if s.target is not None}
    figure, axes = plt.subplots(2, len(metrics), figsize=(4.4 * len(metrics), 7), squeeze=False)
    # Fixed margins: a constrained layout would cost a run about a second per figure.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.92, wspace=0.28, hspace=0.28)
    figure.suptitle(title)
    clock = "virtual" if all("virtual_time_s" in rows[0] for rows in runs.values()) else "wall"
    x_axes = ((f"{clock}_time_s", f"{clock} time (s)"), ("step", "server step"))
    for row, (x_key, x_label) in enumerate(x_axes):
        for column, metric in enumerate(metrics):
            ax = axes[row][column]
            for label, rows in runs.items():
                points = [(r[x_key], r[metric]) for r in rows if metric in r]
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
            for value in sorted(v for m, v in targets if m == metric):
                ax.axhline(value, color="grey", linestyle="--", label=f"target {value:g}")
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return figure
