"""Paired differences at an earlier evaluation: every evaluation's predictions are kept with a
study's cells (gzip-compressed, the final one once), and the table pairs the arms at the steps
a study names, exactly as a hand computation on a tiny pair of runs gives."""

from __future__ import annotations

import gzip
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeLearner, config, simulate

from fedlora.data.tasks import generic_task
from fedlora.predictions import Predictions
from fedlora.results.store import write_config, write_run
from fedlora.results.summary import summarize
from fedlora.studies.kept import keep_cells, read_step_predictions, table_cells
from fedlora.studies.paired import compare_at_step, paired_difference
from fedlora.studies.sweep import Cell, StudyConfig
from fedlora.studies.table import study_table

LABELS = [0, 1, 0, 1]
# (correct, loss) per example at step 2, by arm and seed: the arm fixes two errors in seed 0
# and one in seed 1, and lowers the loss by 0.3125 and 0.125 on average
AT_STEP_2 = {
    ("ref", 0): ([1, 0, 0, 0], [0.5, 1.0, 1.5, 2.0]),
    ("arm", 0): ([1, 1, 1, 0], [0.25, 0.5, 1.0, 2.0]),
    ("ref", 1): ([0, 0, 1, 1], [1.0, 1.0, 1.0, 1.0]),
    ("arm", 1): ([1, 0, 1, 1], [0.5, 1.0, 1.0, 1.0]),
}
FINAL = ([1, 1, 0, 0], [0.5, 0.5, 1.0, 1.0])  # both arms, every seed: no final difference


def _predictions(correct: list[int], losses: list[float]) -> bytes:
    """A classifier's predictions.csv, written out by hand."""
    rows = ["id,label,predicted,p_0,p_1,loss"]
    for i, (label, right, loss) in enumerate(zip(LABELS, correct, losses, strict=True)):
        predicted = label if right else 1 - label
        p_1 = 0.75 if predicted else 0.25
        rows.append(f"{i},{label},{predicted},{1 - p_1},{p_1},{loss!r}")
    return ("\n".join(rows) + "\n").encode()


def _runs(root: Path) -> list[Cell]:
    """Two arms × two seeds of a simulated FedAvg run (4 rounds, evaluated after each):
    predictions at steps 0, 2 and 4 (the final one, as predictions.csv too)."""
    cfg = config(server={"per_round": 2, "rounds": 4})
    outcome, _ = simulate(cfg, FakeLearner([5] * 4))
    summary = summarize(cfg, outcome, generic_task("t", ("a", "b"), pair=True))
    cells = []
    for seed in (0, 1):
        for arm in ("ref", "arm"):
            folder = root / "t" / arm / f"seed{seed}"
            (folder / "predictions").mkdir(parents=True)
            write_config(folder, cfg)
            write_run(folder, outcome, summary)
            final = _predictions(*FINAL)
            (folder / "predictions.csv").write_bytes(final)
            (folder / "predictions" / "step_000000.csv").write_bytes(_predictions(*FINAL))
            (folder / "predictions" / "step_000002.csv").write_bytes(
                _predictions(*AT_STEP_2[arm, seed])
            )
            (folder / "predictions" / "step_000004.csv").write_bytes(final)
            cells.append(Cell("t", None, arm, seed, cfg, folder))
    return cells


def _fresh_clone(cells: list[Cell], root: Path, docs: Path) -> list[Cell]:
    """The cells as a clone with no run folders finds them: kept in ``docs``."""
    elsewhere = root.with_name("no-runs")
    planned = [replace(c, folder=elsewhere / c.folder.relative_to(root)) for c in cells]
    return table_cells(planned, elsewhere, docs)


def test_the_early_paired_difference_is_the_hand_computed_one(tmp_path: Path) -> None:
    cells = _runs(tmp_path / "runs")
    table = study_table(cells, baselines=["ref"], paired_steps=[2])
    lines = table.splitlines()
    start = lines.index("At step 2 (round 2): the global models evaluated then, paired seed by"
                        " seed and example by example.")  # fmt: skip
    row = lines[start + 4]
    reference = [AT_STEP_2["ref", s] for s in (0, 1)]
    arm = [AT_STEP_2["arm", s] for s in (0, 1)]
    accuracy = paired_difference([c for c, _ in reference], [c for c, _ in arm])
    loss = paired_difference([v for _, v in reference], [v for _, v in arm])
    assert accuracy.estimate == 0.375 and accuracy.per_seed == (0.5, 0.25)  # 2/4 and 1/4 fixed
    assert loss.estimate == -0.21875 and loss.per_seed == (-0.3125, -0.125)
    assert row == f"| arm | ref | 0, 1 | {accuracy.shown(False)} | {loss.shown(False)} |"
    assert "+0.375 [" in row and "(seeds +0.500, +0.250: 2/2 > 0)" in row
    assert lines[start + 6].endswith("over this table's 2 intervals (Holm). Under 5 seeds no"
                                     " star: each seed's difference, and how many were positive,"
                                     " stand beside the interval.")  # fmt: skip
    # the final models are the same: the main table's difference is none
    assert "| +0.000 [+0.000, +0.000] (seeds +0.000, +0.000: 0/2 > 0) |" in table
    assert table.startswith(study_table(cells, baselines=["ref"]))  # the section comes after
    # a contrast is paired at the step too, in the same Holm family
    contrasted = study_table(cells, ["ref"], [("ref", "arm")], paired_steps=[2]).splitlines()
    at_2 = contrasted[contrasted.index(lines[start]) :]
    assert at_2[5].startswith("| ref | arm | 0, 1 | -0.375 [")
    assert "(seeds -0.500, -0.250: 0/2 > 0)" in at_2[5]
    assert "over this table's 4 intervals (Holm)" in at_2[7]


