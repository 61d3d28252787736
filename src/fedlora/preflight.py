"""Everything a run needs, checked before any file is written or any weights load.

The checks a parsed config needs from the registries come first and live here alone
(:func:`check_setup`): the policy and aggregator names, the policy's options, the aggregator's
options and the ranks it can merge, the ``eval.shadow`` aggregators. The config package
imports no registry.

A mistake found here costs seconds; found later it costs a model load, a tokenized dataset, a
half-written run folder, or (in a study) the hours of the cells that ran before it. The checks
read the data splits (not tokenized) and the model's config (its architecture is built on the
``meta`` device: no weights), so they stay cheap enough to run on every cell of a study up front.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from fedlora import aggregation, policies
from fedlora.aggregation.diagnostics import shadow_aggregators
from fedlora.client.gguf_cache import cached_folder
from fedlora.client.model import model_path
from fedlora.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    resolve_data_dir,
    setup_error,
)
from fedlora.data.choices import configured_questions
from fedlora.data.examples import LabelledSplit
from fedlora.data.federated import _subset, given_clients
from fedlora.data.partition import partition
from fedlora.data.sources import load_split
from fedlora.data.tasks import is_causal
from fedlora.profiles import draw_profiles

# The layer types PEFT's LoRA can adapt.
_ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {device!r}, but torch sees no CUDA device here")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"runtime.device: {device!r}, but torch sees {torch.cuda.device_count()} CUDA devices"
        )


def _check_threads(threads: int | None) -> None:
    """More torch threads than cores only slows a run, and tens of thousands crash torch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads is not None and cores is not None and threads > cores:
        raise ConfigError(
            f"runtime.threads: {threads} torch threads, but this machine gives the run {cores}"
            f" CPU cores; set runtime.threads <= {cores} (or null: torch chooses)"
        )


def _check_readouts(config: ExperimentConfig) -> None:
    """Multiple-choice questions and generations ask a causal LM: a classifier has no answer to
    score or write. The questions are read here, so a bad file stops the run before any work."""
    asked = [key for key in ("choices", "generate") if getattr(config.eval, key) is not None]
    if asked and not is_causal(config.data.task):
        raise ConfigError(
            f"eval.{asked[0]}: needs an instruction task (data.task: instruct), but task"
            f" {config.data.task!r} trains a classifier"
        )
    configured_questions(config)


@dataclass(frozen=True)
class _ModelFacts:
    """What the checks need of a model: its adaptable layers' names and the largest LoRA rank
    each allows, and its positions."""

    adaptable: dict[str, int]  # dotted module name -> min(in, out): the rank ΔW can have
    others: tuple[str, ...]  # every other module's dotted name
    max_positions: int | None


class Preflight:
    """Checks configs; what several share (a split, a model's layers) is read only once."""

    def __init__(self) -> None:
        self._splits: dict[tuple[str, str, str], LabelledSplit] = {}
        self._models: dict[str, _ModelFacts] = {}

    def check(self, config: ExperimentConfig) -> None:
        """Raise :class:`ConfigError` (or ``DataError``, ``PartitionError``) naming the key or
        file at fault."""
        check_setup(config)
        _check_device(config.runtime.device)
        _check_threads(config.runtime.threads)
        self._check_model(config)
        self._check_data(config)
        _check_readouts(config)

    def _check_model(self, config: ExperimentConfig) -> None:
        causal = is_causal(config.data.task)
        key = config.model.model_dump_json() + str(causal)
        if key not in self._models:
            self._models[key] = _model_facts(config.model, causal)
        facts = self._models[key]
        name = config.model.name or "all-MiniLM-L6-v2"
        for target in config.lora.target_modules:
            if any(_matches(module, target) for module in facts.adaptable):
                _check_rank(config, facts, target, name)
                continue
            found = any(_matches(module, target) for module in facts.others)
            problem = "only modules LoRA cannot adapt (not linear)" if found else "no module"
            layers = sorted({module.rsplit(".", 1)[-1] for module in facts.adaptable})
            raise ConfigError(
                f"lora.target_modules: {target!r} matches {problem} of model {name};"
                f" the layers LoRA can adapt are named {', '.join(layers)}"
            )
        limit = facts.max_positions
        if limit is not None and config.data.max_length > limit:
            raise ConfigError(
                f"data.max_length: {config.data.max_length} tokens, but model {name} has"
                f" {limit} positions (max_position_embeddings); set data.max_length <= {limit}"
            )

    def _check_data(self, config: ExperimentConfig) -> None:
        data = config.data
        train = self._split(config, "train")
        examples = min(len(train.examples), data.max_train_examples or len(train.examples))
        needed = config.clients.num * data.partition.min_size
        if examples < needed:
            raise ConfigError(
                f"clients.num: {config.clients.num} clients with at least"
                f" {data.partition.min_size} examples each (data.partition.min_size) need"
                f" {needed} training examples, but {train.origin} gives {examples}"
                + (" (data.max_train_examples)" if examples < len(train.examples) else "")
            )
        if data.partition.method == "given":  # the file's client ids, before any weight loads
            kept = _subset(train, data.max_train_examples, config.seed)
            given_clients(kept, config.clients.num, data.client_column)
        if data.partition.method == "dirichlet" and data.partition.by == "label":
            # the draw the run will make, on the labels alone: a failure here is a message
            kept = _subset(train, data.max_train_examples, config.seed)
            labels = np.array([example.label for example in kept.examples])
            partition(labels, config.clients.num, data.partition, config.seed)
        evaluation = self._split(config, config.eval.split)
        if not evaluation.examples:
            raise ConfigError(
                f"eval.split: {evaluation.origin}: the {evaluation.split!r} split has no examples"
            )
        known = list(dict.fromkeys([*train.task.metrics, "loss"]))
        target = config.eval.target
        if target is not None and target.metric not in known:
            raise ConfigError(
                f"eval.target.metric: {target.metric!r} is not reported for task"
                f" {train.task.name!r}; choose one of {', '.join(known)}"
            )

    def _split(self, config: ExperimentConfig, split: str) -> LabelledSplit:
        data_dir = resolve_data_dir(config)
        key = (config.data.model_dump_json(), str(data_dir), split)
        if key not in self._splits:
            self._splits[key] = load_split(config.data, data_dir, split)
        return self._splits[key]


