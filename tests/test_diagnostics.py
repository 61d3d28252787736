"""Merge diagnostics against dense computations, and merge-term roles under every policy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakeLearner, config, delta_terms, run_cli, simulate
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import WeightedState, client_results
from fedlora.aggregation.diagnostics import client_spread, diagnose, energy_above, merge_error
from fedlora.cli import app
from fedlora.client.protocol import LocalResult
from fedlora.config import ConfigError, LoraConfig, build_config
from fedlora.data.tasks import generic_task
from fedlora.policies import Source
from fedlora.preflight import check
from fedlora.results.diagnostics_plot import write_diagnostics_plot
from fedlora.results.summary import summarize

MODULES = ("q", "v")
# The diagnostics are float64 QR/SVD of R ≤ 32 stacked factors (6×5, entries O(1)): rounding
# ≲ R·ε₆₄ ≈ 7e-15 of the norms involved, times the cancellation of a difference (≲ 10² here).
# 1e-9 holds that, and still fails on a float32 path (ε₃₂ ≈ 1.2e-7). Used as relative and
# absolute tolerance: the figures are ratios of norms.
F64_TOL = 1e-9
# A float32 merge (the fake learners' and the tiny BERT's adapters are float32) of R ≤ 28
# stacked components rounds by ≲ R·ε₃₂ ≈ 3.4e-6 of ‖ΔW‖, so even an exact merge reads up to
# that as its error.
F32_MERGE = 1e-5


def random_state(rank: int, alpha: float, seed: int, out: int = 6, inp: int = 5) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {
        m: LoraFactors(
            torch.randn(rank, inp, generator=g, dtype=torch.float64),
            torch.randn(out, rank, generator=g, dtype=torch.float64),
            alpha,
        )
        for m in MODULES
    }
    return AdapterState(lora=lora, extra={"h": torch.zeros(1, dtype=torch.float64)})


def dense(state: AdapterState, module: str) -> torch.Tensor:
    return state.lora[module].delta().double()


def dense_sum(terms: Sequence[WeightedState], module: str) -> torch.Tensor:
    return sum(t.weight * dense(t.state, module) for t in terms)  # type: ignore[return-value]


def dense_error(terms: Sequence[WeightedState], merged: AdapterState) -> float:
    wrong = sum(float((dense(merged, m) - dense_sum(terms, m)).norm() ** 2) for m in MODULES)
    exact = sum(float(dense_sum(terms, m).norm() ** 2) for m in MODULES)
    return (wrong / exact) ** 0.5


def make(name: str, rank: int) -> aggregation.Aggregator:
    return aggregation.create(name, LoraConfig(r=rank, alpha=8.0), rank)


cohorts = st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999))
def test_hlora_at_full_global_rank_merges_without_error(ranks: list[int], seed: int) -> None:
    states = [random_state(r, 2.0 * r, seed + k) for k, r in enumerate(ranks)]
    terms = client_results(states, list(np.random.default_rng(seed).dirichlet([1.0] * len(ranks))))
    merged = make("hlora", sum(ranks)).combine(terms)
    assert merge_error(terms, merged) < F64_TOL


def test_flora_merges_the_delta_round_without_error() -> None:
    agg = make("flora", 4)
    start = random_state(4, 8.0, 0)
    sent = {r: agg.project(start, r) for r in (2, 4)}
    # a result carries the frozen factors its job was sent (screening gives them back)
    jobs = [
        (replace(random_state(r, 8.0, 10 + r), frozen=s.frozen), s, 0.5) for r, s in sent.items()
    ]
    terms = delta_terms(start, jobs)
    assert merge_error(terms, agg.combine(terms)) < F64_TOL


@settings(max_examples=25, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999), name=st.sampled_from(["zeropad", "hetlora"]))
def test_zero_padding_error_matches_the_dense_computation(
    ranks: list[int], seed: int, name: str
) -> None:
    states = [random_state(r, 2.0 * r, seed + k) for k, r in enumerate(ranks)]
    terms = client_results(states, list(np.random.default_rng(seed).dirichlet([1.0] * len(ranks))))
    merged = make(name, max(ranks)).combine(terms)
    expected = dense_error(terms, merged)
    assert merge_error(terms, merged) == pytest.approx(expected, rel=F64_TOL, abs=F64_TOL)


def test_zero_padding_error_by_hand() -> None:
    """½·diag(1,0) + ½·I merges to diag(1, ¼) instead of diag(1, ½): error ¼ / √(1 + ¼)."""
    e1 = AdapterState(
        {"q": LoraFactors(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]), 1.0)}, {}
    )
    eye = AdapterState({"q": LoraFactors(torch.eye(2), torch.eye(2), 2.0)}, {})
    terms = client_results([e1, eye], [0.5, 0.5])
    merged = aggregation.create("zeropad", LoraConfig(r=2, alpha=2.0), 2).combine(terms)
    assert merge_error(terms, merged) == pytest.approx(0.25 / 1.25**0.5, rel=F64_TOL)


@settings(max_examples=25, deadline=None)
@given(rank=st.integers(1, 5), seed=st.integers(0, 999))
def test_energy_above_a_rank_matches_a_dense_svd(rank: int, seed: int) -> None:
    state = random_state(rank, 4.0, seed)
    energies = [torch.linalg.svdvals(dense(state, m)) ** 2 for m in MODULES]
    total = sum(float(e.sum()) for e in energies)
    got = energy_above(state, [1, 2, 4])
    for r in (1, 2, 4):
        expected = sum(float(e[r:].sum()) for e in energies) / total
        assert got[r] == pytest.approx(expected, abs=F64_TOL)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999))
def test_spread_matches_the_dense_computation(ranks: list[int], seed: int) -> None:
    start = random_state(max(ranks), 8.0, seed)
    agg = make("zeropad", max(ranks))
    weights = np.random.default_rng(seed).dirichlet([1.0] * len(ranks))
    jobs = [
        (random_state(r, 8.0, seed + 1 + k), agg.project(start, r), float(w))
        for k, (r, w) in enumerate(zip(ranks, weights, strict=True))
    ]
    deltas = {m: [dense(u, m) - dense(s, m) for u, s, _ in jobs] for m in MODULES}
    mean = {m: sum(w * d for (_, _, w), d in zip(jobs, deltas[m], strict=True)) for m in MODULES}
    spread = sum(
        float(w * (d - mean[m]).norm() ** 2)
        for m in MODULES
        for (_, _, w), d in zip(jobs, deltas[m], strict=True)
    )
    expected = spread / sum(float(mean[m].norm() ** 2) for m in MODULES)
    assert client_spread(delta_terms(start, jobs)) == pytest.approx(
        expected, rel=F64_TOL, abs=F64_TOL
    )


def test_one_client_has_no_spread_and_identical_clients_none_either() -> None:
    state = random_state(2, 4.0, 0)
    assert client_spread(client_results([state], [1.0])) == 0.0
    assert client_spread(client_results([state, state], [0.3, 0.7])) == pytest.approx(
        0.0, abs=F64_TOL
    )


# --- term roles: hetlora reweights client results only -------------------------------------


def test_hetlora_leaves_the_global_and_the_pairs_as_the_policy_wrote_them() -> None:
    start = random_state(4, 8.0, 0)
    agg = make("hetlora", 4)
    small, big = random_state(2, 8.0, 1), random_state(4, 8.0, 2)
    terms = delta_terms(start, [(small, agg.project(start, 2), 0.5), (big, start, 0.5)])
    weights = agg.reweight(terms)
    assert weights[0] == 1.0  # the global keeps its weight
    assert weights[1] == -weights[2] and weights[3] == -weights[4]  # each pair still cancels
    assert weights[1] + weights[3] == pytest.approx(1.0)  # the results' total is kept
    assert weights[1] != pytest.approx(0.5)  # and they are reweighted by their norms


def test_hetlora_under_fedasync_mixes_one_result_as_zeropad_does() -> None:
    """(1 − a)·G + a·U with one result: nothing to reweight, whatever the norms."""
    terms = [
        WeightedState(random_state(4, 8.0, 0), 0.6, Source.GLOBAL),
        WeightedState(random_state(4, 8.0, 1), 0.4, Source.UPDATE, 7),
    ]
    het, zero = make("hetlora", 4).combine(terms), make("zeropad", 4).combine(terms)
    # HetLoRA weighs the result w·(n·(w/(w·n))): w only to a few ε₆₄ for some norms n, and n
    # has BLAS's last bits. Float64 factors with entries ≲ 10 then agree to ≲ 1e-14.
    for m in MODULES:
        assert torch.allclose(het.lora[m].A, zero.lora[m].A, rtol=0, atol=F64_TOL)
        assert torch.allclose(het.lora[m].B, zero.lora[m].B, rtol=0, atol=F64_TOL)


class EchoLearner(FakeLearner):
    """Every client returns exactly what it was sent; the global starts non-zero."""

    def initial_state(self) -> AdapterState:
        g = torch.Generator().manual_seed(3)
        return AdapterState(
            {"m": LoraFactors(torch.randn(4, 3, generator=g), torch.randn(5, 4, generator=g), 8.0)},
            {"h": torch.ones(2)},
        )

    def train(self, start: AdapterState, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        return LocalResult(state=start, loss=0.0, examples=2, steps=1)


SERVERS = {
    "fedavg": {"per_round": 3},
    "fedbuff": {"concurrency": 3, "window": 2},
    "fedasync": {"concurrency": 3, "mixing": 0.5},
    "fedfa": {"concurrency": 3, "window": 2},
}


# hetlora with rank self-pruning on: an unchanged trailing norm never prunes
OPTIONS = {"hetlora+self_prune": ("hetlora", {"self_prune": {"decay": 0.5, "penalty": 1.0}})}


@pytest.mark.parametrize("aggregator", ["hetlora", "hetlora+self_prune", "zeropad", "hlora"])
@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_a_global_that_clients_return_unchanged_stays_unchanged(
    aggregator: str, update: str, policy: str
) -> None:
    """Under delta updates ranks differ (the pairs must cancel); under model updates every
    client holds the full global rank (otherwise truncation moves the global by design)."""
    ranks = [2, 4, 2, 4] if update == "delta" else [4, 4, 4, 4]
    name, options = OPTIONS.get(aggregator, (aggregator, {}))
    cfg = config(
        lora={"r": 4, "alpha": 8.0},
        clients={"ranks": ranks},
        server={"policy": policy, "aggregator": name, "update": update, "rounds": 3}
        | SERVERS[policy]
        | {"aggregator_options": options},
    )
    learner = EchoLearner([5, 5, 5, 5])
    outcome, events = simulate(cfg, learner)
    merges = [e for e in events if e["type"] == "merge"]
    assert merges
    start, end = learner.initial_state().lora["m"], outcome.global_state.lora["m"]
    # ≤ 9 float32 merges in a row, each ≲ 3.4e-6 of ‖ΔW‖ (≈ 16 here): ≲ 3e-5 of ‖ΔW‖
    drift = float(torch.linalg.matrix_norm(end.delta() - start.delta()))
    assert drift <= 10 * F32_MERGE * float(torch.linalg.matrix_norm(start.delta()))
    if update == "model":  # (delta: every update is 0, and its spread 0/0 only rounding)
        # clients differ by that rounding only (≲ 3e-5 of ΔW); the spread is its square
        assert all(e["diagnostics"]["spread"] < 1e-8 for e in merges)


# --- the run's record: merge events, summary, shadows, FedSA's bytes -----------------------


def test_merge_events_and_summary_carry_the_diagnostics() -> None:
    cfg = config(
        lora={"r": 2, "alpha": 4.0},
        clients={"ranks": [1, 2, 1, 2]},
        server={"aggregator": "zeropad", "per_round": 3, "rounds": 3},
        eval={"shadow": ["hlora"]},
    )
    outcome, events = simulate(cfg, FakeLearner([5, 5, 5, 5]))
    merges = [e["diagnostics"] for e in events if e["type"] == "merge"]
    assert len(merges) == len(outcome.diagnostics) == 3
    assert all(m["energy_above"].keys() == {"1", "2"} for m in merges)
    assert all(m["energy_above"]["2"] == 0.0 for m in merges)  # a rank-2 global
    # the best rank-2 approximation (Eckart–Young) is never further off than zero-padding
    assert all(m["shadow"]["hlora"] <= m["error"] + F32_MERGE for m in merges)
    assert any(m["error"] > 0.01 for m in merges)
    task = generic_task("t", ("a", "b"), pair=True)
    summary = summarize(cfg, outcome, task).written()["diagnostics"]
    assert summary["merges"] == 3
    errors = [m["error"] for m in merges]
    assert summary["error"] == {
        "mean": pytest.approx(np.mean(errors)),
        "max": max(errors),
        "last": errors[-1],
    }
    assert summary["energy_above"].keys() == {"1", "2"}
    assert summary["shadow"]["hlora"]["last"] == merges[-1]["shadow"]["hlora"]


def test_a_shadow_that_cannot_serve_the_setup_is_a_config_error(tiny_config: dict) -> None:
    cfg = config(eval={"shadow": ["flora"]})
    with pytest.raises(ConfigError, match=r"eval\.shadow: flora: server\.update"):
        simulate(cfg, FakeLearner([5, 5, 5, 5]))
    tiny_config["eval"]["shadow"] = ["flora"]  # and before any file or weight, in preflight
    with pytest.raises(ConfigError, match=r"eval\.shadow: flora: server\.update"):
        check(build_config(tiny_config))


def test_fedsa_charges_the_mean_b_on_a_clients_first_job_only() -> None:
    cfg = config(server={"aggregator": "fedsa", "per_round": 4, "rounds": 3})
    _, events = simulate(cfg, FakeLearner([5, 5, 5, 5]))
    full, without_b = 4 * (6 + 8 + 2), 4 * (6 + 2)  # A 2×3, B 4×2, head 2 (float32)
    seen: set[int] = set()
    for event in (e for e in events if e["type"] == "dispatch"):
        assert event["bytes"] == (without_b if event["client"] in seen else full)
        seen.add(event["client"])
    assert len(seen) == 4


def test_diagnose_gathers_every_figure() -> None:
    terms = client_results([random_state(2, 4.0, 0), random_state(4, 8.0, 1)], [0.5, 0.5])
    agg = make("zeropad", 4)
    merged = agg.combine(terms)
    found = diagnose(terms, merged, [2, 4], {"hlora": make("hlora", 6)})
    # diagnose rounds to 12 significant digits (≤ 5e-13 relative)
    assert found.error == pytest.approx(merge_error(terms, merged), rel=1e-11)
    assert found.shadow["hlora"] < F64_TOL
    assert found.as_event()["energy_above"].keys() == {"2", "4"}


@pytest.mark.slow
def test_report_plots_the_diagnostics_of_runs_that_have_them(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["clients"]["ranks"] = {2: 0.5, 4: 0.5}
    tiny_config["server"]["aggregator"] = "zeropad"
    tiny_config["eval"]["shadow"] = ["hlora"]
    run_cli(tmp_path, tiny_config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["diagnostics"]
    assert summary["merges"] == 3 and summary["energy_above"].keys() == {"2", "4"}
    assert summary["shadow"]["hlora"]["max"] <= summary["error"]["max"] + F32_MERGE
    result = CliRunner().invoke(
        app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "merge diagnostics:" in result.output
    assert (tmp_path / "r" / "diagnostics.png").stat().st_size > 10_000
    assert not write_diagnostics_plot([tmp_path / "nothing"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
