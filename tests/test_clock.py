"""A run's times are named by its runtime's clock: the simulators' virtual seconds, a
deployment's wall seconds, never wall seconds under a virtual name; the report, the plots and
time to target read either."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from fakes import run_cli, wall_clock
from local_grid import LocalGrid
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import build_config
from fedlora.flower.client_app import app as client_app
from fedlora.flower.server_app import run_federation
from fedlora.results.report import time_to_target
from fedlora.results.store import read_summary


def keys(value: Any) -> set[str]:
    """Every key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


@pytest.mark.slow
def test_a_deployment_writes_wall_times_and_the_simulator_virtual_ones(
    tmp_path: Path, tiny_config: dict
) -> None:
    raw = wall_clock(tiny_config)
    raw["server"]["rounds"] = 2
    grid = LocalGrid({k: client_app for k in range(4)})
    run_federation(grid, build_config(raw), tmp_path / "flower", wait_s=1.0)
    run_cli(tmp_path, raw, tmp_path / "sim")
    for run, clock in (("flower", "wall"), ("sim", "virtual")):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        with (tmp_path / run / "metrics.csv").open() as handle:
            columns = next(csv.reader(handle))
        assert summary["clock"] == clock
        assert (f"{clock}_time_s" in summary["final"]) and "wall_time_s" in summary
        assert ("virtual_time_s" in keys(summary)) == (clock == "virtual")
        assert ("virtual_time_s" in columns) == (clock == "virtual") and "wall_time_s" in columns
        assert summary["target"]["reached"]  # accuracy ≥ 0: at the first evaluation
        assert time_to_target(read_summary(tmp_path / run)) == summary["target"][f"{clock}_time_s"]
    report = CliRunner().invoke(
        app,
        ["report", str(tmp_path / "sim"), str(tmp_path / "flower"), "--out", str(tmp_path / "r")],
    )
    assert report.exit_code == 0, report.output
    assert (tmp_path / "r").is_dir() and any((tmp_path / "r").iterdir())
