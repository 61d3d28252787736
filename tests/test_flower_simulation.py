"""The same apps under Flower's simulation engine (Ray): FedAvg merges what the in-process
simulator merges. Ray listens on every interface, so the test re-runs itself inside a
loopback-only network namespace, and is skipped where none can be made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import assert_same_global, merged_jobs, run_cli

from fedlora.config import build_config

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


def test_fedavg_under_the_simulation_engine_merges_what_the_simulator_merges(
    tmp_path: Path, tiny_config: dict
) -> None:
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    if os.environ.get(INSIDE) != "1":
        rerun_in_loopback_namespace(
            "test_fedavg_under_the_simulation_engine_merges_what_the_simulator_merges"
        )
        return
    from fedlora.flower.simulation import simulate

    tiny_config["clients"]["ranks"] = [2, 4, 8, 4]
    tiny_config["server"] |= {"aggregator": "hlora"}
    simulate(build_config(tiny_config), tmp_path / "engine", cpus_per_client=1.0)
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    assert (
        merged_jobs(tmp_path / "engine")
        == merged_jobs(tmp_path / "sim")
        == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    )
    assert_same_global(tmp_path / "engine", tmp_path / "sim")
