"""fedlora's overhead over a plain PEFT training loop doing the same work; prints JSON.

Both sides train the same pretrained model with the same LoRA on the same example batches
(R rounds × N clients × local steps), evaluate the same number of times on the same dev
examples, and load the model once. The plain loop is what a careful user would write with
stock transformers + PEFT: one adapter, tokenizer padding, AdamW; it never averages, swaps
adapters, logs events or writes results. fedlora does all of that.

    python benchmarks/overhead.py [--clients 4] [--rounds 3] [--steps 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedlora.client.model import model_path
from fedlora.client.trainer import plan_batches
from fedlora.config import ExperimentConfig, build_config, resolve_data_dir
from fedlora.data.partition import partition
from fedlora.data.sources import load_split
from fedlora.experiment import run_experiment


def make_config(args: argparse.Namespace) -> ExperimentConfig:
    return build_config(
        {
            "name": "overhead",
            "data": {
                "task": "mrpc",
                "max_train_examples": args.train_examples,
                "max_eval_examples": args.eval_examples,
                "partition": {"method": "iid"},
            },
            "model": {"bf16": args.bf16},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
            "clients": {"num": args.clients},
            "train": {"local_steps": args.steps, "batch_size": 16, "lr": 1e-3},
            "server": {"per_round": args.clients, "rounds": args.rounds},
            "eval": {"every": 1},
        }
    )


def plain_peft_loop(config: ExperimentConfig) -> float:
    """Seconds for the same training steps and evaluations in a stock PEFT loop."""
    start = time.perf_counter()
    data_dir = resolve_data_dir(config)
    train = load_split(config.data, data_dir, "train").examples
    dev = load_split(config.data, data_dir, "dev").examples

    def subset(examples: list, limit: int | None) -> list:  # the same subset fedlora takes
        keep = np.random.default_rng([config.seed, 3]).choice(len(examples), limit, False)
        return [examples[i] for i in np.sort(keep)]

    train = subset(train, config.data.max_train_examples)
    dev = subset(dev, config.data.max_eval_examples)

    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    model = AutoModelForSequenceClassification.from_pretrained(model_path(None), num_labels=2)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["query", "value"],
    )
    model = get_peft_model(model, lora)

    def encode(examples: list) -> list[dict]:
        enc = tokenizer(
            [e.text_a for e in examples],
            [e.text_b for e in examples],
            truncation=True,
            max_length=config.data.max_length,
        )
        return [{k: enc[k][i] for k in enc} | {"labels": e.label} for i, e in enumerate(examples)]

    train_features, dev_features = encode(train), encode(dev)
    dev_order = np.argsort([len(f["input_ids"]) for f in dev_features], kind="stable")
    labels = np.array([f["labels"] for f in train_features])
    clients = partition(labels, config.clients.num, config.data.partition, config.seed)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.model.bf16)

    def evaluate() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(dev_order), config.eval.batch_size):
                batch = tokenizer.pad(
                    [dev_features[j] for j in dev_order[i : i + config.eval.batch_size]],
                    return_tensors="pt",
                )
                with autocast:
                    logits = model(**batch).logits
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
        return correct / len(dev_features)

    evaluate()
    job = 0
    for _ in range(config.server.rounds):
        for client in range(config.clients.num):
            batches = plan_batches(
                clients[client], config.train, np.random.default_rng([config.seed, 1, job])
            )
            job += 1
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.train.lr)
            for indices in batches:
                batch = tokenizer.pad([train_features[i] for i in indices], return_tensors="pt")
                with autocast:
                    loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad()
        evaluate()
    return time.perf_counter() - start


def fedlora_run(config: ExperimentConfig) -> float:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        run_experiment(config, Path(folder) / "run")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train-examples", type=int, default=800)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    config = make_config(args)
    plain, ours = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides
        plain.append(plain_peft_loop(config))
        ours.append(fedlora_run(config))
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "clients": args.clients,
                "rounds": args.rounds,
                "local_steps": args.steps,
                "batch_size": config.train.batch_size,
                "evaluations": args.rounds + 1,
                "eval_examples": args.eval_examples,
                "bf16": args.bf16,
                "threads": torch.get_num_threads(),
                "plain_peft_s": [round(t, 2) for t in plain],
                "fedlora_s": [round(t, 2) for t in ours],
                "ratio_best": round(min(ours) / min(plain), 3),
                "goal": "ratio_best <= 1.05, merge diagnostics on (the default)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
