"""raFLoRA: rank-partitioned weights against a dense reference of the paper's formula, the
collapse it prevents, and runs under every policy and update mode."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import config, delta_terms, run_cli, simulate
from hypothesis import given, settings
from hypothesis import strategies as st
from test_aggregators_exact import (
    F32_MERGE,
    F64_TOL,
    MODULES,
    SERVERS,
    TrainingLearner,
    assert_close,
    make,
    random_state,
    run_config,
)
from test_diagnostics import EchoLearner

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import WeightedState, client_results
from fedlora.aggregation.diagnostics import energy_above
from fedlora.results.events import read_events
from fedlora.terms import Source


def paper_merge(terms: Sequence[WeightedState], module: str) -> np.ndarray:
    """The paper's rank-partitioned sum, dense, in numpy: partitions at the distinct ranks of
    the client results, partition j of result k weighted p_k / Σ_{k' ∈ S_j} p_k' (times the
    results' total weight P), S_j the results that have it; a sent term takes its result's
    weights, the global term its own."""
    results = [t for t in terms if t.role is Source.UPDATE]
    total = sum(t.weight for t in results)
    bounds = [0, *sorted({t.state.lora[module].rank for t in results})]

    def weights_of(rank: int) -> np.ndarray:
        """Per component of a rank-``rank`` result: its partition's renormalisation."""
        scale = np.ones(rank)
        for low, high in itertools.pairwise(bounds):
            members = [t.weight for t in results if t.state.lora[module].rank >= high]
            scale[low : min(high, rank)] = total / sum(members)
        return scale

    rank_of_job = {t.job: t.state.lora[module].rank for t in results}
    dense = np.zeros((6, 5))
    for t in terms:
        f = t.state.lora[module]
        b = (f.B * f.scaling).numpy()
        a = f.A.numpy()
        if t.role is Source.UPDATE or (t.role is Source.SENT and t.job in rank_of_job):
            scale = weights_of(f.rank)
        else:
            scale = np.ones(f.rank)
        dense += t.weight * (b * scale) @ a
    return dense


def truncated(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(matrix)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def as_tensor(matrix: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(matrix)


cohorts = st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=4)


@settings(max_examples=30, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999), delta=st.booleans(), split=st.booleans())
def test_raflora_is_the_papers_partitioned_sum(
    ranks: list[int], seed: int, delta: bool, split: bool
) -> None:
    """Every mix of ranks and weights, as client results alone (model updates) or as the
    global plus result − sent pairs (delta updates): at a global rank that holds the whole
    sum (the 6×5 layer's 5) the merge is the partitioned sum exactly; at the largest client
    rank it is that sum's best approximation of that rank, and each client is served the
    best approximation of its own rank."""
    rng = np.random.default_rng(seed)
    weights = list(rng.dirichlet([1.0] * len(ranks)) * (0.5 if delta else 1.0))
    options = {"split": "sqrt" if split else "us"}
    top = max(ranks)
    if delta:
        start = random_state(top, seed)
        server = aggregation.create("raflora", make("hlora", top).lora, top, options)
        jobs = [
            (random_state(r, seed + 1 + k), server.project(start, r), w)
            for k, (r, w) in enumerate(zip(ranks, weights, strict=True))
        ]
        terms = delta_terms(start, jobs)
    else:
        states = [random_state(r, seed + 1 + k) for k, r in enumerate(ranks)]
        terms = client_results(states, weights)
    lora = make("hlora", top).lora
    whole = aggregation.create("raflora", lora, 5, options).combine(terms)
    agg = aggregation.create("raflora", lora, top, options)
    merged = agg.combine(terms)
    for m in MODULES:
        expected = paper_merge(terms, m)
        assert_close(whole.lora[m].delta(), as_tensor(expected), F64_TOL)
        assert_close(merged.lora[m].delta(), as_tensor(truncated(expected, top)), F64_TOL)
        for rank in sorted(set(ranks)):
            served = agg.project(merged, rank).lora[m]
            assert served.rank == rank
            assert_close(served.delta(), as_tensor(truncated(expected, rank)), F64_TOL)
    expected_head = sum(t.weight * t.state.extra["h"] for t in terms)
    assert torch.allclose(merged.extra["h"], expected_head, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("delta", [False, True])
def test_equal_ranks_merge_as_hlora_bit_for_bit(delta: bool) -> None:
    """Nothing to renormalise when every client has every component."""
    if delta:
        start = random_state(3, 0)
        hlora = make("hlora", 3)
        jobs = [(random_state(3, k), hlora.project(start, 3), 0.25) for k in (1, 2, 3)]
        terms = delta_terms(start, jobs)
    else:
        terms = client_results([random_state(3, k) for k in (1, 2, 3)], [0.2, 0.3, 0.5])
    raflora, hlora_merge = make("raflora", 3).combine(terms), make("hlora", 3).combine(terms)
    for m in MODULES:
        assert torch.equal(raflora.lora[m].A, hlora_merge.lora[m].A)
        assert torch.equal(raflora.lora[m].B, hlora_merge.lora[m].B)


def test_the_partition_only_high_rank_clients_have_keeps_its_size() -> None:
    """½·e₁e₁ᵀ (rank 1) and ½·I (rank 2): HLoRA's rank-agnostic weights give diag(1, ½), the
    second component shrunk by the share of the client without it; raFLoRA's second
    partition is averaged over the rank-2 client alone: diag(1, 1). The energy beyond the
    smallest rank (the diagnostics' measure of collapse) is ⅕ against ½."""
    e1 = AdapterState(
        {"q": LoraFactors(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]), 1.0)}, {}
    )
    eye = AdapterState({"q": LoraFactors(torch.eye(2), torch.eye(2), 2.0)}, {})
    terms = client_results([e1, eye], [0.5, 0.5])
    raflora, hlora = make("raflora", 2).combine(terms), make("hlora", 2).combine(terms)
    assert torch.allclose(raflora.lora["q"].delta(), torch.eye(2), atol=1e-6)
    assert torch.allclose(hlora.lora["q"].delta(), torch.diag(torch.tensor([1.0, 0.5])), atol=1e-6)
    assert energy_above(raflora, [1])[1] == pytest.approx(0.5)
    assert energy_above(hlora, [1])[1] == pytest.approx(0.2)


def test_rank_agnostic_weights_collapse_geometrically_and_partitioned_ones_do_not() -> None:
    """The paper's mechanism on an echo federation (every client returns what it was sent,
    model updates, ranks 2, 4, 2, 4 with equal weights): HLoRA scales the global's
    components 3 and 4 by ½ every round, so its energy beyond rank 2 falls by ¼ relative to
    the rest each round; raFLoRA keeps the global as it was."""
    ranks, weights = [2, 4, 2, 4], [0.25] * 4
    start = make("hlora", 4).combine(client_results([random_state(4, 7)], [1.0]))  # SVD-ordered
    (raflora_end, raflora_energy), (_, hlora_energy) = (
        echo_rounds(make(name, 4), start, ranks, weights, rounds=5) for name in ("raflora", "hlora")
    )
    first = energy_above(start, [2])[2]
    assert first > 0.05
    assert raflora_energy == pytest.approx([first] * 5, rel=1e-9)
    for m in MODULES:
        assert_close(raflora_end.lora[m].delta(), start.lora[m].delta(), F64_TOL)
    # share beyond rank 2 = x / (x + y): x shrinks by ¼ per round, y stays
    odds = [e / (1 - e) for e in [first, *hlora_energy]]
    assert [b / a for a, b in itertools.pairwise(odds)] == pytest.approx([0.25] * 5)
    assert hlora_energy[-1] < raflora_energy[-1] / 100


def echo_rounds(
    agg: aggregation.Aggregator,
    start: AdapterState,
    ranks: Sequence[int],
    weights: Sequence[float],
    rounds: int,
) -> tuple[AdapterState, list[float]]:
    state, energies = start, []
    for _ in range(rounds):
        state = agg.combine(client_results([agg.project(state, r) for r in ranks], weights))
        energies.append(energy_above(state, [min(ranks)])[min(ranks)])
    return state, energies


# --- in a (fake) federation ----------------------------------------------------------------


@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_raflora_runs_under_every_policy_and_update_mode(update: str, policy: str) -> None:
    """Clients of ranks 2 and 4 training away from the global: no merge refused, a finite
    global at the largest rank."""
    cfg = run_config("raflora", policy, update, [2, 4, 2, 4])
    outcome, events = simulate(cfg, TrainingLearner([5] * 4))
    assert [e for e in events if e["type"] == "merge"]
    assert not [e for e in events if e["type"] in ("reject", "merge_refused")]
    assert outcome.global_state.lora["m"].rank == 4
    assert all(bool(torch.isfinite(f.delta()).all()) for f in outcome.global_state.lora.values())


@pytest.mark.slow
@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_with_equal_ranks_a_run_is_hloras(update: str, policy: str) -> None:
    runs = {
        name: simulate(run_config(name, policy, update, [4] * 4), TrainingLearner([5] * 4))
        for name in ("raflora", "hlora")
    }
    (raflora, raflora_events), (hlora, hlora_events) = runs["raflora"], runs["hlora"]
    assert raflora.global_state.to_bytes() == hlora.global_state.to_bytes()
    assert len(raflora_events) == len(hlora_events)


@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_a_global_that_clients_return_unchanged_stays_unchanged(update: str, policy: str) -> None:
    """Mixed ranks under delta updates (each pair cancels) and under synchronous model
    updates (the paper's setting: every partition is averaged over clients that return it
    whole, where HLoRA shrinks the global); the asynchronous policies' model-update merges
    can hold only low-rank results, which then cannot renew the high partitions, so there
    every client holds the global rank."""
    mixed = update == "delta" or policy == "fedavg"
    ranks = [2, 4, 2, 4] if mixed else [4, 4, 4, 4]
    learner = EchoLearner([5, 5, 5, 5])
    outcome, events = simulate(run_config("raflora", policy, update, ranks), learner)
    assert [e for e in events if e["type"] == "merge"]
    start = learner.initial_state().lora["m"].delta()
    end = outcome.global_state.lora["m"].delta()
    assert float((end - start).norm()) <= 10 * F32_MERGE * float(start.norm())
    if mixed and update == "model":  # where HLoRA collapses, as the diagnostics show
        hlora, hlora_events = simulate(run_config("hlora", policy, update, ranks), learner)
        shrunk = hlora.global_state.lora["m"].delta()
        assert float((shrunk - start).norm()) > 0.1 * float(start.norm())
        above = [
            e["diagnostics"]["energy_above"]["2"] for e in hlora_events if e["type"] == "merge"
        ]
        assert all(b < a for a, b in itertools.pairwise(above))


@pytest.mark.slow
def test_a_tiny_mixed_rank_run(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["clients"]["ranks"] = {2: 0.5, 4: 0.5}
    tiny_config["clients"]["rank_by"] = "speed"
    tiny_config["server"].update(aggregator="raflora")
    run = tmp_path / "run"
    run_cli(tmp_path, tiny_config, run)
    events = read_events(run / "events.jsonl")
    assert {e["rank"] for e in events if e["type"] == "dispatch"} == {2, 4}
    assert [e for e in events if e["type"] == "merge"]
    assert not [e for e in events if e["type"] in ("reject", "merge_refused")]


def test_listed_with_its_paper() -> None:
    assert "raFLoRA" in aggregation.describe("raflora")
    assert "2602.13486" in aggregation.describe("raflora")
    assert config(server={"aggregator": "raflora"}).server.aggregator == "raflora"
