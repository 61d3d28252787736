"""Whole runs through the CLI on a tiny random BERT: files, determinism, report, export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakes import deterministic, run_cli, stock_peft_accuracy
from summaries import a_summary, reaching
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.results.events import read_events
from fedlora.results.predictions import read_predictions
from fedlora.results.report import speedup, time_to_target

runner = CliRunner()


def test_run_writes_a_complete_results_folder(tiny_run: Path) -> None:
    out = tiny_run
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "events.jsonl",
        "metrics.csv",
        "summary.json",
        "global.safetensors",
        "adapter",
        "curves.png",
        "predictions.csv",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["server_steps"] == 3
    assert summary["labels"] == ["different", "same"]
    assert summary["bytes_down"] > 0 and summary["bytes_up"] == summary["bytes_down"]
    assert summary["target"]["reached"] and summary["target"]["step"] == 0
    assert set(summary["final"]) >= {"accuracy", "f1", "loss", "virtual_time_s", "step"}
    events = read_events(out / "events.jsonl")
    assert {e["type"] for e in events} == {"eval", "dispatch", "arrival", "merge"}
    assert all("t" in e and "wall" in e for e in events)
    assert sum(e["type"] == "merge" for e in events) == 3
    assert (out / "metrics.csv").read_text().count("\n") == 1 + 4  # header, steps 0..3
    predictions = read_predictions(out / "predictions.csv")
    assert float(predictions.correct.mean()) == summary["final"]["accuracy"]
    # the summary's loss is the model's batch loss in float32; the file's is float64 from the
    # same logits: a 2-class log-softmax and a mean of 40 positive terms round ≲ 10·ε₃₂ ≈ 1.2e-6
    assert float(predictions.losses.mean()) == pytest.approx(summary["final"]["loss"], rel=1e-5)
    # float64 softmax of 2 classes, written with repr (round-trips): 1 within a few ε₆₄
    assert np.allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_event_log(tmp_path: Path, tiny_config: dict) -> None:
    run_cli(tmp_path, tiny_config, tmp_path / "a")
    run_cli(tmp_path, tiny_config, tmp_path / "b")
    a = deterministic(read_events(tmp_path / "a" / "events.jsonl"))
    b = deterministic(read_events(tmp_path / "b" / "events.jsonl"))
    assert a == b
    tiny_config["seed"] = 1
    run_cli(tmp_path, tiny_config, tmp_path / "c")
    assert deterministic(read_events(tmp_path / "c" / "events.jsonl")) != a


def test_existing_run_is_not_overwritten_by_accident(
    tmp_path: Path, tiny_config: dict, tiny_run_copy: Path
) -> None:
    out = tiny_run_copy
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    result = runner.invoke(app, ["run", str(config_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "already holds a run" in result.output
    run_cli(tmp_path, tiny_config, out, "--overwrite")


def test_bad_config_stops_before_training(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["server"]["per_round"] = 9
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    result = runner.invoke(app, ["run", str(config_file), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "server.per_round: 9 clients per round but clients.num is 4" in result.output
    assert not (tmp_path / "x").exists()
    overrides = ["--set", "server.per_round=2", "--set", "eval.target.metric=bleu"]
    result = runner.invoke(app, ["run", str(config_file), *overrides, "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "eval.target.metric: 'bleu' is not reported" in result.output


@pytest.mark.slow
def test_report_compares_runs(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["eval"]["target"]["value"] = 0.6  # a target line inside the plotted range
    run_cli(tmp_path, tiny_config, tmp_path / "one")
    tiny_config["train"]["lr"] = 1.0e-3
    run_cli(tmp_path, tiny_config, tmp_path / "two")
    result = runner.invoke(
        app,
        ["report", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(tmp_path / "rep")],
    )
    assert result.exit_code == 0, result.output
    assert "one" in result.output and "two" in result.output and "fedavg" in result.output
    assert (tmp_path / "rep" / "comparison.png").stat().st_size > 10_000
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no summary.json" in result.output


@pytest.mark.slow
def test_fedfa_over_heterogeneous_ranks_reports_staleness_and_idling(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["clients"]["ranks"] = [2, 2, 4, 4]
    tiny_config["server"] = {
        "policy": "fedfa", "aggregator": "hlora", "concurrency": 4, "window": 2, "rounds": 2,
    }  # fmt: skip
    tiny_config["eval"]["every_seconds"] = 1.0e9  # only at the start and the end
    run_cli(tmp_path, tiny_config, tmp_path / "fa")
    summary = json.loads((tmp_path / "fa" / "summary.json").read_text())
    events = read_events(tmp_path / "fa" / "events.jsonl")
    arrivals = [e for e in events if e["type"] == "arrival"]
    assert len(arrivals) == 8 and summary["server_steps"] == 8 - 1  # a step once K = 2 arrived
    assert summary["updates_applied"] == summary["updates_accepted"] == 8
    histogram = summary["staleness"]["histogram"]
    assert sum(histogram.values()) == 8 and summary["staleness"]["max"] == max(map(int, histogram))
    assert len(summary["client_idle_fraction"]) == 4
    assert all(0 <= f < 1 for f in summary["client_idle_fraction"])
    assert [e["version"] for e in events if e["type"] == "eval"] == [0, 7]
    assert {e["rank"] for e in events if e["type"] == "dispatch"} == {2, 4}


def test_speedup_is_the_ratio_of_times_to_target() -> None:
    assert time_to_target(reaching(120.0)) == 120.0 and time_to_target(a_summary()) is None
    assert speedup(reaching(600.0), reaching(100.0)) == 6.0
    assert speedup(reaching(600.0), reaching(None)) is None
    assert speedup(reaching(None), reaching(5.0)) is None


def test_export_loads_in_stock_peft_with_identical_predictions(
    tmp_path: Path, tiny_config: dict, tiny_run: Path
) -> None:
    run = tiny_run
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert result.exit_code == 0, result.output
    assert_plain_file_modes(tmp_path / "adapter")

    summary = json.loads((run / "summary.json").read_text())
    accuracy = stock_peft_accuracy(tmp_path / "adapter", tiny_config)
    assert accuracy == pytest.approx(summary["final"]["accuracy"])


def test_export_merged_model_predicts_like_the_adapter(tmp_path: Path, tiny_run: Path) -> None:
    run = tiny_run
    assert (
        runner.invoke(app, ["export", str(run), str(tmp_path / "merged"), "--merge"]).exit_code == 0
    )
    assert_plain_file_modes(tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == {0: "different", 1: "same"}
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tokenizer(["red cat runs"], ["red dog"], return_tensors="pt")
    from fedlora.client.model import build_resident_model
    from fedlora.config import load_config
    from fedlora.results.store import read_global_state

    config = load_config(run / "config.yaml")
    resident, _ = build_resident_model(config.model, config.lora, 2, config.seed)
    resident.load(read_global_state(run))
    resident.model.eval()
    # float32, ΔW folded into the weights or applied beside them: a dozen matmuls of width ≤ 64
    # each round by ~√64·ε₃₂ ≈ 1e-6 of O(1) activations; the adapter moves these logits by ~1e-3
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, resident.model(**batch).logits, atol=1e-5)


def assert_plain_file_modes(folder: Path) -> None:
    """Every exported file has the mode a plain write gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir() if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_list_shows_registries() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "aggregators: fedavg" in result.output and "mrpc" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("aggregator", ["hlora", "zeropad", "hetlora", "fedsa", "flora"])
def test_heterogeneous_ranks_run_and_export(
    tmp_path: Path, tiny_config: dict, aggregator: str
) -> None:
    tiny_config["clients"]["ranks"] = {2: 0.5, 4: 0.5}
    tiny_config["clients"]["rank_by"] = "speed"
    tiny_config["server"].update(aggregator=aggregator, update="delta")
    run = tmp_path / "run"
    run_cli(tmp_path, tiny_config, run)
    events = read_events(run / "events.jsonl")
    dispatches = [e for e in events if e["type"] == "dispatch"]
    by_rank = {e["rank"]: e["bytes"] for e in dispatches}
    assert set(by_rank) == {2, 4} and by_rank[4] > by_rank[2]  # bytes are charged by rank
    assert not [e for e in events if e["type"] == "reject"]
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if aggregator == "flora":  # the exact stack of every round's updates
        assert config["r"] > 4
    else:  # the global rank: the largest client rank
        assert config["r"] == 4


def test_fedavg_refuses_mixed_ranks_before_training(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["clients"]["ranks"] = [2, 2, 4, 4]
    config_file = tmp_path / "mixed.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    result = runner.invoke(app, ["run", str(config_file), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "fedavg merges same-rank LoRA only, client ranks are [2, 4]" in result.output
