"""The real pretrained MiniLM on a small slice of real MRPC: one short federation, exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.client.model import model_path
from fedlora.config import load_config
from fedlora.data.federated import _subset
from fedlora.data.sources import load_split

pytestmark = pytest.mark.slow


def test_minilm_federation_on_mrpc_exports_a_stock_peft_adapter(
    tmp_path: Path, glue_dir: Path
) -> None:
    raw = {
        "name": "minilm-slice",
        "data": {
            "task": "mrpc",
            "dir": str(glue_dir),
            "max_train_examples": 96,
            "max_eval_examples": 48,
            "cache_dir": str(tmp_path / "cache"),
        },
        "clients": {"num": 3},
        "train": {"local_steps": 2, "batch_size": 8, "lr": 1.0e-3},
        "server": {"rounds": 2},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "minilm-slice: final dev accuracy=" in result.output and "f1=" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["server_steps"] == 2 and summary["updates_accepted"] == 6

    result = runner.invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == model_path(None)

    # Stock transformers + PEFT, as a user would load it.
    base = AutoModelForSequenceClassification.from_pretrained(model_path(None), num_labels=2)
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    cfg = load_config(run / "config.yaml")
    dev = _subset(load_split(cfg.data, glue_dir, "dev"), 48, cfg.seed).examples
    batch = tokenizer(
        [e.text_a for e in dev],
        [e.text_b for e in dev],
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1).numpy()
    accuracy = float((predictions == np.array([e.label for e in dev])).mean())
    assert accuracy == pytest.approx(summary["final"]["accuracy"])
