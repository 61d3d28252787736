"""A causal LM (Llama architecture, tiny and random) as the backbone of a federated run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import run_cli
from instruct_data import tiny_llama as make_tiny_llama
from transformers import AutoTokenizer

from fedlora.client.model import PACKAGE_PREFIX, model_path
from fedlora.config import ConfigError
from fedlora.data import Example
from fedlora.data.encoding import tokenizer_inputs


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """A folder holding a 2-layer Llama config and a tokenizer (the packaged MiniLM's)."""
    return make_tiny_llama(tmp_path / "tiny-llama")


def test_a_causal_lm_runs_a_round_and_exports(
    tmp_path: Path, tiny_config: dict, tiny_llama: Path
) -> None:
    tiny_config["model"]["name"] = str(tiny_llama)
    tiny_config["lora"]["target_modules"] = ["q_proj", "v_proj"]
    tiny_config["server"]["rounds"] = 1
    out = tmp_path / "run"
    run_cli(tmp_path, tiny_config, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["updates_accepted"] == 3
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert adapter["base_model_name_or_path"] == str(tiny_llama)


def test_pairs_are_joined_for_a_tokenizer_without_a_separator() -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    examples = [Example("first part", "second part", 0)]
    assert tokenizer_inputs(examples, True, tokenizer) == (["first part"], ["second part"])
    tokenizer.sep_token = None  # as a causal LM's tokenizer has it
    assert tokenizer_inputs(examples, True, tokenizer) == (["first part\nsecond part"], None)
    assert tokenizer_inputs(examples, False, tokenizer) == (["first part"], None)


def test_package_models_resolve_to_the_installed_folder() -> None:
    assert Path(model_path(PACKAGE_PREFIX + "fedlora")).name == "fedlora"
    with pytest.raises(ConfigError, match=r"model\.name: no installed package 'no_such_pkg'"):
        model_path(PACKAGE_PREFIX + "no_such_pkg")
