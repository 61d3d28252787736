"""The Flower runtime over an in-process Grid (no sockets, no Ray): the ServerApp's loop and the
real ClientApp on a tiny random BERT, every policy, heterogeneous ranks, and the ways a job is
lost (the ClientApp raises, its node never answers, its node leaves)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import assert_same_global, merged_jobs, run_cli, wall_clock
from flwr.app import Context, Message, RecordDict
from local_grid import ClientCall, LocalGrid
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import ConfigError, build_config
from fedlora.flower.client_app import app as client_app
from fedlora.flower.client_app import train_content
from fedlora.flower.grid_runtime import FederationError, discover_clients
from fedlora.flower.records import JobFields
from fedlora.flower.runtimes import FlowerSimRuntime
from fedlora.flower.server_app import run_federation
from fedlora.results.events import read_events
from fedlora.results.store import CHECKPOINT_FILE


@pytest.fixture
def flower_config(tiny_config: dict) -> dict:
    tiny_config["clients"]["ranks"] = [2, 4, 8, 4]
    tiny_config["server"] |= {"aggregator": "hlora", "concurrency": 3, "window": 2}
    return wall_clock(tiny_config)


def federate(raw: dict, out: Path, apps: dict[int, ClientCall] | None = None) -> dict[str, Any]:
    config = build_config(raw)
    calls: dict[int, ClientCall] = {k: client_app for k in range(config.clients.num)}
    return run_federation(LocalGrid(calls | (apps or {})), config, out, wait_s=1.0)


def raises(message: Message, context: Context) -> Message:
    if message.metadata.message_type == "query":
        return client_app(message, context)
    raise RuntimeError("out of memory")


def never_answers(message: Message, context: Context) -> Message | None:
    return client_app(message, context) if message.metadata.message_type == "query" else None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "aggregator"), [("fedavg", "hlora"), ("fedbuff", "zeropad"), ("fedfa", "hlora")]
)
def test_each_policy_finishes_with_heterogeneous_ranks(
    tmp_path: Path, flower_config: dict, policy: str, aggregator: str
) -> None:
    flower_config["server"] |= {"policy": policy, "aggregator": aggregator}
    summary = federate(flower_config, tmp_path / "run")
    assert summary.rounds == 3 and summary.stop_reason == "3 rounds reached"
    assert summary.jobs_lost == 0 and summary.updates_rejected == 0
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "config.yaml", "events.jsonl", "metrics.csv", "summary.json", "global.safetensors",
        "adapter",
    }  # fmt: skip
    events = read_events(tmp_path / "run" / "events.jsonl")
    dispatches = [e for e in events if e["type"] == "dispatch"]
    assert {e["rank"] for e in dispatches} == {2, 4, 8}
    assert all(e["node"] == 1000 + e["client"] for e in dispatches)
    assert all(e["wire_bytes"] > e["bytes"] > 0 for e in dispatches)  # NumPy headers on top
    times = [e["t"] for e in events]
    assert times == sorted(times)


@pytest.mark.slow
def test_fedavg_over_flower_merges_what_the_simulator_merges(
    tmp_path: Path, flower_config: dict
) -> None:
    """Same jobs, same batches, same seeds: the same rounds and (up to summation order) the
    same global adapter as the in-process simulator."""
    federate(flower_config, tmp_path / "flower")
    run_cli(tmp_path, flower_config, tmp_path / "sim")
    assert (
        merged_jobs(tmp_path / "flower")
        == merged_jobs(tmp_path / "sim")
        == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    )
    assert_same_global(tmp_path / "flower", tmp_path / "sim")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["fedavg", "fedfa"])
def test_a_client_app_that_raises_is_a_lost_job_not_a_crash(
    tmp_path: Path, flower_config: dict, policy: str
) -> None:
    flower_config["server"]["policy"] = policy
    summary = federate(flower_config, tmp_path / "run", {1: raises})
    assert summary.rounds == 3 and summary.jobs_lost >= 1
    lost = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "lost"]
    assert {e["client"] for e in lost} == {1}
    assert all("RuntimeError: out of memory" in e["reason"] for e in lost)


def slow(message: Message, context: Context) -> Message | None:
    """An honest node that takes at least 0.25 s of wall time for a job."""
    if message.metadata.message_type != "query":
        time.sleep(0.25)
    return client_app(message, context)


@pytest.mark.slow
def test_a_silent_node_times_out_and_fedfa_carries_on(tmp_path: Path, flower_config: dict) -> None:
    """Every node is at work from the start, so the silent one holds a job; three merges of
    two updates need six results from three honest nodes, two waves of at least 0.25 s each:
    the run outlasts the 0.3 s timeout on any machine, however fast."""
    flower_config["server"] |= {"policy": "fedfa", "job_timeout": 0.3, "concurrency": 4}
    summary = federate(
        flower_config, tmp_path / "run", {0: slow, 1: slow, 2: never_answers, 3: slow}
    )
    assert summary.rounds == 3 and summary.jobs_lost >= 1
    lost = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "lost"]
    assert {e["client"] for e in lost} == {2}
    assert all(e["reason"] == "no result within job_timeout 0.3s" for e in lost)


@pytest.mark.slow
def test_a_node_that_leaves_loses_its_jobs(tmp_path: Path, flower_config: dict) -> None:
    # synchronous rounds of every client: the run can only go on once the departure is noticed
    server = flower_config["server"] | {"policy": "fedavg", "aggregator": "hlora", "per_round": 4}
    config = build_config(flower_config | {"server": server})
    calls: dict[int, ClientCall] = {k: client_app for k in range(4)}
    grid = LocalGrid(calls)

    def leaves(message: Message, context: Context) -> Message | None:
        if message.metadata.message_type == "query":
            return client_app(message, context)
        grid.remove(context.node_id)
        return None

    grid = LocalGrid(calls | {3: leaves})
    summary = run_federation(grid, config, tmp_path / "run", wait_s=1.0)
    assert summary.rounds == 3 and summary.jobs_lost >= 1
    lost = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "lost"]
    assert lost and all(e["reason"] == "node 1003 left the federation" for e in lost)


def test_a_missing_partition_is_named_before_any_training(flower_config: dict) -> None:
    calls: dict[int, ClientCall] = {k: client_app for k in (0, 1, 3)}
    with pytest.raises(FederationError, match=r"no node holds partition-id \[2\] after 0.2s"):
        discover_clients(LocalGrid(calls), 4, wait_s=0.2)


def test_a_job_for_another_partition_is_refused(flower_config: dict) -> None:
    content = RecordDict()
    JobFields(job=0, client=2, version=0, rank=4).put(content)
    with pytest.raises(ValueError, match="job 0 is for client 2, this node holds partition 1"):
        train_content(content, partition=1)


@pytest.mark.slow
def test_the_run_folder_reports_like_the_simulators(tmp_path: Path, flower_config: dict) -> None:
    federate(flower_config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policy"] == "fedavg" and summary["bytes_up"] == summary["bytes_down"] > 0


def test_the_simulators_keys_are_refused_in_wall_clock_time(
    tmp_path: Path, flower_config: dict
) -> None:
    """Under the wall-clock runtime a key only the simulator reads is refused, with its
    reason, before the run folder is touched; under the simulation engine it is kept."""
    flower_config["server"]["max_virtual_time"] = 100.0
    flower_config["clients"] |= {"ranks": {2: 0.5, 4: 0.5}, "rank_by": "speed"}
    with pytest.raises(ConfigError) as refused:
        federate(flower_config, tmp_path / "run")
    assert str(refused.value) == (
        "--runtime flower: server.max_virtual_time (a limit in virtual time; use"
        " server.max_steps); clients.rank_by (speed: a simulated speed would rank real nodes):"
        " these keys mean nothing under this runtime; remove them from the config, or run"
        " under --runtime sim"
    )
    assert not (tmp_path / "run").exists()
    FlowerSimRuntime(LocalGrid({})).check(build_config(flower_config))


def test_fedlora_run_checks_a_config_for_a_deployment_and_names_the_flwr_command(
    tmp_path: Path, flower_config: dict
) -> None:
    config_file = tmp_path / "flower.yaml"
    config_file.write_text(yaml.safe_dump(flower_config | {"eval": {"grid_seconds": 5.0}}))
    command = ["run", str(config_file), "--runtime", "flower", "--out", str(tmp_path / "run")]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and "eval.grid_seconds (no evaluation grid" in refused.output
    config_file.write_text(yaml.safe_dump(flower_config))
    named = CliRunner().invoke(app, command)
    assert named.exit_code == 2 and "flwr run deploy/flower NAME" in named.output
    assert f'config="{config_file.resolve()}"' in named.output
    assert not (tmp_path / "run").exists()


class DyingGrid(LocalGrid):
    """A Grid whose SuperLink goes away at the ``dies_at``-th pull: the ServerApp crashes."""

    def __init__(self, apps: dict[int, ClientCall], dies_at: int) -> None:
        super().__init__(apps)
        self.pulls = itertools.count(1)
        self.dies_at = dies_at

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        if next(self.pulls) == self.dies_at:
            raise ConnectionError("the SuperLink went away")
        return super().pull_messages(message_ids)


@pytest.mark.slow
def test_a_crashed_fedavg_federation_resumed_ends_as_an_uninterrupted_one(
    tmp_path: Path, flower_config: dict
) -> None:
    """The ServerApp dies mid-round (its SuperLink goes away) with jobs in flight; run again
    with ``resume``, over a fresh grid, it sends those jobs again and ends with the merges and
    the global adapter of an uninterrupted run: none lost, none merged twice."""
    flower_config["runtime"] = {"checkpoint_every": 1}
    config = build_config(flower_config)
    apps: dict[int, ClientCall] = {k: client_app for k in range(config.clients.num)}
    run = tmp_path / "run"
    with pytest.raises(ConnectionError):  # pulls: the nodes' partitions, round 1, round 2
        run_federation(DyingGrid(apps, dies_at=3), config, run, wait_s=1.0)
    assert (run / CHECKPOINT_FILE).is_file() and merged_jobs(run) == [[0, 1, 2]]
    named = CliRunner().invoke(app, ["run", "--resume", str(run), "--runtime", "flower"])
    assert named.exit_code == 2 and f'out="{run.resolve()}" resume=true' in named.output
    summary = run_federation(LocalGrid(apps), config, run, wait_s=1.0, resume=True)
    federate(flower_config, tmp_path / "whole")
    assert summary.rounds == 3 and summary.jobs_lost == 0
    assert merged_jobs(run) == merged_jobs(tmp_path / "whole") == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert_same_global(run, tmp_path / "whole")
    events = read_events(run / "events.jsonl")
    assert [e["job"] for e in events if e["type"] == "dispatch"] == list(range(9))
    times = [e["t"] for e in events]
    assert times == sorted(times)  # wall seconds go on from the checkpoint's
