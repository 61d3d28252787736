"""What a client's LoRA rank costs it: seconds per training step, peak memory, bytes per job.

The resource side of HLoRA's claim: a low-rank client trains and talks for less. Each rank is
measured in a fresh process (peak memory is a process high-water mark), with the HLoRA study's
model, task and batches; the ranks take turns over the repeats, so drift in machine load
reaches all of them alike. Prints JSON.

    python benchmarks/rank_resources.py [--config configs/hlora/base.yaml] [--ranks 2 4 8 16]
        [--steps 20] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def resident_kib() -> int:
    """The process's resident memory now, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(config_file: str, rank: int, steps: int, threads: int) -> dict[str, float]:
    """Train one client at ``rank`` for ``steps`` batches after a 2-step warm-up."""
    import numpy as np

    from fedlora.config import load_config
    from fedlora.experiment import prepare

    config = load_config(
        config_file,
        [
            f"lora.r={rank}",
            "clients.num=1",
            "clients.ranks=null",
            "server.per_round=1",
            "data.partition.method=iid",
            f"runtime.threads={threads}",
        ],
    )
    learner = prepare(config).learner
    start = learner.initial_state()
    rng = np.random.default_rng(0)
    batches = learner.plan(0, rng)
    while len(batches) < steps + 2:
        batches += learner.plan(0, rng)
    learner.train(start, batches[:2], seed=0)
    before = resident_kib()
    began = time.perf_counter()
    result = learner.train(start, batches[2 : steps + 2], seed=1)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds_per_step": seconds / steps,
        "tokens_per_step": learner.tokens(batches[2 : steps + 2]) / steps,
        "peak_rss_mib": peak / 1024,
        "training_rss_growth_mib": max(0, peak - before) / 1024,
        "trainable_parameters": sum(f.A.numel() + f.B.numel() for f in result.state.lora.values()),
        "adapter_bytes": len(result.state.to_bytes()),
        "lora_bytes": sum(
            f.A.numel() * f.A.element_size() + f.B.numel() * f.B.element_size()
            for f in result.state.lora.values()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hlora/base.yaml")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rank is not None:
        print(json.dumps(measure(args.config, args.child_rank, args.steps, args.threads)))
        return
    runs: dict[int, list[dict[str, float]]] = {rank: [] for rank in args.ranks}
    for _ in range(args.repeats):
        for rank in args.ranks:
            child = [sys.executable, __file__, "--child-rank", str(rank)]
            child += ["--config", args.config, "--steps", str(args.steps)]
            child += ["--threads", str(args.threads)]
            output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            runs[rank].append(json.loads(output.splitlines()[-1]))
    by_rank = {
        str(rank): {
            "seconds_per_step": round(min(r["seconds_per_step"] for r in measured), 3),
            "seconds_per_step_all": [round(r["seconds_per_step"], 3) for r in measured],
            "tokens_per_step": round(statistics.mean(r["tokens_per_step"] for r in measured), 1),
            "peak_rss_mib": round(min(r["peak_rss_mib"] for r in measured), 1),
            "training_rss_growth_mib": round(
                min(r["training_rss_growth_mib"] for r in measured), 1
            ),
            "trainable_lora_parameters": int(measured[0]["trainable_parameters"]),
            "adapter_bytes_per_transfer": int(measured[0]["adapter_bytes"]),
            "lora_bytes_per_transfer": int(measured[0]["lora_bytes"]),
        }
        for rank, measured in runs.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "rank_resources",
                "config": args.config,
                "steps": args.steps,
                "repeats": args.repeats,
                "threads": args.threads,
                "by_rank": by_rank,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
