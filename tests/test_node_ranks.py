"""``clients.rank_by: node``: in a deployment each client trains the rank its node reports
(``--node-config 'partition-id=K rank=R'``), not one drawn by the simulator; the experiment
assigns it, a node that reports none or too large a rank is named, and the runtimes without
nodes refuse the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import wall_clock
from local_grid import LocalGrid

from fedlora.config import ConfigError, build_config
from fedlora.flower.client_app import app as client_app
from fedlora.flower.grid_runtime import discover_clients
from fedlora.flower.runtimes import FlowerRuntime, FlowerSimRuntime
from fedlora.flower.server_app import run_federation
from fedlora.profiles import draw_profiles
from fedlora.results.events import read_events
from fedlora.sim.engine import SimRuntime

NODE_RANKS = {0: 2, 1: 8, 2: 4, 3: 8}


@pytest.fixture
def by_node(tiny_config: dict) -> dict:
    tiny_config["clients"]["rank_by"] = "node"
    tiny_config["lora"]["r"] = 8
    tiny_config["server"] |= {"aggregator": "hlora", "rounds": 1, "per_round": 4}
    return wall_clock(tiny_config)


def grid(ranks: dict[int, int]) -> LocalGrid:
    return LocalGrid({k: client_app for k in range(4)}, {k: {"rank": r} for k, r in ranks.items()})


def test_the_nodes_report_their_ranks_and_the_profiles_take_them(by_node: dict) -> None:
    clients = build_config(by_node).clients
    nodes, reported = discover_clients(grid(NODE_RANKS), 4, wait_s=1.0)
    assert reported == NODE_RANKS and sorted(nodes) == [0, 1, 2, 3]
    assert [p.rank for p in draw_profiles(clients, 8, 0, reported)] == [2, 8, 4, 8]
    _, none = discover_clients(LocalGrid({k: client_app for k in range(4)}), 4, wait_s=1.0)
    assert none == {}


def test_a_node_without_a_rank_or_with_too_large_a_one_is_named(by_node: dict) -> None:
    clients = build_config(by_node).clients
    with pytest.raises(ConfigError, match=r"the nodes of clients \[1, 3\] report no rank"):
        draw_profiles(clients, 8, 0, {0: 2, 2: 4})
    with pytest.raises(ConfigError, match=r"clients \[1\] report ranks \[16\], outside 1 … 8"):
        draw_profiles(clients, 8, 0, NODE_RANKS | {1: 16})


@pytest.mark.slow
def test_a_deployed_run_trains_each_client_at_its_nodes_rank(tmp_path: Path, by_node: dict) -> None:
    run_federation(grid(NODE_RANKS), build_config(by_node), tmp_path / "run", wait_s=1.0)
    sent = {e["client"]: e["rank"] for e in read_events(tmp_path / "run" / "events.jsonl")
            if e["type"] == "dispatch"}  # fmt: skip
    assert sent == NODE_RANKS


def test_ranks_an_aggregator_cannot_merge_are_refused_naming_the_nodes_ranks(
    tmp_path: Path, by_node: dict
) -> None:
    by_node["server"]["aggregator"] = "fedavg"  # one rank for all: 2, 4 and 8 cannot average
    with pytest.raises(
        ConfigError, match=r"clients.rank_by: node: the nodes report ranks \[2, 4, 8\]"
    ):
        run_federation(grid(NODE_RANKS), build_config(by_node), tmp_path / "run", wait_s=1.0)


def test_only_a_deployment_has_nodes_to_report_ranks(by_node: dict) -> None:
    config = build_config(by_node)
    FlowerRuntime(LocalGrid({})).check(config)
    for runtime in (SimRuntime(), FlowerSimRuntime(LocalGrid({}))):
        with pytest.raises(ConfigError, match=f"--runtime {runtime.name}: clients.rank_by \\(node"):
            runtime.check(config)
    with pytest.raises(ConfigError, match=r"clients\.ranks: under clients\.rank_by: node"):
        build_config(by_node | {"clients": by_node["clients"] | {"ranks": [2, 2, 4, 4]}})
