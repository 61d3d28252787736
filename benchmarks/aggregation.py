"""Time one HLoRA merge: the low-rank route against the dense SVD route; prints JSON.

K clients with ranks cycling through {4, 8, 16} merge into a global adapter of rank 16, at the
layer shapes of MiniLM (384×384, 12 modules), RoBERTa-large (1024×1024, 48) and LLaMA-7B
(4096×4096, 128). The low-rank route is ``hlora``'s whole-adapter merge. The dense route forms
Σ w_k s_k B_k A_k per module and takes its SVD; where that would take minutes it is timed on
``--dense-modules`` modules and scaled to the whole model (marked ``dense_extrapolated``).

    python benchmarks/aggregation.py [--clients 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.base import effective_b
from fedlora.config import LoraConfig

SHAPES = {  # name: (width, modules, dense modules timed by default)
    "MiniLM": (384, 12, 12),
    "RoBERTa-large": (1024, 48, 48),
    "LLaMA-7B": (4096, 128, 1),
}
RANKS = (4, 8, 16)


def client_states(width: int, modules: int, clients: int) -> list[AdapterState]:
    g = torch.Generator().manual_seed(0)
    states = []
    for k in range(clients):
        rank = RANKS[k % len(RANKS)]
        lora = {
            f"layer.{m}": LoraFactors(
                torch.randn(rank, width, generator=g) / width**0.5,
                torch.randn(width, rank, generator=g) / rank**0.5,
                alpha=16.0,
            )
            for m in range(modules)
        }
        states.append(AdapterState(lora, {}))
    return states


def dense_merge(states: list[AdapterState], weights: list[float], module: str, rank: int) -> None:
    terms = zip(states, weights, strict=True)
    total = sum(w * (effective_b(s.lora[module]) @ s.lora[module].A) for s, w in terms)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    _ = (u[:, :rank] * s[:rank], vh[:rank])


def best_of(repeats: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-modules", type=int, default=None, help="dense modules timed")
    args = parser.parse_args()
    weights = [1.0 / args.clients] * args.clients
    global_rank = max(RANKS)
    agg = aggregation.create("hlora", LoraConfig(r=global_rank, alpha=16.0), global_rank)
    results = []
    for name, (width, modules, dense_default) in SHAPES.items():
        states = client_states(width, modules, args.clients)
        timed = min(modules, args.dense_modules or dense_default)
        names = [f"layer.{m}" for m in range(timed)]

        def merge_lowrank(states: list[AdapterState] = states) -> None:
            agg.combine(states, weights)

        def merge_dense(states: list[AdapterState] = states, names: list[str] = names) -> None:
            for module in names:
                dense_merge(states, weights, module, global_rank)

        lowrank = best_of(args.repeats, merge_lowrank)
        dense_part = best_of(1 if width > 1024 else args.repeats, merge_dense)
        dense = dense_part * modules / timed
        results.append(
            {
                "shape": name,
                "width": width,
                "modules": modules,
                "lowrank_merge_s": round(lowrank, 4),
                "dense_merge_s": round(dense, 3),
                "dense_modules_timed": timed,
                "dense_extrapolated": timed < modules,
                "speedup": round(dense / lowrank, 1),
                "lowrank_per_module_ms": round(1000 * lowrank / modules, 3),
                "dense_per_module_ms": round(1000 * dense_part / timed, 1),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "aggregation",
                "clients": args.clients,
                "client_ranks": list(RANKS),
                "global_rank": global_rank,
                "threads": torch.get_num_threads(),
                "results": results,
                "goals": "speedup >= 100 at 4096; LLaMA-7B lowrank_merge_s < 2",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
