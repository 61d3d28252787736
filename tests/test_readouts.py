"""An instruction run read at its start and end: multiple-choice accuracy paired on the same
questions, and greedy answers side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import run_cli
from instruct_data import instruct_config, write_questions
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.results.predictions import read_predictions
from fedlora.results.readouts import choices_summary

runner = CliRunner()


@pytest.mark.slow
def test_a_run_reads_the_base_model_and_the_final_one(tmp_path: Path) -> None:
    raw = instruct_config(tmp_path)
    raw["eval"] |= {
        "choices": {"file": str(write_questions(tmp_path / "mc.jsonl", 12)), "limit": 10},
        "generate": {"prompts": ["red cat", "blue dog runs"], "max_new_tokens": 4},
    }
    run_cli(tmp_path, raw, tmp_path / "run")
    run = tmp_path / "run"
    start = json.loads((run / "readout.start.json").read_text())
    final = json.loads((run / "readout.final.json").read_text())
    assert start["version"] == 0 and final["version"] > 0
    assert start["choices"]["questions"] == 10 and len(final["choices"]["correct"]) == 10
    assert [a["instruction"] for a in final["answers"]] == ["red cat", "blue dog runs"]
    block = json.loads((run / "summary.json").read_text())["choices"]
    assert block["chance"] == pytest.approx(1 / 3)
    assert block["start"]["mc_accuracy"] == start["choices"]["mc_accuracy"]
    change = block["change"]["mc_accuracy"]
    assert change["mean"] == pytest.approx(
        final["choices"]["mc_accuracy"] - start["choices"]["mc_accuracy"]
    )
    assert change["low"] <= change["mean"] <= change["high"]
    # the dev loss, paired from the base model (the first evaluation) to the final one
    summary = json.loads((run / "summary.json").read_text())
    from_start = summary["from_start"]
    base = read_predictions(run / "predictions" / "step_000000.csv")
    assert from_start["start"]["loss"] == pytest.approx(base.loss(), rel=1e-12)
    assert from_start["final"]["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-12)
    loss = from_start["change"]["loss"]
    assert loss["mean"] == pytest.approx(summary["final"]["loss"] - base.loss(), rel=1e-9)
    assert loss["low"] < loss["mean"] < loss["high"] and from_start["examples"] == 30
    generations = (run / "generations.md").read_text()
    assert "## blue dog runs" in generations and "**start**" in generations
    # the readouts are a run's files: --overwrite replaces the run
    again = runner.invoke(app, ["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_the_change_in_accuracy_is_paired_on_the_questions() -> None:
    """4 questions: one lost, two gained: +0.25 with the interval of those 4 differences."""

    def readout(accuracy: float, correct: list[int]) -> dict:
        norm = [1, 1, 0, 0]
        fields = {"mc_accuracy": accuracy, "mc_accuracy_norm": 0.5, "questions": 4}
        return {"choices": fields | {"chance": 0.25, "correct": correct, "correct_norm": norm}}

    start, final = readout(0.25, [1, 0, 0, 0]), readout(0.5, [0, 1, 1, 0])
    block = choices_summary(start, final)["choices"]
    half = 1.959963984540054 * (11 / 12) ** 0.5 / 2  # differences -1, 1, 1, 0: sd √(11/12)
    assert block["change"]["mc_accuracy"] == pytest.approx(
        {"mean": 0.25, "low": 0.25 - half, "high": 0.25 + half}
    )
    assert block["change"]["mc_accuracy_norm"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert "start" not in choices_summary(None, final)["choices"]


def test_readouts_need_an_instruction_task_and_a_readable_file(
    tmp_path: Path, tiny_config: dict
) -> None:
    config = tmp_path / "run.yaml"
    tiny_config["eval"]["generate"] = {"prompts": ["hello"]}
    config.write_text(json.dumps(tiny_config))
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "eval.generate: needs an instruction task (data.task: instruct)" in result.output
    raw = instruct_config(tmp_path)
    raw["eval"]["choices"] = {"file": str(tmp_path / "missing.jsonl")}
    config.write_text(json.dumps(raw))
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "eval.choices.file: cannot read" in result.output
    assert not (tmp_path / "b").exists()
