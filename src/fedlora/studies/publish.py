"""A study's result as a reader finds it: ``table.md``, its plots and the kept cells they are
computed from, written to the study's docs folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedlora.results.errors import RunFolderError
from fedlora.studies.figures import plot_local, plot_paired, plot_study, study_metric
from fedlora.studies.kept import CELLS_DIR, keep_cells, table_cells
from fedlora.studies.sweep import Cell, StudyConfig
from fedlora.studies.table import study_table


def narrowed(
    planned: Sequence[Cell], arms: str | None, seeds: str | None, tasks: str | None
) -> list[Cell]:
    """The planned cells that ``--arms``, ``--seeds`` and ``--tasks`` (comma lists) keep."""
    return [
        c
        for c in planned
        if (arms is None or c.arm in arms.split(","))
        and (seeds is None or str(c.seed) in seeds.split(","))
        and (tasks is None or c.task in tasks.split(","))
    ]


def publish(
    spec: StudyConfig,
    planned: Sequence[Cell],
    root: Path,
    docs: Path,
    narrowing: Sequence[str],
    kept: Path | None = None,
) -> tuple[str, list[str]]:
    """Write the table and plots of every finished cell of ``planned`` (run under ``root``, or
    kept in ``kept``, by default ``docs``) into ``docs`` and keep their files there; returns
    the table and the files written. The table says first when it covers only some cells, or
    a narrowed run (``narrowing``: its flags)."""
    found = table_cells(planned, root, kept or docs)
    finished = sum(cell.done for cell in found)
    if not finished:
        raise RunFolderError(
            f"no finished cell of study {spec.name!r}, neither in {root} nor kept in"
            f" {(kept or docs) / CELLS_DIR}: no table written"
        )
    table = study_table(found, spec.baselines, spec.contrasts, spec.paired_steps)
    docs.mkdir(parents=True, exist_ok=True)
    metric = study_metric(found)
    plot_study(found, docs / f"{metric}.png", metric)
    written = ["table.md", f"{metric}.png"]
    if plot_paired(found, spec.baselines, docs / "paired.png", metric):
        written.append("paired.png")
    if plot_local(found, docs / "local.png", metric):
        written.append("local.png")
    keep_cells(found, root, docs)
    if finished < len(planned):
        covers = f"{finished} of the study's {len(planned)} cells finished; this covers those."
        table = f"{covers}\n\n{table}"
    if narrowing:
        table = f"Not the committed study: run with {' '.join(narrowing)}.\n\n{table}"
    (docs / "table.md").write_text(table + "\n", encoding="utf-8")
    return table, written
