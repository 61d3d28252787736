"""One experiment end to end: config in, run folder out.

Everything that can fail on bad input (config, data folder, files, metric names, ranks) is
checked before the first training step, so a mistake costs seconds, not a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlora import aggregation, policies
from fedlora.client.learner import ModelLearner
from fedlora.client.model import build_resident_model, model_path, write_adapter_folder
from fedlora.config import ConfigError, ExperimentConfig, resolve_data_dir
from fedlora.data.encoding import EncodedSplit, encode_split
from fedlora.data.partition import partition
from fedlora.data.sources import LabelledSplit, load_split
from fedlora.data.tasks import TaskSpec
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


def _subset(split: LabelledSplit, limit: int | None, seed: int) -> LabelledSplit:
    """A seeded random subset (in file order) for quick runs; the whole split when no limit."""
    if limit is None or limit >= len(split.examples):
        return split
    keep = np.sort(np.random.default_rng([seed, 3]).choice(len(split.examples), limit, False))
    examples = [split.examples[i] for i in keep]
    return LabelledSplit(
        split.task, split.split, examples, split.origin, f"{split.fingerprint}:{limit}:{seed}"
    )


@dataclass(frozen=True)
class Prepared:
    """Everything a runtime needs, built and checked before any training."""

    config: ExperimentConfig
    task: TaskSpec
    learner: ModelLearner
    client_indices: list[np.ndarray]


def prepare(config: ExperimentConfig) -> Prepared:
    data_dir = resolve_data_dir(config)
    seed = config.seed
    train_split = _subset(
        load_split(config.data, data_dir, "train"), config.data.max_train_examples, seed
    )
    eval_split = _subset(
        load_split(config.data, data_dir, config.eval.split), config.data.max_eval_examples, seed
    )
    task = train_split.task
    known = [*task.metrics, "loss"]
    if config.eval.target is not None and config.eval.target.metric not in known:
        raise ConfigError(
            f"eval.target.metric: {config.eval.target.metric!r} is not reported for task"
            f" {task.name!r}; choose one of {', '.join(known)}"
        )
    if config.runtime.threads is not None:
        torch.set_num_threads(config.runtime.threads)
    model, tokenizer = build_resident_model(
        config.model, config.lora, task.num_labels, seed, rank=config.global_rank
    )

    def encode(split: LabelledSplit) -> EncodedSplit:
        return encode_split(split, tokenizer, config.data.max_length, config.data.cache_dir)

    train_data, eval_data = encode(train_split), encode(eval_split)
    client_indices = partition(
        train_data.labels.numpy(), config.clients.num, config.data.partition, seed
    )
    learner = ModelLearner(
        model,
        train_data,
        eval_data,
        client_indices,
        task.metrics,
        config,
        int(tokenizer.pad_token_id),
    )
    return Prepared(config, task, learner, client_indices)


def simulate(
    prepared: Prepared, log: EventLog, progress: Callable[[Outcome], None] | None = None
) -> Outcome:
    """Run the prepared experiment in the simulator."""
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
        policies.ClientInfo(c, len(indices)) for c, indices in enumerate(prepared.client_indices)
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