def test_kept_cells_round_trip_every_evaluation_and_rewrite_the_table(tmp_path: Path) -> None:
    root, docs = tmp_path / "runs", tmp_path / "docs"
    cells = _runs(root)
    table = study_table(cells, baselines=["ref"], paired_steps=[0, 2, 4])
    keep_cells(cells, root, docs)
    kept = docs / "cells" / "t" / "arm" / "seed1"
    run = root / "t" / "arm" / "seed1"
    packed = {f"predictions/step_{step:06d}.csv.gz" for step in (0, 2)}  # not 4: the final one
    names = {"config.yaml", "metrics.csv", "predictions.csv.gz", "summary.json", *packed}
    assert {str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()} == names
    for name in packed:
        plain = (run / name).with_suffix("")
        assert gzip.decompress((kept / name).read_bytes()) == plain.read_bytes()
    for step in (0, 2, 4):
        unpacked, written = read_step_predictions(kept, step), read_step_predictions(run, step)
        assert all(
            np.array_equal(getattr(unpacked, f.name), getattr(written, f.name))
            for f in fields(Predictions)
        )

    # a fresh clone: the kept cells alone give the same table, early sections included
    fresh = _fresh_clone(cells, root, docs)
    assert all(c.kept and c.done for c in fresh)
    assert study_table(fresh, baselines=["ref"], paired_steps=[0, 2, 4]) == table
    assert (
        compare_at_step([c.folder for c in fresh[:1]], [c.folder for c in fresh[1:2]], 4)[
            "accuracy"
        ].estimate
        == 0.0
    )

    # an evaluation the run no longer has (rerun with fewer) leaves the kept cell too
    (run / "predictions" / "step_000000.csv").unlink()
    keep_cells(cells, root, docs)
    assert not (kept / "predictions" / "step_000000.csv.gz").exists()
    assert (kept / "predictions" / "step_000002.csv.gz").is_file()
    # a cell no longer covered: its step files and folders go, too
    keep_cells(cells[:2], root, docs)
    assert not (docs / "cells" / "t" / "arm" / "seed1").exists()


def test_cells_kept_before_the_step_files_pair_the_final_models_only(tmp_path: Path) -> None:
    """Kept cells without per-step files (as committed before they were kept): no early
    section and the very table of a study that asks for none; the final step still pairs."""
    root, docs = tmp_path / "runs", tmp_path / "docs"
    cells = _runs(root)
    keep_cells(cells, root, docs)
    for folder in (docs / "cells").rglob("predictions"):
        for packed in folder.iterdir():
            packed.unlink()
        folder.rmdir()
    old = _fresh_clone(cells, root, docs)
    plain = study_table(old, baselines=["ref"])
    assert study_table(old, baselines=["ref"], paired_steps=[2]) == plain
    assert "At step" not in plain
    assert "At step 4 (round 4)" in study_table(old, baselines=["ref"], paired_steps=[4])


def test_a_study_names_the_steps_to_pair_at_and_something_to_pair_them_with() -> None:
    arms = {"ref": {}, "arm": {}}
    study = StudyConfig(name="s", base=Path("b"), arms=arms, baselines=["ref"], paired_steps=[2])
    assert study.paired_steps == [2]
    assert StudyConfig(name="s", base=Path("b"), arms=arms).paired_steps == []
    with pytest.raises(ValueError, match="paired_steps: no baselines or contrasts"):
        StudyConfig(name="s", base=Path("b"), arms=arms, paired_steps=[2])
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        StudyConfig(name="s", base=Path("b"), arms=arms, baselines=["ref"], paired_steps=[-1])


def test_the_predictions_at_a_step_no_cell_kept_are_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    cells = _runs(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"step_000003\.csv: not a readable"):
        read_step_predictions(cells[0].folder, 3)
    assert np.array_equal(read_step_predictions(cells[0].folder, 2).losses, [0.5, 1.0, 1.5, 2.0])