def check(config: ExperimentConfig) -> None:
    """Every check a run makes before it writes a file or loads weights."""
    Preflight().check(config)


def check_setup(config: ExperimentConfig) -> None:
    """What a parsed config asks of the registries, before anything is read: the policy and
    the aggregator it names exist and can serve this federation; a :class:`ConfigError` names
    the key and where it was set."""
    try:
        _check_names(config)
        policies.check_setup(config.server, config.clients.num)
        _check_aggregator(config)
    except ValueError as error:
        raise setup_error(config, str(error)) from None


def _check_names(config: ExperimentConfig) -> None:
    named = [("server.policy", "policy", config.server.policy, policies.available())]
    aggregators = aggregation.available()
    for key, name in [("server.aggregator", config.server.aggregator)] + [
        ("eval.shadow", name) for name in config.eval.shadow
    ]:
        named.append((key, "aggregator", name, aggregators))
    for key, kind, name, known in named:
        if name not in known:
            raise ValueError(f"{key}: unknown {kind} {name!r}; available: {', '.join(known)}")


def _check_aggregator(config: ExperimentConfig) -> None:
    """The aggregator's options, and whether it (and every ``eval.shadow`` one) can merge the
    ranks the clients will draw (under ``clients.rank_by: node``, once the nodes report them:
    :func:`check_node_ranks`)."""
    if config.clients.rank_by != "node":
        clients = draw_profiles(config.clients, config.lora.r, config.seed)
        _check_merging(config, [profile.rank for profile in clients])


def check_node_ranks(config: ExperimentConfig, ranks: list[int]) -> None:
    """``clients.rank_by: node``: whether the aggregator (and every ``eval.shadow`` one) can
    merge the ranks the nodes reported."""
    try:
        _check_merging(config, ranks)
    except ValueError as error:
        raise ConfigError(
            f"clients.rank_by: node: the nodes report ranks {sorted(set(ranks))}: {error}"
        ) from None


def _check_merging(config: ExperimentConfig, ranks: list[int]) -> None:
    """Whether the aggregator (and every ``eval.shadow`` one) can merge these client ranks."""
    aggregator = aggregation.create(
        config.server.aggregator,
        config.lora,
        config.global_rank,
        config.server.aggregator_options,
    )
    aggregator.check_setup(ranks, config.server)
    shadow_aggregators(config, sorted(set(ranks)))  # raises ConfigError naming eval.shadow


def _check_rank(config: ExperimentConfig, facts: _ModelFacts, target: str, name: str) -> None:
    """A rank above a layer's min(in, out) adds nothing ΔW = B·A can express, only memory
    (lora.r = 50,000,000 asks for gigabytes); the key named is the one that set the rank."""
    limit, module = min((r, m) for m, r in facts.adaptable.items() if _matches(m, target))
    if config.global_rank <= limit:
        return
    if config.server.global_rank is not None and config.max_client_rank <= limit:
        key, rank = "server.global_rank", config.global_rank
    else:
        key = "clients.ranks" if config.clients.ranks else "lora.r"
        rank = config.max_client_rank
    raise ConfigError(
        f"{key}: rank {rank}, but layer {module} of model {name} allows at most {limit}"
        " (the smaller of its input and output sizes)"
    )


def _config_source(config: ModelConfig) -> tuple[str, str | None]:
    """Where to read the model's config: a GGUF's dequantized copy once it exists, else the
    GGUF's header (parsing it costs seconds; preflight dequantizes nothing)."""
    path = model_path(config.name)
    if config.gguf_file is None:
        return path, None
    with contextlib.suppress(OSError):
        folder = cached_folder(path, config.gguf_file)
        if (folder / "config.json").is_file():
            return str(folder), None
    return path, config.gguf_file


def _model_facts(config: ModelConfig, causal: bool) -> _ModelFacts:
    """The model's layers, from its config alone: the architecture is built without weights
    (a causal LM's for an instruction task, else a sequence classifier's)."""
    path = model_path(config.name)
    local = Path(path).exists()
    if not local and (Path(path).is_absolute() or path.startswith(".")):
        raise ConfigError(f"model.name: {path!r}: no such model folder")
    sizes = config.random.model_dump() if config.init == "random" else {}
    try:
        source, gguf_file = _config_source(config)
        model_config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, **sizes)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "" if local else "no such local folder, and "
        raise ConfigError(f"model.name: cannot load model {path!r}: {where}{reason}") from None
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(model_config)
    adaptable: dict[str, int] = {}
    others: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, _ADAPTABLE):
            # out × in for Linear, in × out for Conv1D, num × dim for Embedding, out × in·k
            # for a convolution: either way the smaller side bounds the rank
            weight = module.weight
            adaptable[name] = min(weight.shape[0], weight[0].numel())
        else:
            others.append(name)
    positions = getattr(model_config, "max_position_embeddings", None)
    return _ModelFacts(adaptable, tuple(others), positions)


def _matches(module: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the whole dotted name or its last parts."""
    return module == target or module.endswith(f".{target}")
