"""Seconds per client update beyond training, per runtime, on one small MiniLM workload; prints
JSON.

One client trains U sequential FedAvg updates of the packaged MiniLM on MRPC (no evaluation
between them). For every runtime an update's cost is the wall time from its dispatch event to
its arrival event, less the training itself (the same jobs timed on a warm, resident learner
in this process). The runtimes: the in-process simulator; a Flower deployment on 127.0.0.1
(SuperLink + 1 SuperNode, TLS and node authentication, as the README starts them); Flower's
simulation engine (Ray), only with ``--engine``, inside a loopback-only network namespace
(Ray listens on every interface).

    python benchmarks/runtime_overhead.py [--updates 3] [--steps 5] [--engine]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from fedlora.client.protocol import plan_job
from fedlora.config import ExperimentConfig, build_config
from fedlora.experiment import prepare, run_experiment
from fedlora.flower.localhost import LocalDeployment
from fedlora.results.events import read_events

REPO = Path(__file__).parents[1]


def workload(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "runtime-overhead",
        "seed": 0,
        "data": {
            "task": "mrpc",
            "max_length": 64,
            "max_train_examples": 200,
            "max_eval_examples": 16,
            "partition": {"method": "iid"},
        },
        "model": {"bf16": False},
        "lora": {"r": 8, "alpha": 16},
        "clients": {"num": 1},
        "train": {"local_steps": args.steps, "batch_size": 8, "lr": 1e-3},
        "server": {"per_round": 1, "rounds": args.updates, "job_timeout": 900},
        "eval": {"every": 10_000},
    }


def training_seconds(config: ExperimentConfig) -> float:
    """Median seconds of the run's jobs trained on a warm, resident learner (one warm-up)."""
    prepared = prepare(config)
    learner, state = prepared.learner, prepared.learner.initial_state()
    times = []
    for job in range(-1, config.server.rounds):  # -1: job 0 once more, to warm up
        batches, seed = plan_job(learner, config.seed, 0, max(job, 0))
        start = time.perf_counter()
        learner.train(state, batches, seed)
        if job >= 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def update_seconds(run: Path) -> list[float]:
    """Wall seconds from each job's dispatch to its arrival."""
    events = read_events(run / "events.jsonl")
    sent = {e["job"]: e["wall"] for e in events if e["type"] == "dispatch"}
    return [e["wall"] - sent[e["job"]] for e in events if e["type"] == "arrival"]


def deployed(config_file: Path, folder: Path) -> Path:
    certs = folder / "certs"
    script = REPO / "scripts" / "flower_certs.sh"
    subprocess.run(
        ["bash", str(script), "--out", str(certs), "--nodes", "1"], check=True, capture_output=True
    )
    with LocalDeployment(certs, folder, nodes=1) as deployment:
        output = deployment.run(config_file, folder / "run", wait_s=300, timeout=900)
        if not (folder / "run" / "summary.json").is_file():
            raise RuntimeError(output + deployment.log_tails())
    return folder / "run"


def engine(config: ExperimentConfig, folder: Path) -> Path:
    """The same apps under Flower's simulation engine (Ray), one SuperNode."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedlora.flower.client_app import app as client_app
    from fedlora.flower.server_app import run_federation

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, folder / "run", wait_s=300)

    run_simulation(server_app, client_app, num_supernodes=1)
    return folder / "run"


def in_loopback_namespace(args: argparse.Namespace, train_s: float) -> dict[str, Any]:
    """Re-run this script's engine part where only 127.0.0.1 exists (``unshare -rn``)."""
    command = (
        f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()}"
        f" --updates {args.updates} --steps {args.steps} --engine-only"
    )
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", command], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    updates, total_s = json.loads(result.stdout.strip().splitlines()[-1])
    return summarize(updates, train_s, total_s)


def summarize(updates: list[float], train_s: float, total_s: float) -> dict[str, Any]:
    return {
        "update_wall_s": [round(u, 3) for u in updates],
        "beyond_training_s": round(statistics.mean(updates) - train_s, 3),
        "first_beyond_training_s": round(updates[0] - train_s, 3),
        "total_s": round(total_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--engine", action="store_true", help="also Flower's simulation engine")
    parser.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raw = workload(args)
    config = build_config(raw)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.engine_only:  # the walls only: the caller subtracts its own training time
            start = time.perf_counter()
            run = engine(config, folder / "engine")
            print(json.dumps([update_seconds(run), time.perf_counter() - start]))
            return
        train_s = training_seconds(config)
        results: dict[str, Any] = {"workload": raw, "training_s": round(train_s, 3)}
        start = time.perf_counter()
        run_experiment(config, folder / "sim")
        results["simulator"] = summarize(
            update_seconds(folder / "sim"), train_s, time.perf_counter() - start
        )
        config_file = folder / "config.yaml"
        config_file.write_text(yaml.safe_dump(raw))
        start = time.perf_counter()
        run = deployed(config_file, folder / "deployed")
        results["flower_deployment"] = summarize(
            update_seconds(run), train_s, time.perf_counter() - start
        )
        if args.engine:
            results["flower_simulation_engine"] = in_loopback_namespace(args, train_s)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
