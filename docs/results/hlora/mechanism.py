"""The HLoRA mechanism figure and table: what each aggregator's merge gets wrong on the same
real client uploads, read from the merge diagnostics of finished runs, or of the cells a
study keeps (no accuracy noise).

    python docs/results/hlora/mechanism.py results/studies/hlora-mechanism docs/results/hlora
    python docs/results/hlora/mechanism.py docs/results/hlora/cells docs/results/hlora cohorts

The run folders under a study root, or its kept ``cells/`` (:mod:`fedlora.results.merges`),
``<task>/[<setting>/]<arm>/seed<k>``, are grouped by all but their seed; each group is one
panel: the merge error of each aggregator (the run's own and its ``eval.shadow`` ones, on the
same uploads) against the merge, the mean over seeds with the seeds' range shaded, and one
table row: the mean over every merge of every seed, with the client spread and the share of
the global's energy above each client rank. Groups whose merges are all exact (one client a
round) are left out. Writes ``<name>.png`` and
``<name>.md`` (name: ``mechanism`` unless given).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fedlora.results.merges import merge_diagnostics
from fedlora.results.store import SUMMARY_FILE

_EXACT = 1e-4  # below this every merge of a group is exact up to float error (one client)


def grouped_runs(root: Path) -> dict[str, list[list[dict[str, Any]]]]:
    """``task/[setting/]arm`` → the merge diagnostics of each finished seed, for every group
    with an inexact merge."""
    groups: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for summary in sorted(root.glob(f"*/**/{SUMMARY_FILE}")):
        merges = merge_diagnostics(summary.parent)
        if merges:
            groups[summary.parent.parent.relative_to(root).as_posix()].append(merges)
    return {
        name: runs
        for name, runs in groups.items()
        if any(e > _EXACT for merges in runs for m in merges for e in m["shadow"].values())
    }


def main(root: Path, out: Path, name: str = "mechanism") -> None:
    groups = grouped_runs(root)
    columns = min(4, len(groups))
    rows_of_panels = -(-len(groups) // columns)
    width = 4.2 * columns
    figure, axes = plt.subplots(
        rows_of_panels, columns, figsize=(width, 3.6 * rows_of_panels), squeeze=False, sharey=True
    )
    ranks = sorted({int(r) for runs in groups.values() for r in runs[0][0]["energy_above"]})
    rows = []
    for ax, (group, runs) in zip(axes.flat, groups.items(), strict=False):
        merges = [m for run in runs for m in run]
        length = min(len(run) for run in runs)
        numbers = range(1, length + 1)
        for aggregator in runs[0][0]["shadow"]:
            per_seed = np.array([[m["shadow"][aggregator] for m in run[:length]] for run in runs])
            (line,) = ax.plot(
                numbers, per_seed.mean(axis=0), marker="o", markersize=3, label=aggregator
            )
            if len(runs) > 1:
                ax.fill_between(
                    numbers, per_seed.min(axis=0), per_seed.max(axis=0), alpha=0.2, lw=0,
                    color=line.get_color(),
                )  # fmt: skip
        seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
        ax.set_title(f"{group}{seeds}", fontsize=9)
        ax.set_xlabel("merge")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        errors = {a: statistics.mean(m["shadow"][a] for m in merges) for a in merges[0]["shadow"]}
        energy = [
            f"{statistics.mean(m['energy_above'][str(r)] for m in merges):.4f}"
            if str(r) in merges[0]["energy_above"]
            else "—"
            for r in ranks
        ]
        rows.append(
            f"| {group} | {len(runs)} | {len(merges)} | "
            + " | ".join(f"{e:.3f}" for e in errors.values())
            + f" | {statistics.mean(m['spread'] for m in merges):.2f} | "
            + " | ".join(energy)
            + " |"
        )
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax_row in axes:
        ax_row[0].set_ylabel("‖G − Σ w ΔW‖ / ‖Σ w ΔW‖")
    axes[0][0].legend(fontsize=8)
    figure.subplots_adjust(
        left=0.8 / width, right=0.99, bottom=0.6 / (3.6 * rows_of_panels) + 0.1 / rows_of_panels,
        top=1 - 0.45 / (3.6 * rows_of_panels), wspace=0.1, hspace=0.35,
    )  # fmt: skip
    figure.savefig(out / f"{name}.png", dpi=120)
    first = next(iter(groups.values()))[0][0]
    header = (
        "| runs | seeds | merges | "
        + " | ".join(f"{a} error" for a in first["shadow"])
        + " | client spread | "
        + " | ".join(f"energy above r={r}" for r in ranks)
        + " |"
    )
    (out / f"{name}.md").write_text(
        "\n".join([header, "|" + " --- |" * (header.count("|") - 1), *rows]) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
