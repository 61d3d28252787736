"""``fedlora generate``: what a trained causal LM answers, for a person to read.

It takes a run folder (the run's config says the model, the template and the adapter is its
final global one), or what ``fedlora export`` wrote: an adapter folder (stock PEFT loads it onto
its base model) or a merged model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fedlora.client.generation import greedy_answer
from fedlora.client.model import build_resident_model
from fedlora.config import ConfigError
from fedlora.data.prompts import PromptBuilder
from fedlora.data.tasks import is_causal
from fedlora.results.store import CONFIG_FILE, read_config, read_global_state

ADAPTER_CONFIG = "adapter_config.json"


def answer(source: Path, instruction: str, context: str = "", max_new_tokens: int = 128) -> str:
    """The greedy answer of the model ``source`` holds."""
    model, builder = _load(source)
    return greedy_answer(model, builder, instruction, context, max_new_tokens)


def _load(source: Path) -> tuple[torch.nn.Module, PromptBuilder]:
    if (source / CONFIG_FILE).is_file():
        return _from_run(source)
    if (source / ADAPTER_CONFIG).is_file():
        base = PeftConfig.from_pretrained(str(source)).base_model_name_or_path
        if base is None:
            raise ConfigError(f"{source / ADAPTER_CONFIG}: no base_model_name_or_path")
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), source)
        return adapted, PromptBuilder(_tokenizer(base), "auto")
    if (source / "config.json").is_file():
        merged = AutoModelForCausalLM.from_pretrained(source)
        return merged, PromptBuilder(_tokenizer(str(source)), "auto")
    raise ConfigError(
        f"{source}: neither a run folder ({CONFIG_FILE}), an exported adapter ({ADAPTER_CONFIG})"
        " nor a model folder (config.json)"
    )


def _from_run(folder: Path) -> tuple[torch.nn.Module, PromptBuilder]:
    config = read_config(folder)
    if not is_causal(config.data.task):
        raise ConfigError(
            f"{folder}: data.task {config.data.task!r} trains a classifier; generate needs an"
            " instruction run (data.task: instruct)"
        )
    state = read_global_state(folder)
    resident, tokenizer = build_resident_model(
        config.model, config.lora, None, config.seed, rank=state.rank
    )
    resident.load(state)
    return resident.model, PromptBuilder(tokenizer, config.data.instruct.template)


def _tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
