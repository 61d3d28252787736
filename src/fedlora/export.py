"""Export a run's global adapter: a stock PEFT folder, or a full model with it merged in.

A classification run's adapter loads onto ``AutoModelForSequenceClassification`` (its head
saved beside LoRA), an instruction run's onto ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedlora.client.model import build_resident_model, model_path, write_adapter_folder
from fedlora.config import ConfigError
from fedlora.data.tasks import is_causal
from fedlora.results.store import read_config, read_global_state, read_summary


def export_adapter(run_folder: Path, out: Path) -> None:
    """``PeftModel.from_pretrained(base, out)`` then predicts as the run's final evaluation."""
    config = read_config(run_folder)
    state = read_global_state(run_folder)
    if state.frozen:
        raise ConfigError(
            f"{run_folder}: the global model holds frozen factors ({config.server.aggregator}"
            " folds part of every merge into the base weights), which a PEFT adapter cannot"
            " carry; export it as a full model with --merge"
        )
    causal = is_causal(config.data.task)
    write_adapter_folder(state, out, config.lora, model_path(config.model.name), causal)
    _apply_umask(out)


def export_merged(run_folder: Path, out: Path) -> None:
    """A plain transformers model folder (weights + tokenizer) with ΔW folded into the base."""
    config = read_config(run_folder)
    labels = read_summary(run_folder).labels
    causal = is_causal(config.data.task)
    state = read_global_state(run_folder)
    model, tokenizer = build_resident_model(
        config.model, config.lora, None if causal else len(labels), config.seed, rank=state.rank
    )
    model.load(state)
    merged = model.model.merge_and_unload()
    if not causal:
        merged.config.id2label = dict(enumerate(labels))
        merged.config.label2id = {label: i for i, label in enumerate(labels)}
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _apply_umask(out)


def _apply_umask(folder: Path) -> None:
    """Give every file the mode a plain write gets: safetensors writes 0600 through a temp file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
