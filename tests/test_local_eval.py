"""Local test splits and the per-client local and global evaluation of trained models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fakes import FakeLearner, config, run_cli, simulate
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.data.describe import jensen_shannon
from fedlora.data.federated import hold_out
from fedlora.data.tasks import generic_task
from fedlora.results.events import read_events
from fedlora.results.summary import summarize

runner = CliRunner()


@given(
    sizes=st.lists(st.integers(2, 60), min_size=1, max_size=8),
    share=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
)
def test_hold_out_splits_each_client_in_two(sizes: list[int], share: float, seed: int) -> None:
    starts = np.cumsum([0, *sizes])
    clients = [np.arange(a, b) for a, b in itertools.pairwise(starts)]
    train, test = hold_out(clients, share, seed)
    assert test is not None
    for indices, kept, held in zip(clients, train, test, strict=True):
        assert np.array_equal(np.sort(np.concatenate([kept, held])), indices)
        assert len(held) == min(len(indices) - 1, max(1, round(share * len(indices))))
        assert len(kept) >= 1
    assert hold_out(clients, 0.0, seed) == (clients, None)


def test_simulator_logs_every_trained_model_and_summarises_the_latest_per_client() -> None:
    learner = FakeLearner([5, 5, 5, 5], local=True)
    cfg = config(server={"per_round": 2, "rounds": 4})
    outcome, events = simulate(cfg, learner)
    local = [e for e in events if e["type"] == "local_eval"]
    assert len(local) == outcome.accepted == 8
    assert all(e["own"] == {"accuracy": float(e["client"])} for e in local)
    summary = summarize(cfg, outcome, generic_task("t", ("a", "b"), pair=True)).written()["local"]
    latest = {e["client"]: e for e in local}
    assert summary["clients"].keys() == {str(c) for c in latest}
    assert summary["own"]["mean"] == np.mean(sorted(latest))
    assert summary["dev"]["mean"] == np.mean([e["dev"]["accuracy"] for e in latest.values()])
    assert summary["evaluations"] == 8
    assert summary["global_dev"] == outcome.evaluations[-1].metrics["accuracy"]


def test_local_from_scores_only_jobs_that_started_from_that_version() -> None:
    cfg = config(server={"per_round": 4, "rounds": 3}, eval={"local_from": 2})
    outcome, events = simulate(cfg, FakeLearner([5] * 4, local=True))
    local = [e for e in events if e["type"] == "local_eval"]
    assert outcome.accepted == 12 and len(local) == 4
    assert {e["started_from"] for e in local} == {2} and {e["client"] for e in local} == {
        0,
        1,
        2,
        3,
    }


def test_without_local_splits_nothing_is_logged() -> None:
    outcome, events = simulate(config(server={"per_round": 2, "rounds": 2}), FakeLearner([5] * 4))
    assert not outcome.local_evaluations and all(e["type"] != "local_eval" for e in events)


@pytest.mark.slow
def test_run_with_context_skew_degradation_and_local_splits(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["data"]["partition"] = {
        "method": "dirichlet",
        "by": "length",
        "alpha": 0.3,
        "buckets": 3,
        "min_size": 8,
    }
    tiny_config["data"]["degrade"] = {"share": 0.5, "kind": "truncate", "rate": 0.5}
    tiny_config["eval"]["local_share"] = 0.25
    tiny_config["eval"]["local_dev"] = False  # own splits only: the global split costs more
    out = tmp_path / "run"
    run_cli(tmp_path, tiny_config, out)
    summary = json.loads((out / "summary.json").read_text())
    events = read_events(out / "events.jsonl")
    local = [e for e in events if e["type"] == "local_eval"]
    assert len(local) == summary["updates_accepted"] == 9
    assert {e["client"] for e in local} == {int(c) for c in summary["local"]["clients"]}
    for event in local:
        assert set(event["own"]) == {"accuracy", "f1", "loss"} and event["dev"] == {}
    assert "dev" not in summary["local"] and "dev_loss" not in summary["local"]
    assert summary["local"]["global_dev"] == summary["final"]["accuracy"]
    clients = summary["local"]["clients"].values()
    assert all(c["examples"] >= 2 and c["own_loss"] > 0 for c in clients)  # min_size 8, share 1/4
    assert summary["local"]["own_loss"]["mean"] == pytest.approx(
        np.mean([c["own_loss"] for c in clients])
    )
    by_length = summary["final"]["by_length"]
    assert (
        sum(t["examples"] for t in by_length.values())
        == len((out / "predictions.csv").read_text().splitlines()) - 1
    )
    weighted = sum(t["examples"] * t["accuracy"] for t in by_length.values())
    assert weighted / sum(t["examples"] for t in by_length.values()) == pytest.approx(
        summary["final"]["accuracy"]
    )
    assert 0 <= summary["local"]["own"]["min"] <= summary["local"]["own"]["max"] <= 1


def test_partition_command_describes_clients_and_writes_a_plot(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["data"]["partition"] = {"method": "sorted", "by": "length", "min_size": 4}
    tiny_config["data"]["degrade"] = {"share": 0.25, "kind": "truncate", "rate": 0.5}
    config_file = tmp_path / "part.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "partition"
    result = runner.invoke(app, ["partition", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "score divergence: mean JS from all" in result.output
    assert "size divergence: coefficient of variation 0.000" in result.output
    assert "(* degraded)" in result.output
    assert (out / "length.png").stat().st_size > 0
    described = json.loads((out / "length.json").read_text())
    clients = described["clients"]
    assert sum(c["examples"] for c in clients) == described["overall"]["examples"] == 120
    assert sum(c["degraded"] for c in clients) == 1
    assert {c["examples"] for c in clients} == {120 // len(clients)}  # sorted bands: equal sizes
    assert (described["size_variation"], described["size_ratio"]) == (0.0, 1.0)
    mean_js = sum(c["divergence"] for c in clients) / len(clients)
    assert described["mean_divergence"] == pytest.approx(mean_js, abs=1e-12)
    undegraded = [c for c in clients if not c["degraded"]]
    # strict sorted bands on clean lengths: the bands of untouched clients do not overlap
    for low, high in itertools.pairwise(sorted(undegraded, key=lambda c: c["client"])):
        assert low["q3"] <= high["q1"]
    bad = runner.invoke(app, ["partition", str(config_file), "--score", "column"])
    assert bad.exit_code == 2 and "--score" in bad.output
    within = runner.invoke(
        app,
        [
            "partition",
            str(config_file),
            "--out",
            str(out),
            "--set",
            "data.partition.within_labels=true",
        ],
    )
    assert within.exit_code == 0, within.output
    described = json.loads((out / "length.json").read_text())
    pooled = np.array(described["overall"]["labels"], dtype=float)
    mixes = [np.array(c["labels"], dtype=float) for c in described["clients"]]
    label_js = [jensen_shannon(mix, pooled) for mix in mixes]
    assert described["label_divergence"] == pytest.approx(np.mean(label_js), abs=1e-12)
    share = pooled / pooled.sum()  # banded within labels: every client keeps the label mix
    assert all(np.abs(mix - share * mix.sum()).max() <= 1 for mix in mixes)
    assert f"label divergence: {described['label_divergence']:.3f} bits" in within.output


def test_jensen_shannon_bounds() -> None:
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 1.0
    assert jensen_shannon(np.array([1.0, 3.0]), np.array([2.0, 6.0])) == 0.0
