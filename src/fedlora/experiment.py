"""One experiment end to end: config in, run folder out.

Everything that can fail on bad input is checked by :mod:`fedlora.preflight` before the model
loads, so a mistake costs seconds, not a run.
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
from fedlora.config import ExperimentConfig
from fedlora.data.federated import FederatedData, prepare_data
from fedlora.data.tasks import TaskSpec
from fedlora.preflight import check
from fedlora.results.events import EventLog
from fedlora.results.plots import plot_curves
from fedlora.results.store import (
    ADAPTER_DIR,
    CURVES_FILE,
    EVENTS_FILE,
    write_config,
    write_run,
)
from fedlora.sim.engine import Outcome, Simulation
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
    check(config)  # every mistake fails before the model loads
    if config.runtime.threads is not None:
        torch.set_num_threads(config.runtime.threads)
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
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


def simulate(
    prepared: Prepared, log: EventLog, progress: Callable[[Outcome], None] | None = None
) -> Outcome:
    """Run the prepared experiment in the simulator."""
    config = prepared.config
    profiles = draw_profiles(config.clients, config.lora.r, config.seed)
    aggregator = aggregation.create(
        config.server.aggregator, config.lora, config.global_rank, config.server.aggregator_options
    )
    clients = [
        policies.ClientInfo(c, len(indices)) for c, indices in enumerate(prepared.data.client_train)
    ]
    policy = policies.create(config.server.policy, config.server, clients, config.seed)
    return Simulation(config, prepared.learner, aggregator, policy, profiles, log, progress).run()


def run_experiment(
    config: ExperimentConfig, folder: Path, progress: Callable[[Outcome], None] | None = None
) -> dict[str, Any]:
    """Prepare, simulate and write ``folder``; returns the summary."""
    prepared = prepare(config)
    write_config(folder, config)
    with EventLog(folder / EVENTS_FILE) as log:
        outcome = simulate(prepared, log, progress)
    summary = write_run(folder, config, outcome, prepared.task)
    write_adapter_folder(
        outcome.global_state, folder / ADAPTER_DIR, config.lora, model_path(config.model.name)
    )
    curves = [e.metrics | {"step": e.step, "virtual_time_s": e.time} for e in outcome.evaluations]
    plot_curves({config.name: curves}, list(prepared.task.metrics), folder / CURVES_FILE)
    return summary
