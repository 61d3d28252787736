"""One experiment end to end: config in, run folder out.

Everything that can fail on bad input (config, data folder, files, metric names, ranks) is
checked before the first training step, so a mistake costs seconds, not a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlora import aggregation, policies
from fedlora.client.learner import ModelLearner
from fedlora.client.model import (
    build_resident_model,
    load_tokenizer,
    model_path,
    write_adapter_folder,
)
from fedlora.config import ConfigError, ExperimentConfig, resolve_data_dir
from fedlora.data.federated import FederatedData, prepare_data
from fedlora.data.tasks import TaskSpec
from fedlora.results.events import EventLog
from fedlora.results.plots import plot_curves
from fedlora.results.predictions import PREDICTIONS_FILE, write_predictions
from fedlora.results.store import (
    ADAPTER_DIR,
    CURVES_FILE,
    EVENTS_FILE,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
    write_config,
    write_run,
)
from fedlora.server import Outcome, ServerCore, Snapshot
from fedlora.sim.engine import Simulation
from fedlora.sim.profiles import draw_profiles


@dataclass(frozen=True)
class Prepared:
    """Everything a runtime needs, built and checked before any training."""

    config: ExperimentConfig
    data: FederatedData
    learner: ModelLearner

    @property
    def task(self) -> TaskSpec:
        return self.data.task


def prepare(config: ExperimentConfig) -> Prepared:
    resolve_data_dir(config)  # a missing data folder fails before the model loads
    if config.runtime.threads is not None:
        torch.set_num_threads(config.runtime.threads)
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
    known = [*data.task.metrics, "loss"]
    if config.eval.target is not None and config.eval.target.metric not in known:
        raise ConfigError(
            f"eval.target.metric: {config.eval.target.metric!r} is not reported for task"
            f" {data.task.name!r}; choose one of {', '.join(known)}"
        )
    model, _ = build_resident_model(
        config.model,
        config.lora,
        data.task.num_labels,
        config.seed,
        rank=config.global_rank,
        tokenizer=tokenizer,
    )
    learner = ModelLearner(
        model,
        data.train,
        data.eval,
        data.client_train,
        data.task.metrics,
        config,
        int(tokenizer.pad_token_id),
        data.client_test,
    )
    return Prepared(config, data, learner)


class Interrupted(Exception):
    """The run stopped at a safe point on request and left a checkpoint to resume from."""

    def __init__(self, folder: Path, steps: int) -> None:
        super().__init__(
            f"interrupted after {steps} server steps; resume with: fedlora run --resume {folder}"
        )
        self.folder = folder


def build_simulation(
    prepared: Prepared,
    log: EventLog,
    progress: Callable[[Outcome], None] | None = None,
    checkpoint: Callable[[Snapshot], None] | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> Simulation:
    """The prepared experiment as a simulation: a server core driven in virtual time."""
    config = prepared.config
    profiles = draw_profiles(config.clients, config.lora.r, config.seed)
    try:
        aggregator = aggregation.create(
            config.server.aggregator,
            config.lora,
            config.global_rank,
            config.server.aggregator_options,
        )
        aggregator.check_setup([p.rank for p in profiles], config.server)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    clients = [
        policies.ClientInfo(c, len(indices)) for c, indices in enumerate(prepared.data.client_train)
    ]
    policy = policies.create(config.server.policy, config.server, clients, config.seed)
    learner = prepared.learner
    core = ServerCore(
        config,
        aggregator,
        policy,
        learner.initial_state(),
        [p.rank for p in profiles],
        learner,
        log,
        progress,
    )
    return Simulation(config, learner, core, profiles, checkpoint, interrupted)


def run_experiment(
    config: ExperimentConfig,
    folder: Path,
    progress: Callable[[Outcome], None] | None = None,
    resume: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Prepare, simulate and write ``folder``; returns the summary.

    The whole run state is checkpointed into ``folder`` as it goes (``runtime.checkpoint_*``);
    ``resume`` continues from that checkpoint, with the same events, metrics and adapter as an
    uninterrupted run. ``interrupted`` is polled between completions: when it answers True the
    run checkpoints and raises :class:`Interrupted`.
    """
    snapshot = read_checkpoint(folder) if resume else None
    prepared = prepare(config)
    if snapshot is None:
        write_config(folder, config)
    log = EventLog(
        folder / EVENTS_FILE,
        resume_at=None if snapshot is None else snapshot.meta["events_offset"],
        wall_offset=0.0 if snapshot is None else snapshot.meta["wall"],
    )

    def save(snap: Snapshot) -> None:
        snap.meta.update(events_offset=log.sync(), wall=log.wall())
        write_checkpoint(folder, snap)

    with log:
        simulation = build_simulation(prepared, log, progress, save, interrupted)
        if snapshot is not None:
            simulation.load_state_dict(snapshot)
        outcome = simulation.run()
        if simulation.core.stopped == "interrupted":
            raise Interrupted(folder, outcome.steps)
    summary = write_run(folder, config, outcome, prepared.task)
    if prepared.learner.global_predictions is not None:
        write_predictions(folder / PREDICTIONS_FILE, prepared.learner.global_predictions)
    write_adapter_folder(
        outcome.global_state, folder / ADAPTER_DIR, config.lora, model_path(config.model.name)
    )
    curves = [e.metrics | {"step": e.step, "virtual_time_s": e.time} for e in outcome.evaluations]
    plot_curves({config.name: curves}, list(prepared.task.metrics), folder / CURVES_FILE)
    remove_checkpoint(folder)
    return summary
