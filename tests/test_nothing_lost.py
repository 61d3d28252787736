"""Nothing destroyed by default, and a run that learned nothing says so."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import run_cli
from summaries import ROW, a_summary
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.results.store import SUMMARY_FILE, learning_failure, read_summary, strict_json

runner = CliRunner()


def _invoke(tmp_path: Path, raw: dict, *args: str) -> Any:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return runner.invoke(app, ["run", str(config_file), "--quiet", *args])


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_deletes_nothing(
    tmp_path: Path, tiny_config: dict
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work\n")
    (notes / "config.yaml").write_text("mine: true\n")  # looks like a run, is not one
    result = _invoke(tmp_path, tiny_config, "--out", str(notes), "--overwrite")
    assert result.exit_code == 2 and "not a fedlora run" in result.output
    assert "nothing was deleted" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in notes.iterdir()) == ["config.yaml", "thesis.txt"]
    assert (notes / "thesis.txt").read_text() == "years of work\n"


def test_overwrite_refuses_the_working_folder(
    tmp_path: Path, tiny_config: dict, tiny_run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "run")  # a run folder, but the one we stand in
    result = _invoke(tmp_path, tiny_config, "--out", ".", "--overwrite")
    assert result.exit_code == 2 and "working folder" in result.output
    assert (tmp_path / "run" / "summary.json").is_file()


def test_overwrite_replaces_a_run_and_resume_is_offered_for_an_unfinished_one(
    tmp_path: Path, tiny_config: dict, tiny_run_copy: Path
) -> None:
    out = tiny_run_copy
    (out / "checkpoint.safetensors").write_bytes(b"")  # as a killed run leaves it
    result = _invoke(tmp_path, tiny_config, "--out", str(out))
    assert result.exit_code == 2 and f"--resume {out}" in result.output
    run_cli(tmp_path, tiny_config, out, "--overwrite")
    assert not (out / "checkpoint.safetensors").exists()


def test_export_refuses_to_write_over_a_folder_without_overwrite(
    tmp_path: Path, tiny_run: Path
) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    result = runner.invoke(app, ["export", str(tiny_run), str(target)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    result = runner.invoke(app, ["export", str(tiny_run), str(target), "--overwrite"])
    assert result.exit_code == 0 and (target / "adapter_config.json").is_file()
    assert (target / "keep.txt").is_file()  # written over, never emptied


def test_a_run_that_never_merged_exits_non_zero_with_strict_json(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["clients"]["availability"] = {"failure_prob": 1.0}
    out = tmp_path / "run"
    result = _invoke(tmp_path, tiny_config, "--out", str(out))
    assert result.exit_code == 3, result.output
    assert "did not learn: no merge happened" in result.output
    summary = json.loads(
        (out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c)
    )
    assert summary["server_steps"] == 0 and summary["jobs_lost"] > 0
    assert summary["final"]["round"] == summary["rounds"]
    assert summary["final"]["virtual_time_s"] == summary["virtual_time_s"]


def test_non_finite_numbers_become_null_and_a_nan_loss_is_a_failure(tmp_path: Path) -> None:
    summary = {
        "server_steps": 3,
        "final": {"loss": float("nan"), "accuracy": 0.5},
        "curve": [1.0, float("inf")],
    }
    cleaned = strict_json(summary)
    assert cleaned["final"] == {"loss": None, "accuracy": 0.5}
    assert cleaned["curve"] == [1.0, None]
    assert cleaned["non_finite"] == ["final.loss", "curve[1]"]
    json.dumps(cleaned, allow_nan=False)
    # read back, a listed null is NaN again: the model's loss is a float that is no number
    diverged = a_summary(final=ROW | {"accuracy": 0.5, "loss": float("nan")}).written()
    text = json.dumps(strict_json(diverged), allow_nan=False)
    (tmp_path / SUMMARY_FILE).write_text(text, encoding="utf-8")
    read = read_summary(tmp_path)
    assert read.non_finite == ["final.loss"] and math.isnan(read.final.metrics["loss"])
    assert "not a number" in (learning_failure(read) or "")


@pytest.mark.slow
def test_config_yaml_names_the_data_folder_the_run_read(
    tmp_path: Path, tiny_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDLORA_DATA", str(tmp_path))
    run_cli(tmp_path, tiny_config, tmp_path / "run")
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["data"]["dir"] == str(tmp_path) and os.environ["FEDLORA_DATA"]


@pytest.mark.slow
def test_a_narrowed_or_overridden_study_never_writes_the_published_docs(
    tmp_path: Path, tiny_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_config["server"]["rounds"] = 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config))
    study = {"name": "mini", "base": "base.yaml", "seeds": [0, 1], "arms": {"a": {}, "b": {}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["study", "study.yaml", "--arms", "a", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "docs").exists()
    table = (tmp_path / "results/studies/mini/report/table.md").read_text()
    assert table.startswith("Not the committed study: run with --arms a --seeds 0.")
    result = runner.invoke(app, ["study", "study.yaml", "--arms", "a", "--set", "seed=5"])
    assert result.exit_code == 0, result.output
    roots = sorted(p.name for p in (tmp_path / "results/studies").iterdir())
    assert len(roots) == 2 and roots[0] == "mini" and roots[1].startswith("mini-set-")
    assert (tmp_path / "results/studies/mini/csv/a/seed0/summary.json").is_file()
    assert not (tmp_path / "docs").exists()
