"""The model-based quality score ``perplexity``: the response's perplexity under the base model,
computed once for the rows a run uses, cached beside the encoding, and a partition key."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from instruct_data import instruct_config, response_loss
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.client import quality
from fedlora.client.model import build_resident_model, load_backbone, load_tokenizer
from fedlora.config import ConfigError, ExperimentConfig, build_config
from fedlora.data import DataError
from fedlora.data.encoding import EncodedSplit, clear_memo, collate
from fedlora.data.federated import prepare_data
from fedlora.experiment import prepare

ROWS = 32  # of the 96 training rows: each test scores in under a second


def _config(tmp_path: Path, by: str = "perplexity") -> ExperimentConfig:
    raw = instruct_config(tmp_path)
    raw["data"]["max_train_examples"] = ROWS  # the rows a run uses are the rows scored
    raw["data"]["partition"] = {"method": "sorted", "by": by, "min_size": 4}
    return build_config(raw)


def _ones(model: object, data: EncodedSplit, *_: object) -> np.ndarray:
    return np.ones(len(data))


def _refuse(*_: object) -> None:
    raise AssertionError("scored again: the cached scores were not read")


def _cache_files(config: ExperimentConfig) -> list[Path]:
    assert config.data.cache_dir is not None
    return sorted(config.data.cache_dir.glob("perplexity-*.pt"))


def test_the_score_is_exp_of_the_plain_response_loss_of_the_base_model(tmp_path: Path) -> None:
    config = _config(tmp_path)
    tokenizer = load_tokenizer(config.model)
    resident, _ = build_resident_model(
        config.model, config.lora, None, config.seed, tokenizer=tokenizer
    )
    with torch.no_grad():  # an adapter that changes the outputs: the score must ignore it
        for name, parameter in resident.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    data = prepare_data(
        config, tokenizer, quality.perplexity_scorer(config, tokenizer, lambda: resident)
    )
    scores = data.train.scores[quality.PERPLEXITY]
    assert scores.shape == (len(data.train),) and np.isfinite(scores).all()
    torch.manual_seed(config.seed)  # the base model exactly as the run builds it, stock torch
    base = load_backbone(config.model, None, tokenizer.pad_token_id).eval()
    pad = int(tokenizer.pad_token_id)
    for row in (0, 7, ROWS - 1):
        batch = collate(data.train, [row], pad)
        # the mean loss (log perplexity) in float32, batched by the run and alone here: equal
        # to a few float32 epsilons (1.2e-7) of its size
        assert math.isclose(math.log(scores[row]), response_loss(base, batch), rel_tol=1e-6)
        adapted = resident.forward(batch).logits.float()  # the adapter really is not the base
        assert not torch.allclose(adapted, base(input_ids=batch["input_ids"]).logits, atol=1e-3)


def test_a_sorted_partition_by_perplexity_gives_client_0_the_lowest(tmp_path: Path) -> None:
    config = _config(tmp_path)
    prepared = prepare(config)  # the run's plumbing: the scored model is the one that trains
    scores = prepared.data.train.scores[quality.PERPLEXITY]
    bands = [scores[indices] for indices in prepared.data.client_train]
    assert sum(len(band) for band in bands) == len(scores) == ROWS
    assert all(a.max() <= b.min() for a, b in itertools.pairwise(bands))
    lowest = np.argsort(scores)[: ROWS // 4]
    assert sorted(lowest.tolist()) == prepared.data.client_train[0].tolist()
    clear_memo()  # a second run reads the scores and never uses the model before it trains
    cached = prepare(config)
    results = []
    for run in (prepared, cached):
        learner = run.learner
        batches = learner.plan(0, np.random.default_rng(0))
        results.append(learner.train(learner.initial_state(), batches, seed=0))
    assert results[0].loss == results[1].loss  # scoring left the model as it was built
    first, second = (r.state.to_peft_state_dict() for r in results)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_scores_are_computed_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    tokenizer = load_tokenizer(config.model)
    first = prepare_data(config, tokenizer, quality.perplexity_scorer(config, tokenizer))
    [cache] = _cache_files(config)
    clear_memo()  # a new process: the encoding is read from its file, the scores from theirs
    monkeypatch.setattr(quality, "base_perplexity", _refuse)
    again = prepare_data(config, tokenizer, quality.perplexity_scorer(config, tokenizer, _refuse))
    assert np.array_equal(again.train.scores["perplexity"], first.train.scores["perplexity"])
    assert [c.tolist() for c in again.client_train] == [c.tolist() for c in first.client_train]
    cache.write_bytes(b"half a file")  # unreadable: ignored with a warning, scored again
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="fedlora.client.quality"):
        scored = prepare_data(config, tokenizer, quality.perplexity_scorer(config, tokenizer))
    assert "ignoring unreadable cache file" in caplog.text
    assert np.allclose(scored.train.scores["perplexity"], first.train.scores["perplexity"])
    # other rows, another model or bf16 each get their own cache file
    monkeypatch.setattr(quality, "base_perplexity", _ones)
    for change in (
        {"data": {**config.data.model_dump(), "max_train_examples": ROWS - 1}},
        {"seed": 1},  # a random init's weights come from the seed
        {"model": {**config.model.model_dump(), "bf16": True}},
    ):
        other = config.model_validate(config.model_dump() | change)
        prepare_data(other, tokenizer, quality.perplexity_scorer(other, tokenizer, object))
    assert len(_cache_files(config)) == 4


def test_a_task_that_is_not_causal_has_no_perplexity() -> None:
    with pytest.raises(ConfigError, match=r"data\.partition\.by: 'perplexity'.*task 'mrpc'"):
        build_config(
            {"data": {"task": "mrpc", "partition": {"method": "sorted", "by": "perplexity"}}}
        )


def test_a_row_with_no_response_token_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, by="response")
    tokenizer = load_tokenizer(config.model)
    train = prepare_data(config, tokenizer).train
    assert train.prompt_lengths is not None
    prompts = train.prompt_lengths.clone()
    prompts[[3, 5]] = torch.as_tensor(train.lengths[[3, 5]])  # all prompt: nothing to score
    cut = dataclasses.replace(train, prompt_lengths=prompts, key="")
    resident, _ = build_resident_model(
        config.model, config.lora, None, config.seed, tokenizer=tokenizer
    )
    with pytest.raises(DataError, match=r"2 training row\(s\) .*\[3, 5\]\) have no response token"):
        quality.base_perplexity(resident, cut, 8, False, int(tokenizer.pad_token_id))


def test_fedlora_partition_describes_perplexity_bands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    args = ["partition", str(path), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "perplexity.json").read_text())
    means = [client["mean"] for client in described["clients"]]
    assert means == sorted(means) and described["score"] == "perplexity"
    clear_memo()
    monkeypatch.setattr(quality, "base_perplexity", _refuse)  # the second time: no model needed
    monkeypatch.setattr(quality, "run_resident_model", _refuse)
    assert CliRunner().invoke(app, [*args, "--score", "length"]).exit_code == 0
