"""A study's table is re-derived from the cell files kept beside it, with no run folder: on a
fresh clone, ``fedlora study NAME --table-only`` rewrites the committed table byte for byte."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.results.errors import RunFolderError
from fedlora.results.folders import hold_run_folder
from fedlora.results.merges import merge_diagnostics
from fedlora.studies.sweep import load_study, plan, start_partial
from tests.test_study import write_study

runner = CliRunner()
REPOSITORY = Path(__file__).parents[1]
# (study file, the docs folder whose table.md its kept cells re-derive)
COMMITTED = [
    ("configs/hlora/study.yaml", "docs/results/hlora"),
    ("configs/hlora-llm/gate.yaml", "docs/results/hlora-llm/gate"),
    ("configs/cllora-llm/study.yaml", "docs/results/cllora-llm"),
]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _table_only(study: Path | str, out: Path, docs: Path) -> str:
    args = ["study", str(study), "--out", str(out), "--docs", str(docs), "--table-only"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return (docs / "table.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("study", "docs"), COMMITTED)
def test_a_committed_table_is_rewritten_byte_for_byte_from_its_kept_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, study: str, docs: str
) -> None:
    """No run folder, and another machine's data folder: the same table, and the kept files
    untouched."""
    committed = REPOSITORY / docs
    copy = tmp_path / "docs"
    shutil.copytree(committed, copy)
    (copy / "table.md").unlink()
    monkeypatch.setenv("FEDLORA_DATA", str(tmp_path / "elsewhere"))
    table = _table_only(REPOSITORY / study, tmp_path / "no-runs", copy)
    assert table == (committed / "table.md").read_text(encoding="utf-8")
    assert _files(copy / "cells") == _files(committed / "cells")


@pytest.mark.slow
def test_the_table_keeps_its_cells_and_a_fresh_clone_rewrites_it(
    tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}, "hl": {"server.aggregator": "hlora"}})
    path.write_text(path.read_text() + "baselines: [avg]\npaired_steps: [1]\n")
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    result = runner.invoke(app, ["study", str(path), "--out", str(runs), "--docs", str(docs)])
    assert result.exit_code == 0, result.output
    table = (docs / "table.md").read_bytes()
    assert b"\nAt step 1 (round 1): " in table and b"\n| hl | avg | 0, 1 | " in table
    kept = docs / "cells" / "csv" / "hl" / "seed1"
    # every evaluation's predictions, packed; the final one's (step 2) once, as predictions.csv
    packed = ["predictions.csv", "predictions/step_000000.csv", "predictions/step_000001.csv"]
    assert sorted(_files(kept)) == sorted(
        ["config.yaml", "metrics.csv", "summary.json", "merges.json"]
        + [f"{name}.gz" for name in packed]
    )
    run = runs / "csv" / "hl" / "seed1"
    # the event log is not kept, its merges' diagnostics are, exactly
    assert not (kept / "events.jsonl").exists()
    assert merge_diagnostics(kept) == merge_diagnostics(run) and len(merge_diagnostics(run)) == 2
    for name in packed:
        assert gzip.decompress((kept / f"{name}.gz").read_bytes()) == (run / name).read_bytes()
    final = (run / "predictions" / "step_000002.csv").read_bytes()
    assert final == (run / "predictions.csv").read_bytes()
    assert (kept / "summary.json").read_bytes() == (run / "summary.json").read_bytes()

    shutil.rmtree(runs)  # a fresh clone: only the kept files
    assert _table_only(path, runs, docs).encode() == table
    assert not runs.exists()
    # nor does running the study there run a kept cell again: it goes on over sittings
    args = ["study", str(path), "--out", str(runs), "--docs", str(docs)]
    listed = runner.invoke(app, [*args, "--plan"])
    assert listed.output.splitlines() == [
        f"kept  {kept.parent.parent}/{a}/seed{s}" for s in (0, 1) for a in ("avg", "hl")
    ]
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and "running" not in rerun.output, rerun.output
    assert (docs / "table.md").read_bytes() == table and not (runs / "csv").exists()

    # an arm dropped from the study: its kept files go, anything else in cells/ stays
    (docs / "cells" / "notes.txt").write_text("mine")
    study = yaml.safe_load(path.read_text())
    del study["arms"]["hl"]
    path.write_text(yaml.safe_dump(study))
    assert "| hl |" not in _table_only(path, runs, docs)
    assert not (docs / "cells" / "csv" / "hl").exists()
    assert (docs / "cells" / "notes.txt").is_file() and (docs / "cells" / "csv" / "avg").is_dir()


def test_no_finished_cell_anywhere_keeps_the_table(tmp_path: Path, tiny_config: dict) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "table.md").write_text("the committed table\n")
    args = ["study", str(path), "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]
    result = runner.invoke(app, [*args, "--table-only"])
    assert result.exit_code == 2 and "no finished cell of study 'mini'" in result.output
    assert (tmp_path / "docs" / "table.md").read_text() == "the committed table\n"


@pytest.mark.slow
def test_a_damaged_summary_or_kept_predictions_is_refused_naming_the_file(
    tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}, "hl": {"server.aggregator": "hlora"}})
    path.write_text(path.read_text() + "baselines: [avg]\n")  # the table reads predictions
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["study", str(path), "--out", str(runs), "--docs", str(docs), "--seeds", "0"]
    assert runner.invoke(app, args).exit_code == 0
    summary = runs / "csv" / "avg" / "seed0" / "summary.json"
    text = summary.read_text()

    summary.write_text(text[:40])  # cut short
    result = runner.invoke(app, [*args, "--table-only"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{summary}: line " in result.output and "not valid JSON" in result.output
    exported = runner.invoke(app, ["export", str(summary.parent), str(tmp_path / "x"), "--merge"])
    assert exported.exit_code == 2 and f"{summary}: line " in exported.output

    summary.write_text(json.dumps({**json.loads(text), "rounds": "many"}))
    result = runner.invoke(app, [*args, "--table-only"])
    assert result.exit_code == 2 and "rounds: input should be a valid integer" in result.output

    shutil.rmtree(runs)
    packed = docs / "cells" / "csv" / "hl" / "seed0" / "predictions.csv.gz"
    packed.write_bytes(packed.read_bytes()[:30])
    result = runner.invoke(app, [*args, "--table-only"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{packed}: not a readable gzip file" in result.output

    merges = packed.with_name("merges.json")
    merges.write_text(merges.read_text()[:25])
    with pytest.raises(RunFolderError, match=f"{merges}: line 1: not valid JSON"):
        merge_diagnostics(merges.parent)
    merges.write_text('{"step": 1}')
    with pytest.raises(RunFolderError, match=f"{merges}: not a JSON list"):
        merge_diagnostics(merges.parent)


def test_a_leftover_partial_is_removed_only_under_its_lock(
    tmp_path: Path, tiny_config: dict
) -> None:
    cell = plan(load_study(write_study(tmp_path, tiny_config, {"avg": {}})), tmp_path / "runs")[0]
    partial = cell.folder.with_name(cell.folder.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "events.jsonl").write_text("")
    with hold_run_folder(partial), pytest.raises(RunFolderError, match="in use by a running"):
        start_partial(cell)  # a live run's folder (another study on the same cells)
    assert (partial / "events.jsonl").is_file()
    assert start_partial(cell) == (partial, False)
    assert not partial.exists()


def test_the_clean_clients_table_is_rewritten_from_the_kept_cells() -> None:
    """docs/results/cllora-llm/clean_clients.md, the partly degraded arm's clean clients against
    the same clients of iid, is what its script prints from the kept cells."""
    folder = REPOSITORY / "docs" / "results" / "cllora-llm"
    printed = subprocess.run(
        [sys.executable, str(folder / "clean_clients.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert printed == (folder / "clean_clients.md").read_text(encoding="utf-8")


def test_the_rank_gate_table_is_rewritten_from_the_kept_cells(tmp_path: Path) -> None:
    """docs/results/hlora-llm/gate/gate.md (rates picked on one half of dev, reported on the
    other) is what gate.py writes from the kept cells, here from a copy of them."""
    committed = REPOSITORY / "docs" / "results" / "hlora-llm" / "gate"
    copy = tmp_path / "gate"
    shutil.copytree(committed / "cells", copy / "cells")
    script = committed.parent / "gate.py"
    subprocess.run(
        [sys.executable, str(script), str(copy)], capture_output=True, check=True, timeout=120
    )
    assert (copy / "gate.md").read_text(encoding="utf-8") == (committed / "gate.md").read_text(
        encoding="utf-8"
    )


def test_the_merge_error_table_is_rewritten_from_the_kept_cells(tmp_path: Path) -> None:
    """docs/results/hlora/cohorts.md, the three merges' errors over every merge of the accuracy
    study's runs, is what mechanism.py writes from the kept cells' merges.json."""
    committed = REPOSITORY / "docs" / "results" / "hlora"
    script = [sys.executable, str(committed / "mechanism.py")]
    args = [str(committed / "cells"), str(tmp_path), "cohorts"]
    subprocess.run([*script, *args], capture_output=True, check=True, timeout=120)
    assert (tmp_path / "cohorts.md").read_text(encoding="utf-8") == (
        committed / "cohorts.md"
    ).read_text(encoding="utf-8")
