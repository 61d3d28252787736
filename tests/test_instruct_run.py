"""Federated instruction tuning of a tiny random causal LM, end to end: evaluation, predictions,
every aggregator and policy, exact resume, and exports that stock PEFT and transformers load."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import run_cli
from instruct_data import instruct_config, response_loss
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from fedlora import aggregation, policies
from fedlora.cli import app
from fedlora.config import build_config
from fedlora.data.encoding import collate, encode_split
from fedlora.data.federated import _subset
from fedlora.data.sources import load_split
from fedlora.experiment import Interrupted, run_experiment
from fedlora.results.predictions import read_predictions


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One finished run (through the CLI) that the first tests read."""
    folder = tmp_path_factory.mktemp("instruct")
    raw = instruct_config(folder)
    out = folder / "run"
    run_cli(folder, raw, out)
    return raw, out


def test_a_run_reports_response_loss_overall_per_category_and_per_length(
    finished: tuple[dict, Path],
) -> None:
    _, out = finished
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    assert final["perplexity"] == pytest.approx(math.exp(final["loss"]), rel=1e-12)
    categories = {k for k in final if k.startswith("category.")}
    assert categories == {f"category.{c}.loss" for c in summary["labels"]}
    assert {k for k in final if k.startswith("length.")} == {
        "length.short.loss",
        "length.middle.loss",
        "length.long.loss",
    }
    predictions = read_predictions(out / "predictions.csv")
    assert not predictions.classified and predictions.ids.tolist() == list(range(30))
    # the loss is per response token: the rows' losses weighted by their tokens give it back
    assert predictions.loss() == pytest.approx(final["loss"], rel=1e-12)
    assert summary["final"]["by_length"]["short"]["loss"] == pytest.approx(
        final["length.short.loss"], rel=1e-12
    )
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "id,label,category,tokens,loss,length"


def test_every_evaluation_writes_its_predictions(finished: tuple[dict, Path]) -> None:
    _, out = finished
    with (out / "metrics.csv").open() as handle:
        evaluations = list(csv.DictReader(handle))
    steps = sorted(int(row["step"]) for row in evaluations)
    files = sorted((out / "predictions").iterdir())
    assert [f.name for f in files] == [f"step_{s:06d}.csv" for s in steps]
    for row, path in zip(sorted(evaluations, key=lambda r: int(r["step"])), files, strict=True):
        assert read_predictions(path).loss() == pytest.approx(float(row["loss"]), rel=1e-12)
    assert files[-1].read_text() == (out / "predictions.csv").read_text()


def _stock_dev_loss(model: torch.nn.Module, raw: dict) -> float:
    """Token-weighted response loss on the dev rows, computed with plain torch on ``model``."""
    config = build_config(raw)
    tokenizer = AutoTokenizer.from_pretrained(raw["model"]["name"])
    split = _subset(load_split(config.data, None, "dev"), None, 0)
    encoded = encode_split(split, tokenizer, config.data.max_length, config.data.cache_dir)
    return response_loss(model, collate(encoded, np.arange(len(encoded)), tokenizer.pad_token_id))


def test_stock_peft_and_transformers_load_the_exports_and_score_the_same(
    finished: tuple[dict, Path], tmp_path: Path
) -> None:
    from peft import PeftModel

    raw, out = finished
    final = json.loads((out / "summary.json").read_text())["final"]["loss"]
    torch.manual_seed(raw["seed"])  # the random base a user rebuilds from the config
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    base_config = AutoConfig.from_pretrained(raw["model"]["name"], **sizes, intermediate_size=64)
    base = AutoModelForCausalLM.from_config(base_config)
    for flags, folder in (([], tmp_path / "adapter"), (["--merge"], tmp_path / "merged")):
        result = CliRunner().invoke(app, ["export", str(out), str(folder), *flags])
        assert result.exit_code == 0, result.output
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    # fp32 throughout; the run scored in batches of 8, these score all 30 rows at once, so
    # only the summation order differs: ~1e-6 relative on a loss near 10 (vocabulary 30,522)
    assert _stock_dev_loss(peft_model, raw) == pytest.approx(final, abs=1e-4)
    assert _stock_dev_loss(merged, raw) == pytest.approx(final, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "aggregator"),
    [("fedavg", name) for name in aggregation.available()]
    + [(name, "hlora") for name in policies.available() if name != "fedavg"],
)
def test_every_aggregator_and_policy_runs_an_instruction_task(
    tmp_path: Path, policy: str, aggregator: str
) -> None:
    raw = instruct_config(tmp_path)
    if aggregator != "fedavg":  # which merges same-rank LoRA only
        raw["clients"]["ranks"] = [2, 4, 4, 8]
    raw["server"] = {"policy": policy, "aggregator": aggregator, "rounds": 1, "concurrency": 2}
    if aggregator == "flora":  # FLoRA adds each round's stack to the global
        raw["server"]["update"] = "delta"
    if policy == "fedavg":
        raw["server"]["per_round"] = 3
    else:
        raw["server"] |= {"window": 2, "max_steps": 2}
    raw["data"] |= {"max_length": 32, "max_eval_examples": 6}
    raw["train"] |= {"local_steps": 1, "batch_size": 4}
    summary = run_experiment(build_config(raw), tmp_path / "run")
    assert summary.server_steps >= 1 and summary.updates_rejected == 0
    assert math.isfinite(summary.final.metrics["loss"])


@pytest.mark.slow
def test_an_interrupted_instruction_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    raw = instruct_config(tmp_path)
    raw["runtime"] = {"checkpoint_every": 1, "checkpoint_seconds": None}
    raw["data"] |= {"max_length": 32, "max_eval_examples": 6}
    raw["train"] |= {"local_steps": 1, "batch_size": 4}
    config = build_config(raw)
    whole = run_experiment(config, tmp_path / "whole")
    polls = iter(range(1_000))
    with pytest.raises(Interrupted):
        run_experiment(config, tmp_path / "cut", interrupted=lambda: next(polls) == 2)
    resumed = run_experiment(config, tmp_path / "cut", resume=True)
    assert resumed.final.model_copy(update={"wall_time_s": 0.0}) == whole.final.model_copy(
        update={"wall_time_s": 0.0}
    )
    for name in ("global.safetensors", "predictions.csv"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_the_predictions_folder_is_part_of_a_run_and_nothing_else_in_it_is(
    tmp_path: Path,
) -> None:
    from fedlora.results.folders import foreign_entries

    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "step_000012.csv").write_text("id,loss\n")
    assert foreign_entries(tmp_path) == []
    (tmp_path / "predictions" / "notes.txt").write_text("mine")
    assert foreign_entries(tmp_path) == ["predictions/notes.txt"]
