"""The HLoRA mechanism figure and table: what each aggregator's merge gets wrong on the same
real client uploads, read from the merge diagnostics of finished runs (no accuracy noise).

    python docs/results/hlora/mechanism.py results/studies/hlora-mechanism docs/results/hlora

Every run folder under the study (``<task>/<setting>/<arm>/seed<k>``) is one panel: the merge
error of each aggregator (the run's own and its ``eval.shadow`` ones, on the same uploads)
against the merge, and a table of their means with the client spread and the share of the
global's energy above each client rank.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedlora.results.diagnostics_plot import merge_diagnostics
from fedlora.results.store import SUMMARY_FILE


def finished_runs(root: Path) -> dict[str, Path]:
    """``setting/arm/seed`` → run folder, for every finished run under the study root."""
    return {
        str(summary.parent.relative_to(root).as_posix()).split("/", 1)[1]: summary.parent
        for summary in sorted(root.glob(f"*/**/{SUMMARY_FILE}"))
    }


def main(root: Path, out: Path) -> None:
    runs = {name: merge_diagnostics(folder) for name, folder in finished_runs(root).items()}
    runs = {name: merges for name, merges in runs.items() if merges}
    width = 4.2 * len(runs)
    figure, axes = plt.subplots(1, len(runs), figsize=(width, 3.6), squeeze=False, sharey=True)
    rows = []
    for ax, (name, merges) in zip(axes[0], runs.items(), strict=True):
        merge_numbers = range(1, len(merges) + 1)
        errors = {
            aggregator: [m["shadow"][aggregator] for m in merges]
            for aggregator in merges[0]["shadow"]
        }
        for aggregator, values in errors.items():
            ax.plot(merge_numbers, values, marker="o", markersize=3, label=aggregator)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("merge")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        energy = {
            r: statistics.mean(m["energy_above"][r] for m in merges)
            for r in merges[0]["energy_above"]
        }
        rows.append(
            f"| {name} | {len(merges)} | "
            + " | ".join(f"{statistics.mean(v):.3f}" for v in errors.values())
            + f" | {statistics.mean(m['spread'] for m in merges):.2f} | "
            + " | ".join(f"{energy[r]:.4f}" for r in energy)
            + " |"
        )
    axes[0][0].set_ylabel("‖G − Σ w ΔW‖ / ‖Σ w ΔW‖")
    axes[0][0].legend(fontsize=8)
    figure.subplots_adjust(left=0.8 / width, right=0.99, bottom=0.16, top=0.88, wspace=0.1)
    figure.savefig(out / "mechanism.png", dpi=120)
    first = next(iter(runs.values()))[0]
    header = (
        "| run | merges | "
        + " | ".join(f"{a} error" for a in first["shadow"])
        + " | client spread | "
        + " | ".join(f"energy above r={r}" for r in first["energy_above"])
        + " |"
    )
    (out / "mechanism.md").write_text(
        "\n".join([header, "|" + " --- |" * (header.count("|") - 1), *rows]) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
