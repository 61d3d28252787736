"""Exact resume: a run continued from any checkpoint ends exactly as an uninterrupted run.

In-process with the fake learner, resuming from every checkpoint of a run; and for real, through
the CLI: a run of a tiny model killed with SIGKILL (and stopped with Ctrl-C) at random moments,
resumed each time, gives the same events (wall times aside), metrics, summary and adapter.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeLearner, config, deterministic

from fedlora.config import ExperimentConfig
from fedlora.results.events import EventLog
from fedlora.sim.engine import Simulation, build_simulation
from fedlora.snapshot import Snapshot


def _simulation(cfg: ExperimentConfig, log: EventLog, saved: list[Snapshot]) -> Simulation:
    learner = FakeLearner([3, 4, 5, 6, 7][: cfg.clients.num])

    def keep(snap: Snapshot) -> None:
        snap.meta["events_offset"] = log.sync()
        saved.append(Snapshot.from_bytes(snap.to_bytes()))  # through the file format

    sizes = [len(i) for i in learner.indices]
    return build_simulation(cfg, learner, sizes, log, checkpoint=keep)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "aggregator", "update", "grid"),
    [
        ("fedavg", "fedavg", "model", None),
        ("fedbuff", "hlora", "delta", None),
        ("fedfa", "zeropad", "model", None),
        ("fedfa", "fedsa", "delta", None),
        ("fedasync", "flora", "delta", None),
        ("semiasync", "hlora", "model", None),
        # evaluated on a virtual-time grid: the next grid point is part of the state
        ("fedavg", "fedavg", "model", 0.125),
        ("fedfa", "fedsa", "delta", 0.125),
        # with HetLoRA's rank self-pruning: each client's rank and last trailing norm
        ("fedfa", "hetlora", "delta", None),
        ("fedbuff", "hetlora", "model", None),
    ],
)
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_run(
    policy: str, aggregator: str, update: str, grid: float | None
) -> None:
    pruning = aggregator == "hetlora"
    options = {"self_prune": {"decay": 0.5, "penalty": 0.1}} if pruning else {}
    cfg = config(
        clients={"num": 5, "availability": {"failure_prob": 0.2}},
        server={
            "policy": policy,
            "aggregator": aggregator,
            "update": update,
            "per_round": 3,
            "concurrency": 3,
            "window": 2,
            "rounds": 5,
            "staleness_bound": 3 if policy != "fedavg" else None,
            "aggregator_options": options,
        },
        eval={"grid_seconds": grid},
        runtime={"checkpoint_every": 1, "checkpoint_seconds": None},
    )
    log, saved = EventLog(), []
    reference = _simulation(cfg, log, saved).run()
    assert len(saved) > 3
    if pruning:  # some client trains below its rank from some checkpoint on
        assert any(e.get("active_rank", 2) < 2 for e in log.records if e["type"] == "dispatch")
    for snap in saved:
        resumed_log = EventLog()
        simulation = _simulation(cfg, resumed_log, [])
        simulation.load_state_dict(snap)
        outcome = simulation.run()
        events = log.records[: snap.meta["events_offset"]] + resumed_log.records
        assert deterministic(events) == deterministic(log.records)
        assert outcome.global_state.to_bytes() == reference.global_state.to_bytes()
        assert [e.metrics for e in outcome.evaluations] == [
            e.metrics for e in reference.evaluations
        ]
        assert (outcome.accepted, outcome.lost, outcome.dropped, outcome.busy_time) == (
            reference.accepted,
            reference.lost,
            reference.dropped,
            reference.busy_time,
        )


# -- for real: a tiny model through the CLI, killed at random moments --------------------------


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedlora", "run", *args, "--quiet"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _lines(path: Path) -> int:
    try:
        return path.read_text(encoding="utf-8").count("\n")
    except FileNotFoundError:
        return 0


def _stop_after(
    process: subprocess.Popen[str], events: Path, count: int, how: int
) -> tuple[bool, str]:
    """Signal ``process`` once the event log has ``count`` lines: whether it was still
    running then, and its output."""
    deadline = time.monotonic() + 120
    while process.poll() is None and _lines(events) < count:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run made no progress within 120 s")
        time.sleep(0.005)
    running = process.poll() is None
    if running:
        process.send_signal(how)
    output, _ = process.communicate(timeout=120)
    return running, output


def _without_wall(block: Any) -> Any:
    """A summary without its wall-clock times, at any depth."""
    if isinstance(block, dict):
        return {k: _without_wall(v) for k, v in block.items() if k != "wall_time_s"}
    return block


def _comparable(folder: Path) -> dict[str, Any]:
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    with (folder / "metrics.csv").open() as handle:
        metrics = [
            {k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)
        ]
    summary = _without_wall(json.loads((folder / "summary.json").read_text()))
    return {
        "events": deterministic(events),
        "metrics": metrics,
        "summary": summary,
        "global": (folder / "global.safetensors").read_bytes(),
        "checkpoint left": (folder / "checkpoint.safetensors").exists(),
    }


# how each run is stopped along the way (each process start costs seconds of imports)
STOPS = {"fedavg": [signal.SIGKILL], "fedfa": [signal.SIGKILL, signal.SIGINT]}


@pytest.mark.slow
@pytest.mark.parametrize("policy", sorted(STOPS))
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    tiny_config: dict, tmp_path: Path, policy: str
) -> None:
    tiny_config["clients"] |= {"ranks": [2, 4, 2, 4], "availability": {"failure_prob": 0.2}}
    tiny_config["server"] |= {
        "policy": policy,
        "aggregator": "hlora",
        "concurrency": 3,
        "window": 2,
        "rounds": 6,
    }
    tiny_config["runtime"] = {"threads": 1, "checkpoint_every": 1}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))

    reference = tmp_path / "reference"
    first = _start([str(config_file), "--out", str(reference)], tmp_path)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    expected = _comparable(reference)
    assert not expected["checkpoint left"]

    killed, events = tmp_path / "killed", tmp_path / "killed" / "events.jsonl"
    total = len(expected["events"])
    rng = random.Random(policy)
    process = _start([str(config_file), "--out", str(killed)], tmp_path)
    for how in STOPS[policy]:
        # a moment past what the log already holds: a resumed run first truncates it to its
        # checkpoint, so only lines beyond the old end mean the new process is at work
        moment = rng.randint(_lines(events) + 2, _lines(events) + 2 + total // 3)
        running, output = _stop_after(process, events, min(moment, total - 1), how)
        if running and how == signal.SIGINT:  # a safe stop, with a word on how to go on
            assert process.returncode == 130, output
            assert "resume with: fedlora run --resume" in output and "Traceback" not in output
        process = _start(["--resume", str(killed)], tmp_path)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    resumed = _comparable(killed)
    differing = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(resumed["events"], expected["events"], strict=False))
        if a != b
    ]
    assert not differing[:1]  # the first event that differs, if any
    assert resumed == expected


@pytest.mark.slow
def test_a_study_resumes_its_interrupted_cell_from_the_checkpoint(
    tmp_path: Path, tiny_config: dict
) -> None:
    from fedlora.experiment import Interrupted, run_experiment
    from fedlora.studies.sweep import load_study, plan, run_sweep

    tiny_config["runtime"] = {"checkpoint_every": 1}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config))
    arms = {"fa": {"server.policy": "fedfa", "server.concurrency": 3, "server.window": 2}}
    study = {"name": "mini", "base": "base.yaml", "arms": arms}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    [cell] = plan(load_study(tmp_path / "study.yaml"), tmp_path / "runs")
    reference = tmp_path / "reference"
    run_experiment(cell.config, reference)

    polls = iter(range(7))  # the stop request comes at the 7th safe point
    partial = cell.folder.with_name("seed0.partial")
    with pytest.raises(Interrupted):
        run_experiment(cell.config, partial, interrupted=lambda: next(polls, -1) < 0)
    assert (partial / "checkpoint.safetensors").is_file() and not cell.done

    calls: list[bool] = []

    def run(config: ExperimentConfig, folder: Path, resume: bool) -> object:
        calls.append(resume)
        return run_experiment(config, folder, resume=resume)

    run_sweep([cell], run)
    assert calls == [True] and cell.done
    assert (cell.folder / "global.safetensors").read_bytes() == (
        reference / "global.safetensors"
    ).read_bytes()
