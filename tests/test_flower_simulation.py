"""The same apps under Flower's simulation engine (Ray): the in-process simulator's event log,
for a classifier and for an instruction task (a causal LM). Ray listens on every interface, so
each test re-runs itself inside a loopback-only network namespace, and is skipped where none can
be made."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import assert_same_global, run_cli
from instruct_data import instruct_config
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import build_config
from fedlora.results.events import read_events
from fedlora.results.store import CHECKPOINT_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

INSIDE = "FEDLORA_LOOPBACK_ONLY"  # set in the namespace this test re-runs itself in


def rerun_in_loopback_namespace(test: str) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip are needed for a loopback-only namespace (Ray must not listen)")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no loopback-only network namespace here (unshare -rn: {probe.stderr!r})")
    command = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider"
        f" {Path(__file__).resolve()}::{test}"
    )
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", command],
        env=os.environ | {INSIDE: "1"},
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_fedfa_under_the_simulation_engine_logs_what_the_simulator_logs(
    tmp_path: Path, tiny_config: dict
) -> None:
    """``fedlora run --runtime flower-sim`` against ``--runtime sim`` (the default), for
    FedFa: asynchronous, heterogeneous ranks, lost jobs. The engine's nodes finish in whatever
    order, yet the server takes their results in virtual-time order, so the event log (wall
    times aside) and the global adapter are the in-process simulator's."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_fedfa_under_the_simulation_engine_logs_what_the_simulator_logs"
    if os.environ.get(INSIDE) != "1":
        rerun_in_loopback_namespace(test)
        return
    tiny_config["clients"] |= {"ranks": [2, 4, 8, 4], "availability": {"failure_prob": 0.2}}
    tiny_config["server"] = {"policy": "fedfa", "aggregator": "hlora", "concurrency": 3,
                             "window": 2, "rounds": 3}  # fmt: skip
    run_cli(tmp_path, tiny_config, tmp_path / "engine", "--runtime", "flower-sim")
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    sim = events_without_wall(tmp_path / "sim")
    assert {e["type"] for e in sim} >= {"dispatch", "arrival", "merge", "lost", "eval"}
    assert_same_events(tmp_path / "engine", tmp_path / "sim")
    assert_same_global(tmp_path / "engine", tmp_path / "sim")


def test_a_flower_sim_run_stopped_and_resumed_ends_as_an_uninterrupted_run(
    tmp_path: Path, tiny_config: dict
) -> None:
    """FedAvg on the engine, stopped at a safe point after three completions (a checkpoint)
    and continued by ``fedlora run --resume DIR --runtime flower-sim``: the uninterrupted
    simulator's event log and global adapter."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_a_flower_sim_run_stopped_and_resumed_ends_as_an_uninterrupted_run"
    if os.environ.get(INSIDE) != "1":
        rerun_in_loopback_namespace(test)
        return
    from fedlora.experiment import Interrupted
    from fedlora.flower.simulation import simulate

    engine = tmp_path / "engine"
    polls = itertools.count()
    with pytest.raises(Interrupted, match=r"interrupted after \d+ server steps"):
        simulate(build_config(tiny_config), engine, interrupted=lambda: next(polls) >= 3)
    assert (engine / CHECKPOINT_FILE).is_file() and not (engine / "summary.json").exists()
    resumed = CliRunner().invoke(
        app, ["run", "--resume", str(engine), "--runtime", "flower-sim", "--quiet"]
    )
    assert resumed.exit_code == 0, resumed.output
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    assert_same_events(engine, tmp_path / "sim")
    assert_same_global(engine, tmp_path / "sim")


def test_an_instruction_task_under_the_simulation_engine_logs_what_the_simulator_logs(
    tmp_path: Path,
) -> None:
    """A causal LM on the engine's nodes (FedAvg, 3 rounds of 3 of 4 clients): the response
    loss metrics, per-evaluation predictions and event log of the in-process simulator."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_an_instruction_task_under_the_simulation_engine_logs_what_the_simulator_logs"
    if os.environ.get(INSIDE) != "1":
        rerun_in_loopback_namespace(test)
        return
    from fedlora.flower.simulation import simulate

    raw = instruct_config(tmp_path)
    raw["data"] |= {"max_length": 32, "max_eval_examples": 12}
    simulate(build_config(raw), tmp_path / "engine", cpus_per_client=1.0)
    run_cli(tmp_path, raw, tmp_path / "sim")
    assert_same_events(tmp_path / "engine", tmp_path / "sim")
    assert_same_global(tmp_path / "engine", tmp_path / "sim")
    summary = json.loads((tmp_path / "engine" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["jobs_lost"] == 0
    assert {"loss", "perplexity", "category.open_qa.loss", "length.short.loss"} <= set(
        summary["final"]
    )
    assert sorted(p.name for p in (tmp_path / "engine" / "predictions").iterdir()) == sorted(
        p.name for p in (tmp_path / "sim" / "predictions").iterdir()
    )


def assert_same_events(run: Path, other: Path) -> None:
    """The same events in the same order: floats within rounding, everything else equal."""
    ours, theirs = events_without_wall(run), events_without_wall(other)
    assert [e["type"] for e in ours] == [e["type"] for e in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        floats = [k for k, v in reference.items() if isinstance(v, float)]
        assert [mine[k] for k in floats] == pytest.approx(
            [reference[k] for k in floats], rel=1e-4, abs=1e-5
        )
        assert {k: v for k, v in mine.items() if k not in floats} == {
            k: v for k, v in reference.items() if k not in floats
        }


def events_without_wall(run: Path) -> list[dict]:
    """A run's events, wall times left out and nested fields flattened ("metrics.loss"), so
    that floats compare approximately: one process's training may differ from another's in
    the last bits; everything else must be equal."""

    def flat(fields: dict, prefix: str = "") -> dict:
        out: dict = {}
        for key, value in fields.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            elif key != "wall":
                out[prefix + key] = value
        return out

    return [flat(e) for e in read_events(run / "events.jsonl")]
