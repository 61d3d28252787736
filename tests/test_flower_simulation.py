"""The same apps under Flower's simulation engine (Ray): the in-process simulator's event log.
Ray listens on every interface, so the test re-runs itself inside a loopback-only network
namespace, and is skipped where none can be made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import assert_same_global, run_cli

from fedlora.config import build_config
from fedlora.results.events import read_events

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
    """Asynchronous, heterogeneous ranks, lost jobs: the engine's nodes finish in whatever
    order, yet the server takes their results in virtual-time order, so the event log (wall
    times aside) and the global adapter are the in-process simulator's."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_fedfa_under_the_simulation_engine_logs_what_the_simulator_logs"
    if os.environ.get(INSIDE) != "1":
        rerun_in_loopback_namespace(test)
        return
    from fedlora.flower.simulation import simulate

    tiny_config["clients"] |= {"ranks": [2, 4, 8, 4], "availability": {"failure_prob": 0.2}}
    tiny_config["server"] = {"policy": "fedfa", "aggregator": "hlora", "concurrency": 3,
                             "window": 2, "rounds": 3}  # fmt: skip
    simulate(build_config(tiny_config), tmp_path / "engine", cpus_per_client=1.0)
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    engine, sim = (events_without_wall(tmp_path / run) for run in ("engine", "sim"))
    assert [e["type"] for e in engine] == [e["type"] for e in sim]
    assert {e["type"] for e in sim} >= {"dispatch", "arrival", "merge", "lost", "eval"}
    for ours, theirs in zip(engine, sim, strict=True):
        assert ours.keys() == theirs.keys()
        floats = [k for k, v in theirs.items() if isinstance(v, float)]
        assert [ours[k] for k in floats] == pytest.approx(
            [theirs[k] for k in floats], rel=1e-4, abs=1e-5
        )
        assert {k: v for k, v in ours.items() if k not in floats} == {
            k: v for k, v in theirs.items() if k not in floats
        }
    assert_same_global(tmp_path / "engine", tmp_path / "sim")


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
