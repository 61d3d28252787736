"""Instruction rows, a tiny random Llama and an instruction-task config: seconds, not minutes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig

from fedlora.client.model import model_path
from fedlora.data.encoding import IGNORE

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps", "eats", "fast"]
CATEGORIES = ["closed_qa", "open_qa", "summarization"]


def write_instruct_jsonl(path: Path, rows: int, seed: int = 0, clients: int | None = None) -> Path:
    """Dolly-style rows a model can learn: the response repeats the instruction's words in
    reverse; contexts (for two of three categories) of 0 to 40 words; ``clients``: a
    ``fedit_client`` id per row, round robin."""
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        category = CATEGORIES[i % len(CATEGORIES)]
        context = (
            ""
            if category == "open_qa"
            else " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
        )
        row = {
            "instruction": "reverse: " + " ".join(words),
            "context": context,
            "response": " ".join(reversed(words)),
            "category": category,
        }
        if clients is not None:
            row["fedit_client"] = i % clients
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_llama(folder: Path) -> Path:
    """A folder holding a 2-layer Llama config and a tokenizer (the packaged MiniLM's, which
    has no chat template: prompts use the plain one)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    tokenizer.save_pretrained(folder)
    LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    return folder


def instruct_config(tmp_path: Path) -> dict:
    """A whole instruction-tuning experiment on the tiny random Llama: 4 clients, 3 rounds."""
    return {
        "name": "tiny-instruct",
        "seed": 0,
        "data": {
            "task": "instruct",
            "files": {
                "train": str(write_instruct_jsonl(tmp_path / "train.jsonl", 96, seed=1, clients=4)),
                "dev": str(write_instruct_jsonl(tmp_path / "dev.jsonl", 30, seed=2)),
            },
            "max_length": 48,
            "cache_dir": str(tmp_path / "cache"),
            "partition": {"method": "dirichlet", "alpha": 1.0, "min_size": 4},
        },
        "model": {"name": str(tiny_llama(tmp_path / "tiny-llama")), "init": "random"},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "clients": {"num": 4, "speed": {"distribution": "pareto", "alpha": 1.0, "cap": 10}},
        "train": {"local_steps": 2, "batch_size": 8, "lr": 1.0e-2},
        "server": {"per_round": 3, "rounds": 3},
        "eval": {"every": 1, "batch_size": 8},
    }


def response_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Token-weighted response loss of a collated batch, with plain torch: what a user of stock
    PEFT or transformers would compute to check a run's ``loss``."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    total = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"
    )
    return float(total) / int((targets != IGNORE).sum())


def write_questions(path: Path, count: int) -> Path:
    """A multiple-choice file in ARC's layout: ``count`` questions of three choices."""
    rows = [
        {
            "query": f"Question: which word {i}?",
            "choices": ["red", "blue cat", "dog"],
            "gold": i % 3,
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
