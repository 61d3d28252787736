"""Compare finished runs: a table of headline numbers and overlaid learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from fedlora.results.plots import plot_curves
from fedlora.results.store import read_metrics, read_summary

_CURVE_METRICS = ("accuracy", "f1", "loss")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f}"


def comparison_table(folders: list[Path]) -> Table:
    table = Table(title="fedlora runs")
    for column in (
        "run", "policy", "aggregator", "final acc", "final f1", "best acc", "steps", "rounds",
        "virtual s", "wall s", "MB down", "MB up", "to target (s)",
    ):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("run", "policy", "aggregator") else "right"
        )
    for folder in folders:
        s = read_summary(folder)
        target = s.get("target") or {}
        table.add_row(
            folder.name,
            s["policy"],
            s["aggregator"],
            _fmt(s["final"].get("accuracy")),
            _fmt(s["final"].get("f1")),
            _fmt(s["best"].get("accuracy")),
            str(s["server_steps"]),
            str(s["rounds"]),
            _fmt(s["virtual_time_s"], 1),
            _fmt(s["wall_time_s"], 1),
            _megabytes(s["bytes_down"]),
            _megabytes(s["bytes_up"]),
            _fmt(target.get("virtual_time_s"), 1) if target.get("reached") else "—",
        )
    return table


def write_comparison_plot(folders: list[Path], path: Path) -> list[str]:
    """Overlay every run's curves; returns the metrics plotted."""
    runs = {folder.name: read_metrics(folder) for folder in folders}
    present = set.intersection(*(set(rows[0]) for rows in runs.values()))
    metrics = [m for m in _CURVE_METRICS if m in present]
    plot_curves(runs, metrics, path)
    return metrics
