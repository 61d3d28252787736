"""A study's results across seeds: a markdown table per task and accuracy-vs-round curves."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedlora.results.store import read_metrics, read_summary
from fedlora.studies.sweep import Cell


def _spread(values: Sequence[float], digits: int = 3) -> str:
    """mean ± sample standard deviation (just the value for one seed)."""
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _by_task_arm(cells: Sequence[Cell]) -> dict[str, dict[str, list[Cell]]]:
    grouped: dict[str, dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        if cell.done:
            grouped[cell.task][cell.arm].append(cell)
    return grouped


def study_table(cells: Sequence[Cell]) -> str:
    """One markdown table per task: final and best dev metrics, rounds to target, traffic."""
    lines: list[str] = []
    for task, arms in _by_task_arm(cells).items():
        lines += [
            f"### {task.upper()}",
            "",
            "| arm | seeds | final acc | final F1 | best acc | rounds to target | MB sent |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for arm, done in arms.items():
            summaries: list[dict[str, Any]] = [read_summary(c.folder) for c in done]
            final_f1 = [s["final"]["f1"] for s in summaries if "f1" in s["final"]]
            targets = [s.get("target") or {} for s in summaries]
            reached = [t["round"] for t in targets if t.get("reached")]
            to_target = f"{_spread(reached, 1)} ({len(reached)}/{len(done)} reached)"
            megabytes = [(s["bytes_down"] + s["bytes_up"]) / 1e6 for s in summaries]
            lines.append(
                f"| {arm} | {len(done)} | {_spread([s['final']['accuracy'] for s in summaries])}"
                f" | {_spread(final_f1)} | {_spread([s['best']['accuracy'] for s in summaries])}"
                f" | {to_target if targets[0] else '—'} | {_spread(megabytes, 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_study(cells: Sequence[Cell], path: Path, metric: str = "accuracy") -> None:
    """Per task, the seed-mean of ``metric`` against the round, one line per arm."""
    grouped = _by_task_arm(cells)
    figure, axes = plt.subplots(
        1, max(1, len(grouped)), figsize=(6.5 * max(1, len(grouped)), 4.5), squeeze=False
    )
    for ax, (task, arms) in zip(axes[0], grouped.items(), strict=False):
        for arm, done in arms.items():
            runs = [read_metrics(c.folder) for c in done]
            rounds = sorted({row["round"] for rows in runs for row in rows})
            means = [
                statistics.fmean(row[metric] for rows in runs for row in rows if row["round"] == r)
                for r in rounds
            ]
            ax.plot(rounds, means, marker="o", markersize=3, label=arm)
        ax.set_title(f"{task.upper()} (mean over seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
