"""Learning curves: a metric against virtual time and against server steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

Rows = Sequence[Mapping[str, float]]


def plot_curves(runs: Mapping[str, Rows], metrics: Sequence[str], path: Path) -> None:
    """One row of panels per metric: vs virtual time (left) and vs server step (right)."""
    figure, axes = plt.subplots(
        len(metrics), 2, figsize=(11, 3.6 * len(metrics)), squeeze=False, constrained_layout=True
    )
    for row, metric in enumerate(metrics):
        for column, (x_key, x_label) in enumerate(
            [("virtual_time_s", "virtual time (s)"), ("step", "server step")]
        ):
            ax = axes[row][column]
            for label, rows in runs.items():
                points = [(r[x_key], r[metric]) for r in rows if metric in r]
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.savefig(path, dpi=120)
    plt.close(figure)
