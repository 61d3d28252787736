"""One experiment end to end: config in, run folder out.

Everything that can fail on bad input is checked by :mod:`fedlora.preflight` before the model
loads, so a mistake costs seconds, not a run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedlora.client import quality
from fedlora.client.learner import ModelLearner
from fedlora.client.model import (
    ResidentModel,
    load_tokenizer,
    model_path,
    run_resident_model,
    write_adapter_folder,
)
from fedlora.client.readouts import Reader
from fedlora.config import ExperimentConfig, with_resolved_data_dir
from fedlora.data.choices import configured_questions
from fedlora.data.federated import FederatedData, prepare_data
from fedlora.data.tasks import TaskSpec
from fedlora.outcome import Clock, Outcome
from fedlora.preflight import check, check_node_ranks
from fedlora.profiles import draw_profiles
from fedlora.results.events import EventLog
from fedlora.results.folders import claim_run_folder, hold_run_folder
from fedlora.results.plots import plot_curves, run_title
from fedlora.results.predictions import (
    PREDICTIONS_FILE,
    read_predictions,
    step_predictions_path,
    write_predictions,
)
from fedlora.results.readouts import (
    FINAL,
    START,
    choices_summary,
    loss_change_summary,
    read_readout,
    write_generations,
    write_readout,
)
from fedlora.results.run_summary import RunSummary
from fedlora.results.store import (
    ADAPTER_DIR,
    CURVES_FILE,
    EVENTS_FILE,
    checkpoint_mark,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
    write_config,
    write_run,
)
from fedlora.results.summary import summarize
from fedlora.runtimes import Runtime, Wiring
from fedlora.sim.engine import SimRuntime
from fedlora.snapshot import Snapshot


@dataclass(frozen=True)
class Prepared:
    """Everything a runtime needs, built and checked before any training."""

    config: ExperimentConfig
    data: FederatedData
    learner: ModelLearner
    reader: Reader | None = None  # eval.choices / eval.generate, at the start and the end

    @property
    def task(self) -> TaskSpec:
        return self.data.task


def prepare(config: ExperimentConfig) -> Prepared:
    check(config)  # every mistake fails before the model loads
    if config.runtime.threads is not None:
        torch.set_num_threads(config.runtime.threads)
    tokenizer = load_tokenizer(config.model)

    @functools.cache
    def model_for(num_labels: int | None) -> ResidentModel:
        """The backbone, built once: a partition by a model score (causal) builds it first."""
        return run_resident_model(config, tokenizer, num_labels)

    scorer = None
    if quality.needed(config):
        scorer = quality.perplexity_scorer(config, tokenizer, lambda: model_for(None))
    data = prepare_data(config, tokenizer, scorer)
    model = model_for(None if data.task.causal else data.task.num_labels)
    learner = ModelLearner(
        model,
        data.train,
        data.eval,
        data.client_train,
        data.task,
        config,
        int(tokenizer.pad_token_id),
        data.client_test,
        data.eval_ids,
    )
    reader = None
    if config.eval.choices is not None or config.eval.generate is not None:
        questions = configured_questions(config)
        reader = Reader(model, tokenizer, config, questions, learner.bf16)
    return Prepared(config, data, learner, reader)


def read_start(folder: Path, prepared: Prepared) -> None:
    """The base model's readout, before any training (a fresh LoRA adds nothing to it)."""
    if prepared.reader is not None:
        initial = prepared.reader.read(prepared.learner.initial_state(), 0)
        write_readout(folder, START, initial)


class Interrupted(Exception):
    """The run stopped at a safe point on request and left a checkpoint to resume from."""

    def __init__(self, folder: Path, steps: int, runtime: str = "sim") -> None:
        command = resume_command(folder, runtime)
        super().__init__(f"interrupted after {steps} server steps; resume with: {command}")
        self.folder = folder


def resume_command(folder: Path, runtime: str) -> str:
    """The command that continues the run in ``folder`` under ``runtime``."""
    option = "" if runtime == "sim" else f" --runtime {runtime}"
    return f"fedlora run --resume {folder}{option}"


