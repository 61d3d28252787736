"""The final global model scored on each client's own local test split: the control that tells
a client model's score on its own split from an easier split, for a classifier and for an
instruction task, and the study table's columns for it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config
from fakes import FakeLearner, config, run_cli, simulate
from instruct_data import instruct_config

from fedlora.config import build_config
from fedlora.data.encoding import IGNORE, collate
from fedlora.data.tasks import generic_task
from fedlora.experiment import Prepared, prepare
from fedlora.results.run_summary import RunSummary
from fedlora.results.store import SUMMARY_FILE, read_global_state, write_config
from fedlora.results.summary import summarize
from fedlora.studies.figures import local_bars
from fedlora.studies.sweep import Cell
from fedlora.studies.table import study_table

NEW_KEYS = ("global_own", "global_own_loss", "own_gain", "own_loss_gain")


def _finished(folder: Path, raw: dict) -> tuple[dict, Path]:
    raw["eval"]["local_share"] = 0.25
    out = folder / "run"
    run_cli(folder, raw, out)
    return raw, out


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("classifier")
    return _finished(folder, make_tiny_config(folder))


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("instruct")
    return _finished(folder, instruct_config(folder))


def _local(out: Path) -> dict:
    return json.loads((out / SUMMARY_FILE).read_text())["local"]


def _check_against_the_learner(raw: dict, out: Path) -> Prepared:
    """A fresh learner scores the final global adapter (as written) on each client's split
    exactly as the summary reports it, and exactly as it scores a client model there; the
    gains are the per-client differences and their spread the summary's."""
    local = _local(out)
    prepared = prepare(build_config(raw))
    final = read_global_state(out)
    metric = local["metric"]
    assert local["clients"]
    for client, entry in local["clients"].items():
        scores = prepared.learner.evaluate_client(int(client), final)
        assert scores is not None
        assert entry["global_own"] == scores.own[metric]
        assert entry["global_own_loss"] == scores.own["loss"]
        assert entry["own_gain"] == entry["own"] - entry["global_own"]
        assert entry["own_loss_gain"] == entry["own_loss"] - entry["global_own_loss"]
    for key in NEW_KEYS:
        values = [entry[key] for entry in local["clients"].values()]
        assert local[key]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert (local[key]["min"], local[key]["max"]) == (min(values), max(values))
    # the mean gain is the difference of the two means (the same clients on both sides)
    assert local["own_gain"]["mean"] == pytest.approx(
        local["own"]["mean"] - local["global_own"]["mean"], abs=1e-12
    )
    return prepared


