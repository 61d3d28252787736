"""A study's figures across seeds: curves per arm, each arm's paired difference against the
baselines (intervals and seeds), and the global model against the clients' local models
(bars)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedlora.results.run_summary import LocalSummary, RunSummary, Spread
from fedlora.results.store import read_metrics, read_summary
from fedlora.studies.paired import PairedDifference
from fedlora.studies.sections import compared_predictions, seed_pairs
from fedlora.studies.sweep import Cell, done_by_group_arm


def plot_study(cells: Sequence[Cell], path: Path, metric: str = "accuracy") -> None:
    """Per task (and setting), the seed-mean of ``metric`` on the eval split against the round
    and against virtual time, one line per arm."""
    grouped = done_by_group_arm(cells)
    rows = max(1, len(grouped))
    figure, axes = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False)
    for ax_row, (group, arms) in zip(axes, grouped.items(), strict=False):
        split = next(iter(arms.values()))[0].config.eval.split  # a task's arms share it
        for arm, done in arms.items():
            runs = [read_metrics(c.folder) for c in done]
            for ax, x_key in zip(ax_row, ("round", "virtual_time_s"), strict=True):
                ax.plot(*_seed_mean(runs, x_key, metric), marker="o", markersize=3, label=arm)
        for ax, x_label in zip(ax_row, ("round", "virtual time (s)"), strict=True):
            ax.set_title(f"{group} (mean over seeds)")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"{split} {metric}")
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_paired(
    cells: Sequence[Cell], baselines: Sequence[str], path: Path, metric: str = "accuracy"
) -> bool:
    """Per task (and setting) and baseline, each arm's paired difference against it in the
    final ``metric`` and, where scored, the multiple-choice accuracy: the estimate with its 95 %
    interval, and each seed's own difference as a dot, so that what the table's columns say
    reads at a glance. False, and no file, where no arm has predictions to pair."""
    panels = []
    for group, arms in done_by_group_arm(cells).items():
        for baseline in (b for b in baselines if b in arms):
            found = {
                arm: compared_predictions(seed_pairs(arms, baseline, arm))
                for arm in arms
                if arm != baseline
            }
            found = {arm: differences for arm, differences in found.items() if differences}
            for key in (metric, "mc accuracy"):
                shown = {arm: d[key] for arm, d in found.items() if key in d}
                if shown:
                    panels.append((f"{group}: Δ {key} vs {baseline}", shown))
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, shown) in zip(axes[0], panels, strict=True):
        _forest(ax, shown)
        ax.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _forest(ax: plt.Axes, differences: dict[str, PairedDifference]) -> None:
    """One row per arm, top down: its interval as a bar, its estimate, its seeds as dots."""
    rows = np.arange(len(differences))[::-1]
    for row, d in zip(rows, differences.values(), strict=True):
        ax.plot([d.low, d.high], [row, row], color="tab:blue", linewidth=2)
        ax.plot([d.estimate], [row], "o", color="tab:blue")
        ax.plot(d.per_seed, [row] * len(d.per_seed), "x", color="black", markersize=5)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(rows, list(differences))
    ax.set_xlabel("arm − baseline (95 % interval; x: seeds)")
    ax.grid(alpha=0.3, axis="x")


def study_metric(cells: Sequence[Cell]) -> str:
    """The metric a study's curves and bars show: accuracy, or the loss for a task without
    one (an instruction task)."""
    done = next((c for c in cells if c.done), None)
    if done is None or "accuracy" in read_summary(done.folder).final.metrics:
        return "accuracy"
    return "loss"


def _local_mean(summary: RunSummary, series: Callable[[LocalSummary], Spread | None]) -> float:
    """The mean over clients of one series of the ``local`` section; NaN where not scored."""
    spread = None if summary.local is None else series(summary.local)
    return math.nan if spread is None else spread.mean


_LOCAL_BARS: tuple[tuple[str, Callable[[RunSummary, str], float]], ...] = (
    ("global model, dev", lambda s, metric: s.final.metrics[metric]),
    ("global model, own split", lambda s, _: _local_mean(s, lambda local: local.global_own)),
    ("client models, own split", lambda s, _: _local_mean(s, lambda local: local.own)),
    ("client models, dev", lambda s, _: _local_mean(s, lambda local: local.dev)),
)


def local_bars(
    arms: dict[str, list[RunSummary]], metric: str = "accuracy"
) -> dict[str, list[list[float]]]:
    """Each bar series' values of ``metric`` (the task's first: a client's local scores are in
    it), per arm and seed; a series no cell scored (client models on the dev set when
    ``eval.local_dev`` is off, the global model on the clients' own splits in summaries
    written before it was scored) is left out rather than drawn as NaN."""
    bars = {
        label: [[value(s, metric) for s in runs] for runs in arms.values()]
        for label, value in _LOCAL_BARS
    }
    return {
        label: values
        for label, values in bars.items()
        if any(math.isfinite(x) for seeds in values for x in seeds)
    }


def plot_local(cells: Sequence[Cell], path: Path, metric: str = "accuracy") -> bool:
    """Per task (and setting), bars per arm: the final global model on the dev set against
    the clients' own trained models on their local test splits and on the dev set, and the
    final global model on those same local splits (mean over clients; error bars: sd over
    seeds, none for one seed). False, and no file, when no cell has local splits."""
    grouped = {
        group: {arm: [read_summary(c.folder) for c in done] for arm, done in arms.items()}
        for group, arms in done_by_group_arm(cells).items()
    }
    grouped = {
        group: {arm: runs for arm, runs in arms.items() if all(s.local is not None for s in runs)}
        for group, arms in grouped.items()
    }
    grouped = {group: arms for group, arms in grouped.items() if arms}
    if not grouped:
        return False
    figure, axes = plt.subplots(len(grouped), 1, figsize=(11, 4 * len(grouped)), squeeze=False)
    for ax, (group, arms) in zip(axes[:, 0], grouped.items(), strict=True):
        positions = np.arange(len(arms))
        bars = local_bars(arms, metric)
        width = 0.8 / len(bars)
        for i, (label, values) in enumerate(bars.items()):
            ax.bar(
                positions + (i - (len(bars) - 1) / 2) * width,
                [float(np.mean(v)) for v in values],
                width,
                yerr=[float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for v in values],
                label=label,
                capsize=3,
            )
        ax.set_xticks(positions, list(arms))
        if metric == "accuracy":
            ax.set_ylim(0.3, 1.0)
        ax.set_ylabel(metric)
        ax.set_title(f"{group}: global against local (mean over seeds)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _seed_mean(
    runs: Sequence[Sequence[dict[str, float]]], x_key: str, metric: str
) -> tuple[list[float], list[float]]:
    """Mean of ``metric`` over the seeds at each evaluation index (seeds evaluate at the same
    rounds; in virtual time each seed's own times are averaged too)."""
    length = min(len(rows) for rows in runs)
    xs = [statistics.fmean(rows[i][x_key] for rows in runs) for i in range(length)]
    ys = [statistics.fmean(rows[i][metric] for rows in runs) for i in range(length)]
    return xs, ys