def run_experiment(
    config: ExperimentConfig,
    folder: Path,
    progress: Callable[[Outcome], None] | None = None,
    resume: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
    overwrite: bool = False,
    runtime: Runtime | None = None,
) -> RunSummary:
    """Prepare, run under ``runtime`` (default: the simulator) and write ``folder``; returns
    the summary. The one composition root: every runtime runs through it.

    The run holds ``folder`` as its one writer from start to end: a new run claims it
    (:func:`~fedlora.results.folders.claim_run_folder`; ``overwrite`` replaces a run there, so
    pass it only once ``config`` passed :func:`~fedlora.preflight.check`), a resumed one must
    find no other process in it. The whole run state is checkpointed into ``folder`` as it goes
    (``runtime.checkpoint_*``); ``resume`` continues from that checkpoint, verified, with the
    same events, metrics and adapter as an uninterrupted run. ``interrupted`` is polled between
    completions: when it answers True the run checkpoints and raises :class:`Interrupted`.
    A key that means nothing under ``runtime`` is refused before anything is written.
    """
    runtime = runtime if runtime is not None else SimRuntime()
    runtime.check(config)
    with hold_run_folder(folder) if resume else claim_run_folder(folder, overwrite):
        snapshot = read_checkpoint(folder) if resume else None
        prepared = prepare(config)
        profiles = draw_profiles(
            config.clients, config.lora.r, config.seed, runtime.connect(config)
        )
        if config.clients.rank_by == "node":  # the ranks were unknown until the nodes said
            check_node_ranks(config, [p.rank for p in profiles])
        if snapshot is None:
            write_config(folder, with_resolved_data_dir(config))
            read_start(folder, prepared)
        log = EventLog(
            folder / EVENTS_FILE,
            resume_at=None if snapshot is None else checkpoint_mark(snapshot),
            wall_offset=0.0 if snapshot is None else snapshot.meta["wall"],
        )

        def save(snap: Snapshot) -> None:
            snap.meta["wall"] = log.wall()
            write_checkpoint(folder, snap, log.mark())

        with log:
            driver = runtime.driver(
                Wiring(
                    config,
                    prepared.learner,
                    [len(indices) for indices in prepared.data.client_train],
                    log,
                    evaluation_writer(folder, prepared.learner, progress),
                    save,
                    interrupted,
                    profiles,
                )
            )
            if snapshot is not None:
                driver.load_state_dict(snapshot)
            outcome = driver.run()
            if driver.core.stopped == "interrupted":
                raise Interrupted(folder, outcome.steps, runtime.name)
        summary = write_results(folder, prepared, outcome, runtime.clock)
        remove_checkpoint(folder)
    return summary


def evaluation_writer(
    folder: Path, learner: ModelLearner, progress: Callable[[Outcome], None] | None
) -> Callable[[Outcome], None]:
    """A progress callback that first writes the latest global evaluation's predictions
    (``predictions/step_NNNNNN.csv``: the model's version), then calls ``progress``."""

    def after_evaluation(outcome: Outcome) -> None:
        if learner.global_predictions is not None:
            step = outcome.evaluations[-1].step
            write_predictions(step_predictions_path(folder, step), learner.global_predictions)
        if progress is not None:
            progress(outcome)

    return after_evaluation


def write_results(
    folder: Path, prepared: Prepared, outcome: Outcome, clock: Clock = "virtual"
) -> RunSummary:
    """The run folder's results from a finished run (any runtime; its times on the runtime's
    ``clock``); returns the summary."""
    config = prepared.config
    learner = prepared.learner
    if learner.global_predictions is None:  # resumed after the final evaluation: redo it
        learner.evaluate(outcome.global_state)
    assert learner.global_predictions is not None
    tests = prepared.data.client_test
    local_sizes = None if tests is None else [len(indices) for indices in tests]
    # the control for the clients' own models on their own splits: the final global model on
    # the same splits, for the clients those models were scored for
    scored = sorted({e.client for e in outcome.local_evaluations})
    global_own = learner.evaluate_on_local_splits(outcome.global_state, scored)
    summary = summarize(
        config, outcome, prepared.task, learner.global_predictions, local_sizes, global_own, clock
    )
    base = step_predictions_path(folder, 0)
    if outcome.evaluations[0].step == 0 and base.is_file():
        changed = loss_change_summary(read_predictions(base), learner.global_predictions)
        summary = summary.with_sections(changed)
    if prepared.reader is not None:
        write_readout(folder, FINAL, prepared.reader.read(outcome.global_state, outcome.steps))
        start, final = read_readout(folder, START), read_readout(folder, FINAL)
        assert final is not None
        summary = summary.with_sections(choices_summary(start, final))
        write_generations(folder, start, final)
    summary = write_run(folder, outcome, summary, clock)
    write_predictions(folder / PREDICTIONS_FILE, learner.global_predictions)
    if not outcome.global_state.frozen:  # FedEx-LoRA's: no PEFT adapter carries them
        write_adapter_folder(
            outcome.global_state,
            folder / ADAPTER_DIR,
            config.lora,
            model_path(config.model.name),
            prepared.task.causal,
        )
    curves = [e.metrics | {"step": e.step, f"{clock}_time_s": e.time} for e in outcome.evaluations]
    plot_curves({config.name: curves}, [summary], folder / CURVES_FILE, run_title(summary))
    return summary
