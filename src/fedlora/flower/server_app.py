"""The ServerApp: one experiment as a federation of Flower SuperNodes, written to the same run
folder as the simulator's (config, events, metrics, summary, global adapter, PEFT ``adapter/``).

Run config keys (``flwr run ... --run-config``): ``config`` (the experiment's YAML file on the
server's machine), ``out`` (the run folder), ``wait-s`` (how long to wait for every client's
node to connect, default 120), ``resume`` (true: continue the killed run in ``out`` from its
checkpoint, with its own config; no ``config`` then).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import ExperimentConfig, load_config
from fedlora.experiment import run_experiment
from fedlora.flower.runtimes import FlowerRuntime, FlowerSimRuntime
from fedlora.outcome import Outcome
from fedlora.results.run_summary import RunSummary
from fedlora.results.store import read_config


def run_federation(
    grid: Grid,
    config: ExperimentConfig,
    folder: Path,
    wait_s: float = 120.0,
    virtual_clock: bool = False,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[Outcome], None] | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Run ``config`` over ``grid`` into ``folder`` through the one composition root
    (:func:`~fedlora.experiment.run_experiment`); returns the summary.

    In wall-clock time, replies merged as they come (``--runtime flower``); or, with
    ``virtual_clock`` (Flower's simulation engine, ``--runtime flower-sim``), under the
    simulator's clock and cost model, the nodes only training: the in-process simulator's event
    log, with the jobs trained in parallel, checkpointed and resumable (``resume``) as the
    simulator's are.

    The run holds ``folder`` as its one writer, as ``fedlora run`` does; a folder that already
    holds a run (unless ``overwrite``), or that another process is writing, is refused
    (``ConfigError`` or ``RunFolderError``) and left as it was.
    """
    runtime = FlowerSimRuntime(grid, wait_s) if virtual_clock else FlowerRuntime(grid, wait_s)
    return run_experiment(config, folder, progress, resume, interrupted, overwrite, runtime)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = context.run_config
    resume = str(run.get("resume", False)).lower() == "true"
    for key in ("out",) if resume else ("config", "out"):
        if not run.get(key):  # deploy/flower's pyproject.toml defaults both to ""
            raise ValueError(f"run config: {key!r} is missing (flwr run --run-config '{key}=...')")
    folder = Path(str(run["out"]))
    config = read_config(folder) if resume else load_config(str(run["config"]))
    run_federation(grid, config, folder, float(run.get("wait-s", 120.0)), resume=resume)
