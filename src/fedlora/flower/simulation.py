"""The same ServerApp and ClientApp under Flower's simulation engine (Ray): one SuperNode per
client, ``partition-id`` K on node K, Ray actors that keep the ClientApp's resident model
between messages. The server keeps the simulator's virtual clock and takes replies in
modelled finish order (:mod:`fedlora.flower.grid_jobs`), so a run gives the in-process
simulator's event log for the same config and seed, with the jobs in flight trained in
parallel.

Ray listens on every interface: run it where that is acceptable, or in a loopback-only
network namespace (``unshare -rn`` with ``lo`` up), as the tests do.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedlora.config import ExperimentConfig
from fedlora.flower.client_app import app as client_app
from fedlora.flower.server_app import run_federation


def simulate(config: ExperimentConfig, folder: Path, cpus_per_client: float = 1.0) -> None:
    """Run ``config`` on Flower's simulation engine into ``folder`` (the simulator's files)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, folder, virtual_clock=True)

    run_simulation(
        server_app,
        client_app,
        num_supernodes=config.clients.num,
        backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}},
    )