@pytest.mark.slow
def test_a_classifier_run_scores_the_global_model_on_each_clients_own_split(
    classifier_run: tuple[dict, Path],
) -> None:
    raw, out = classifier_run
    prepared = _check_against_the_learner(raw, out)
    local = _local(out)
    assert local["metric"] == "accuracy"
    # plain torch, one example at a time (no padding): accuracy exactly, the mean loss to
    # float32 summation order
    model, data = prepared.learner.model, prepared.data.train
    model.load(read_global_state(out))
    model.model.eval()
    assert prepared.data.client_test is not None
    for client, entry in local["clients"].items():
        indices = prepared.data.client_test[int(client)]
        assert entry["examples"] == len(indices)
        correct, losses = [], []
        with torch.no_grad():
            for i in indices:
                batch = collate(data, np.array([i]), prepared.learner.pad_token_id)
                logits = model.forward(batch).logits.float()
                label = batch["labels"]
                correct.append(int(logits.argmax(-1).item() == label.item()))
                losses.append(float(F.cross_entropy(logits, label)))
        assert entry["global_own"] == sum(correct) / len(correct)
        assert entry["global_own_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
        assert 0.0 <= entry["global_own"] <= 1.0


@pytest.mark.slow
def test_an_instruction_run_scores_the_global_models_response_loss_on_each_own_split(
    instruct_run: tuple[dict, Path],
) -> None:
    raw, out = instruct_run
    prepared = _check_against_the_learner(raw, out)
    local = _local(out)
    assert local["metric"] == "loss"  # the response loss: lower is better
    model, data = prepared.learner.model, prepared.data.train
    model.load(read_global_state(out))
    model.model.eval()
    assert prepared.data.client_test is not None
    for client, entry in local["clients"].items():
        assert entry["global_own"] == entry["global_own_loss"]
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in prepared.data.client_test[int(client)]:
                batch = collate(data, np.array([i]), prepared.learner.pad_token_id)
                targets = batch.pop("labels")[0, 1:]
                logits = model.forward(batch).logits[0, :-1].float()
                total += float(
                    F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
                )
                tokens += int((targets != IGNORE).sum())
        # token-weighted over the client's split, as the client models are scored
        assert entry["global_own"] == pytest.approx(total / tokens, rel=1e-5)


def _fake_summary(global_own: dict[int, dict[str, float]] | None) -> tuple[Any, dict]:
    """A simulated run's summary whose clients' own scores are their ids (fakes.FakeLearner),
    with the global model's on their splits where given."""
    cfg = config(server={"per_round": 2, "rounds": 4})
    outcome, _ = simulate(cfg, FakeLearner([5] * 4, local=True))
    task = generic_task("t", ("a", "b"), pair=True)
    return cfg, summarize(cfg, outcome, task, None, [3, 4, 5, 6], global_own).written()


def test_the_summary_pairs_each_client_with_the_global_model_on_its_own_split() -> None:
    _, without = _fake_summary(None)
    clients = [int(c) for c in without["local"]["clients"]]
    global_own = {c: {"accuracy": 0.25 * c + 0.5, "loss": 1.0 + c} for c in clients}
    _, summary = _fake_summary(global_own)
    local = summary["local"]
    for c in clients:
        entry = local["clients"][str(c)]
        assert entry["global_own"] == 0.25 * c + 0.5
        assert entry["own_gain"] == float(c) - (0.25 * c + 0.5)  # own: the client's id
    gains = [0.75 * c - 0.5 for c in clients]
    assert local["own_gain"]["mean"] == pytest.approx(np.mean(gains), rel=1e-12)
    assert (local["own_gain"]["min"], local["own_gain"]["max"]) == (min(gains), max(gains))
    assert local["global_own"]["mean"] == pytest.approx(
        np.mean([g["accuracy"] for g in global_own.values()])
    )
    # the fake client models report no loss: no global loss or loss gain beside them
    assert "global_own_loss" not in local and "own_loss_gain" not in local
    assert not any(key in without["local"] for key in NEW_KEYS)
    assert without["local"].keys() | {"global_own", "own_gain"} == local.keys()


def _cells(tmp_path: Path, summaries: dict[str, dict], cfg: Any) -> list[Cell]:
    """One study cell per arm, each holding its summary."""
    cells = []
    for arm, summary in summaries.items():
        folder = tmp_path / arm
        folder.mkdir(parents=True)
        write_config(folder, cfg)
        (folder / SUMMARY_FILE).write_text(json.dumps(summary))
        cells.append(Cell("t", None, arm, 0, cfg, folder))
    return cells


def test_the_study_table_shows_the_global_model_on_own_splits_only_where_scored(
    tmp_path: Path,
) -> None:
    cfg, old = _fake_summary(None)  # as written before the global model was scored there
    clients = [int(c) for c in old["local"]["clients"]]
    _, new = _fake_summary({c: {"accuracy": 0.5} for c in clients})
    columns = ("global acc, own split", "local gain, own split")
    table = study_table(_cells(tmp_path / "both", {"new": new, "old": old}, cfg))
    header = next(line for line in table.splitlines() if line.startswith("| arm"))
    labels = [cell.strip() for cell in header.strip("|").split("|")]
    assert all(column in labels for column in columns)
    rows = {
        line.split("|")[1].strip(): dict(
            zip(labels, [c.strip() for c in line.strip("|").split("|")], strict=True)
        )
        for line in table.splitlines()
        if line.startswith(("| new |", "| old |"))
    }
    local = new["local"]
    assert [rows["new"][c] for c in columns] == [
        f"{local['global_own']['mean']:.3f}",
        f"{local['own_gain']['mean']:.3f}",
    ]
    assert all(rows["old"][column] == "—" for column in columns)
    # only old summaries: the columns are left out, as before they existed
    only_old = study_table(_cells(tmp_path / "only-old", {"old": old}, cfg))
    assert not any(column in only_old for column in columns)
    assert "| local acc, own split |" in only_old

    runs = {"old": [RunSummary.model_validate(old)], "new": [RunSummary.model_validate(new)]}
    (old_bar,), new_bar = local_bars(runs)["global model, own split"]
    assert math.isnan(old_bar) and new_bar == [0.5]  # the arms' order; NaN where not scored
    assert "global model, own split" not in local_bars({"old": runs["old"]})
