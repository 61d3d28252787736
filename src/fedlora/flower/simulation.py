"""``fedlora run --runtime flower-sim``: the ServerApp and ClientApp under Flower's simulation
engine (Ray), in this process: one SuperNode per client, ``partition-id`` K on node K, Ray
actors that keep the ClientApp's resident model between messages. The server keeps the
simulator's virtual clock and takes replies in modelled finish order
(:mod:`fedlora.flower.grid_jobs`), so a run gives the in-process simulator's event log for the
same config and seed, with the jobs in flight trained in parallel; it checkpoints and resumes
as the simulator does (the same checkpoint: either runtime may continue the other's run).

Ray listens on every interface: run it where that is acceptable, or in a loopback-only
network namespace (``unshare -rn`` with ``lo`` up), as the tests do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedlora.config import ExperimentConfig
from fedlora.flower.client_app import app as client_app
from fedlora.flower.server_app import run_federation
from fedlora.outcome import Outcome
from fedlora.results.run_summary import RunSummary


def simulate(
    config: ExperimentConfig,
    folder: Path,
    cpus_per_client: float = 1.0,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[Outcome], None] | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Run ``config`` on Flower's simulation engine into ``folder`` (the simulator's files);
    returns the summary. ``resume``, ``progress`` and ``interrupted`` are
    :func:`~fedlora.experiment.run_experiment`'s; an exception in the ServerApp (a refused
    folder, :class:`~fedlora.experiment.Interrupted`) is raised here."""
    server_app = ServerApp()
    summaries: list[RunSummary] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        summaries.append(
            run_federation(
                grid,
                config,
                folder,
                virtual_clock=True,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                interrupted=interrupted,
            )
        )

    run_simulation(
        server_app,
        client_app,
        num_supernodes=config.clients.num,
        backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}},
    )
    if not summaries:  # Flower logs a ServerApp's failure and may return without raising it
        raise RuntimeError(f"the ServerApp of {folder} ended without a summary")
    return summaries[0]
