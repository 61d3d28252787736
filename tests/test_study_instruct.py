"""A study of an instruction task: a table with no accuracy, paired on the response loss (as
the runs report it, weighted by response tokens) and on multiple-choice answers, re-derived
from its kept cells alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from instruct_data import instruct_config, write_questions
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.predictions import Predictions
from fedlora.results.errors import RunFolderError
from fedlora.studies.paired import compare_runs

runner = CliRunner()


@pytest.mark.slow
def test_a_study_of_an_instruction_task_pairs_losses_and_answers(tmp_path: Path) -> None:
    raw = instruct_config(tmp_path)
    raw["server"]["rounds"] = 2
    raw["eval"]["choices"] = {"file": str(write_questions(tmp_path / "mc.jsonl", 12))}
    raw["eval"] |= {"local_share": 0.25, "local_dev": False}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    study = {
        "name": "mini-instruct",
        "base": "base.yaml",
        "seeds": [0, 1],
        "baselines": ["avg"],
        "arms": {"avg": {}, "fast": {"train.lr": 0.05}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["study", str(tmp_path / "study.yaml"), "--out", str(out), "--docs", str(docs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    table = (docs / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| arm |"))
    assert "final acc" not in header and "Δ acc vs" not in header
    for column in ("final loss", "best loss", "final MC acc", "Δ loss vs avg [95% CI]",
                   "Δ loss short vs avg", "Δ loss long vs avg", "Δ MC acc vs avg"):  # fmt: skip
        assert f"| {column}" in header, column
    assert (docs / "loss.png").is_file() and not (docs / "accuracy.png").exists()
    assert (docs / "paired.png").stat().st_size > 10_000  # the arm against the baseline
    assert "Δ loss vs avg by category of the eval examples" in table
    # the clients' models are scored in the response loss too: named so, and each column once
    assert " acc, " not in header and "local acc" not in header
    for column in ("local loss, own split", "global loss, own split", "Δ local loss vs avg"):
        assert header.count(f"| {column}") == 1, column

    # the paired loss difference is that of the losses the runs report, seed by seed
    summaries = {
        (arm, seed): json.loads(
            (out / "instruct" / arm / f"seed{seed}" / "summary.json").read_text()
        )
        for arm in ("avg", "fast")
        for seed in (0, 1)
    }
    per_seed = [
        summaries["fast", seed]["final"]["loss"] - summaries["avg", seed]["final"]["loss"]
        for seed in (0, 1)
    ]
    folders = {
        arm: [out / "instruct" / arm / f"seed{s}" for s in (0, 1)] for arm in ("avg", "fast")
    }
    difference = compare_runs(folders["avg"], folders["fast"])["loss"]
    assert difference.per_seed == pytest.approx(per_seed, rel=1e-9)
    assert f"{difference.estimate:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]" in table

    # a clone has only the kept cells (with the final readouts): the same table, byte for byte
    kept = docs / "cells" / "instruct" / "fast" / "seed1"
    assert (kept / "readout.final.json").is_file()
    shutil.rmtree(out)
    again = runner.invoke(app, [*args, "--table-only"])
    assert again.exit_code == 0, again.output
    assert (docs / "table.md").read_text() == table


def test_instruction_rows_pair_by_their_response_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long response weighs as much as its tokens: the paired difference is that of the
    token-weighted losses the runs report (here −1.75, where a mean over rows gives −1.5), and
    rows with other token counts are not the same examples."""

    def rows(sums: list[float], tokens: list[int]) -> Predictions:
        return Predictions.from_response_losses(
            np.array(sums), np.array(tokens), np.zeros(2), ("a", "b")
        )

    reference, arm = rows([2.0, 6.0], [1, 3]), rows([1.0, 0.0], [1, 3])
    predictions = {"ref": reference, "arm": arm}
    monkeypatch.setattr(
        "fedlora.studies.paired.read_cell_predictions", lambda folder: predictions[folder.name]
    )
    differences = compare_runs([Path("ref")], [Path("arm")])
    assert "accuracy" not in differences
    assert differences["loss"].per_seed == pytest.approx((arm.loss() - reference.loss(),))
    assert arm.loss() - reference.loss() == pytest.approx(-1.75)
    predictions["arm"] = rows([1.0, 0.0], [2, 2])
    with pytest.raises(RunFolderError, match="arm: its eval examples differ"):
        compare_runs([Path("ref")], [Path("arm")])
