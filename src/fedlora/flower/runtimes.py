"""The two Flower runtimes, as the composition root (:mod:`fedlora.experiment`) runs them.

``flower-sim`` (Flower's simulation engine): the simulator's virtual clock, cost model and
availability, each job trained on its client's node (:class:`~fedlora.flower.grid_jobs.GridJobs`),
checkpointed and resumed as the simulator is. ``flower`` (a deployment): wall-clock time,
replies merged as they come (:class:`~fedlora.flower.grid_runtime.GridRuntime`), checkpointed
too (a resumed run sends the jobs in flight again); the simulator's keys (its clock's limit
and grid, its speed, bandwidth and availability draws) mean nothing there and are refused.
"""

from __future__ import annotations

from flwr.serverapp import Grid

from fedlora.config import ExperimentConfig
from fedlora.flower.client_app import node_experiment
from fedlora.flower.grid_jobs import GridJobs
from fedlora.flower.grid_runtime import GridRuntime, discover_clients
from fedlora.outcome import Clock
from fedlora.runtimes import NODES_ONLY, Meaningless, Wiring, refuse
from fedlora.server.build import build_core
from fedlora.sim.engine import SimRuntime, Simulation

VIRTUAL_ONLY = (
    Meaningless("server.max_virtual_time", "a limit in virtual time; use server.max_steps"),
    Meaningless(
        "eval.grid_seconds", "no evaluation grid in wall time; use eval.every or every_seconds"
    ),
    Meaningless(
        "clients.rank_by", "speed: a simulated speed would rank real nodes", allowed=("node",)
    ),
    Meaningless("clients.speed", "real nodes train at their own speed"),
    Meaningless("clients.seconds_per_token", "the simulator's cost model"),
    Meaningless("clients.bandwidth_mbps", "the simulator's cost model"),
    Meaningless("clients.availability", "real nodes fail and leave on their own"),
)


def check_wall_clock(config: ExperimentConfig) -> None:
    """Refuse the simulator's keys, which mean nothing in a deployment's wall-clock time."""
    refuse(config, FlowerRuntime.name, VIRTUAL_ONLY)


class Federation:
    """The clients' nodes on ``grid``: found by their ``partition-id`` before the run folder
    is written, waiting up to ``wait_s`` for every client's node to connect."""

    def __init__(self, grid: Grid, wait_s: float = 120.0) -> None:
        self.grid = grid
        self.wait_s = wait_s
        self.nodes: dict[int, int] = {}

    def connect(self, config: ExperimentConfig) -> dict[int, int]:
        self.nodes, ranks = discover_clients(self.grid, config.clients.num, self.wait_s)
        return ranks


class FlowerSimRuntime(Federation):
    """The simulator in virtual time, each job trained on its client's node."""

    name = "flower-sim"
    clock: Clock = "virtual"

    def check(self, config: ExperimentConfig) -> None:
        """The simulator's clock: every key means what it means there; its nodes, one per
        client on this machine, report no ranks."""
        refuse(config, self.name, NODES_ONLY)

    def driver(self, wiring: Wiring) -> Simulation:
        jobs = GridJobs(self.grid, self.nodes, node_experiment(wiring.config))
        return SimRuntime(jobs).driver(wiring)


class FlowerRuntime(Federation):
    """Wall-clock time: each reply merged as it comes."""

    name = "flower"
    clock: Clock = "wall"

    def check(self, config: ExperimentConfig) -> None:
        check_wall_clock(config)

    def driver(self, wiring: Wiring) -> GridRuntime:
        config = wiring.config
        ranks = [p.rank for p in wiring.profiles]
        learner = wiring.learner
        core = build_core(
            config,
            learner.initial_state(),
            wiring.client_sizes,
            ranks,
            learner,
            wiring.log,
            progress=wiring.progress,
        )
        return GridRuntime(
            self.grid,
            core,
            self.nodes,
            node_experiment(config),
            checkpoint=wiring.checkpoint,
            interrupted=wiring.interrupted,
        )
