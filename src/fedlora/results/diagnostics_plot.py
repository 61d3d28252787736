"""Per-merge diagnostics of finished runs against server step: merge error and client spread.

Read from each run's ``merge`` events (or a study's kept copy of them), so a run folder is
all it needs; runs written before merges carried diagnostics are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from fedlora.results.merges import merge_diagnostics

PANELS = (("error", "merge error ‖G − Σ w ΔW‖ / ‖Σ w ΔW‖"), ("spread", "client spread"))


def write_diagnostics_plot(folders: Sequence[Path], path: Path) -> bool:
    """Error (shadow aggregators dashed) and spread per merge; False, and no file, when no
    run has diagnostics."""
    runs = {folder.name: merge_diagnostics(folder) for folder in folders}
    runs = {name: merges for name, merges in runs.items() if merges}
    if not runs:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for name, merges in runs.items():
            steps = [m["step"] for m in merges]
            (line,) = ax.plot(steps, [m[key] for m in merges], marker="o", markersize=3, label=name)
            if key != "error":
                continue
            for shadow in merges[-1].get("shadow", {}):
                values = [m["shadow"][shadow] for m in merges]
                ax.plot(steps, values, linestyle="--", color=line.get_color(), alpha=0.6,
                        label=f"{name} · {shadow}")  # fmt: skip
        ax.set_xlabel("server step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
