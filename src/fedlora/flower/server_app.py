"""The ServerApp: one experiment as a federation of Flower SuperNodes, written to the same run
folder as the simulator's (config, events, metrics, summary, global adapter, PEFT ``adapter/``).

Run config keys (``flwr run ... --run-config``): ``config`` (the experiment's YAML file on the
server's machine), ``out`` (the run folder), ``wait-s`` (how long to wait for every client's
node to connect, default 120).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import ExperimentConfig, load_config, with_resolved_data_dir
from fedlora.experiment import evaluation_writer, prepare, read_start, write_results
from fedlora.flower.client_app import node_experiment
from fedlora.flower.grid_jobs import GridJobs
from fedlora.flower.grid_runtime import GridRuntime, discover_clients
from fedlora.results.events import EventLog
from fedlora.results.folders import claim_run_folder
from fedlora.results.store import EVENTS_FILE, write_config
from fedlora.server.build import build_core
from fedlora.sim.engine import build_simulation
from fedlora.sim.profiles import draw_profiles


def run_federation(
    grid: Grid,
    config: ExperimentConfig,
    folder: Path,
    wait_s: float = 120.0,
    virtual_clock: bool = False,
) -> dict[str, Any]:
    """Run ``config`` over ``grid`` into ``folder``; returns the summary.

    In wall-clock time, replies merged as they come; or, with ``virtual_clock`` (Flower's
    simulation engine), under the simulator's clock and cost model, the nodes only training:
    the in-process simulator's event log, with the jobs trained in parallel.

    The run holds ``folder`` as its one writer, as ``fedlora run`` does; a folder that already
    holds a run, or that another process is writing, is refused (``ConfigError`` or
    ``RunFolderError``) and left as it was.
    """
    prepared = prepare(config)
    with claim_run_folder(folder, overwrite=False):
        nodes = discover_clients(grid, config.clients.num, wait_s)
        write_config(folder, with_resolved_data_dir(config))
        read_start(folder, prepared)
        with EventLog(folder / EVENTS_FILE) as log:
            learner = prepared.learner
            sizes = [len(indices) for indices in prepared.data.client_train]
            written = evaluation_writer(folder, learner, None)
            if virtual_clock:
                jobs = GridJobs(grid, nodes, node_experiment(config))
                simulation = build_simulation(
                    config, learner, sizes, log, runner=jobs, progress=written
                )
                outcome = simulation.run()
            else:
                profiles = draw_profiles(config.clients, config.lora.r, config.seed)
                ranks = [p.rank for p in profiles]
                initial = learner.initial_state()
                core = build_core(config, initial, sizes, ranks, learner, log, progress=written)
                outcome = GridRuntime(grid, core, nodes, node_experiment(config)).run()
        return write_results(folder, prepared, outcome)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = context.run_config
    for key in ("config", "out"):
        if not run.get(key):  # deploy/flower's pyproject.toml defaults both to ""
            raise ValueError(f"run config: {key!r} is missing (flwr run --run-config '{key}=...')")
    config = load_config(str(run["config"]))
    run_federation(grid, config, Path(str(run["out"])), float(run.get("wait-s", 120.0)))
