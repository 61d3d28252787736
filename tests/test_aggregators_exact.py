"""FedEx-LoRA and replication-padding against dense references, and both under every policy
and update mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakes import FakeLearner, config, delta_terms, deterministic, run_cli, simulate
from hypothesis import given, settings
from hypothesis import strategies as st
from test_diagnostics import EchoLearner
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import WeightedState, client_results
from fedlora.aggregation.base import products
from fedlora.aggregation.catalog import DESCRIPTIONS
from fedlora.aggregation.diagnostics import merge_error
from fedlora.cli import app
from fedlora.client.model import build_resident_model
from fedlora.config import ExperimentConfig, LoraConfig, load_config
from fedlora.results.events import EventLog
from fedlora.results.store import read_global_state
from fedlora.sim.engine import Simulation, build_simulation
from fedlora.snapshot import Snapshot

MODULES = ("q", "v")
# Float64 factors (6×5 layers, entries O(1), ≤ 40 stacked components): the QR and SVD of a
# merge round by ≲ R·ε₆₄ ≈ 1e-14 of the norms involved, times the cancellation of the
# residual (≲ 10² here). 1e-9 holds that and fails any wrong term, weight or truncation,
# which is off by a sizeable share of ‖ΔW‖.
F64_TOL = 1e-9
# A float32 merge of ≤ 40 stacked components rounds by ≲ R·ε₃₂ ≈ 5e-6 of ‖ΔW‖, and FedEx's
# residual is cut where the float32 rounding lies (s_max·max(out, in)·ε₃₂ ≈ 5e-7 of the largest
# component per dropped one, a handful at most): 1e-5 holds both.
F32_MERGE = 1e-5


def random_factors(rank: int, alpha: float, g: torch.Generator) -> LoraFactors:
    a = torch.randn(rank, 5, generator=g, dtype=torch.float64)
    return LoraFactors(a, torch.randn(6, rank, generator=g, dtype=torch.float64), alpha)


def random_state(rank: int, seed: int, frozen_rank: int = 0) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {m: random_factors(rank, 2.0 * rank, g) for m in MODULES}
    frozen = {m: random_factors(frozen_rank, 4.0, g) for m in MODULES} if frozen_rank else {}
    return AdapterState(lora, {"h": torch.ones(1, dtype=torch.float64) * seed}, frozen)


def total(state: AdapterState, module: str) -> torch.Tensor:
    """The model update a state stands for: s·B·A plus its frozen update."""
    frozen = state.frozen.get(module)
    return state.lora[module].delta() + (0 if frozen is None else frozen.delta())


def dense_sum(terms: Sequence[WeightedState], module: str) -> torch.Tensor:
    return sum(t.weight * total(t.state, module) for t in terms)  # type: ignore[return-value]


def make(name: str, rank: int) -> aggregation.Aggregator:
    return aggregation.create(name, LoraConfig(r=rank, alpha=2.0 * rank), rank)


def assert_close(got: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(expected.norm()))
    assert float((got - expected).norm()) <= tol * scale


def test_every_aggregator_is_described_with_its_paper() -> None:
    assert set(DESCRIPTIONS) == set(aggregation.available())
    assert "Byun & Lee" in aggregation.describe("reppad")
    assert "FedEx-LoRA" in aggregation.describe("fedex")


# --- replication padding ----------------------------------------------------------------


def test_replication_keeps_what_only_the_high_rank_client_has() -> None:
    """½·e₁e₁ᵀ (rank 1) and ½·I (rank 2): zero-padding halves the second component of A and
    of B (diag(1, ¼)); replication fills the rank-1 client's missing row with the rank-2
    client's, so that component stays whole: diag(1, 1)."""
    e1 = AdapterState(
        {"q": LoraFactors(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]), 1.0)}, {}
    )
    eye = AdapterState({"q": LoraFactors(torch.eye(2), torch.eye(2), 2.0)}, {})
    terms = client_results([e1, eye], [0.5, 0.5])
    assert torch.equal(make("reppad", 2).combine(terms).lora["q"].delta(), torch.eye(2))
    zero = make("zeropad", 2)
    assert torch.equal(zero.combine(terms).lora["q"].delta(), torch.diag(torch.tensor([1.0, 0.25])))


cohorts = st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999))
def test_replication_averages_each_component_over_the_clients_that_have_it(
    ranks: list[int], seed: int
) -> None:
    states = [random_state(r, seed + k) for k, r in enumerate(ranks)]
    weights = list(np.random.default_rng(seed).dirichlet([1.0] * len(ranks)))
    top = max(ranks)
    merged = make("reppad", top).combine(client_results(states, weights))
    for m in MODULES:
        a = torch.zeros(top, 5, dtype=torch.float64)
        b = torch.zeros(6, top, dtype=torch.float64)
        for j in range(top):
            have = [
                (w, s.lora[m]) for w, s in zip(weights, states, strict=True) if s.lora[m].rank > j
            ]
            share = sum(w for w, _ in have)
            a[j] = sum(w * f.A[j] for w, f in have) / share
            b[:, j] = sum(w * f.B[:, j] * f.scaling for w, f in have) / share
        assert_close(merged.lora[m].delta(), b @ a, F64_TOL)
    if len(set(ranks)) == 1:  # nothing to pad: zero-padding's merge, bit for bit
        zero = make("zeropad", top).combine(client_results(states, weights))
        assert all(torch.equal(zero.lora[m].A, merged.lora[m].A) for m in MODULES)


# --- FedEx-LoRA -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(ranks=cohorts, seed=st.integers(0, 999), delta=st.booleans())
def test_fedex_merges_exactly_at_mixed_ranks(ranks: list[int], seed: int, delta: bool) -> None:
    """F + s·B·A of the merge is Σ_t w_t (F_t + s_t B_t A_t), whatever the ranks, the
    weights and the frozen updates the terms carry; so is what every client is served."""
    top = max(ranks)
    agg = make("fedex", top)
    weights = list(np.random.default_rng(seed).dirichlet([1.0] * len(ranks)))
    start = random_state(top, seed, frozen_rank=3)
    if delta:  # a job's result carries the frozen factors its job was sent
        sent = [agg.project(start, r) for r in ranks]
        jobs = [
            (replace(random_state(r, seed + 1 + k), frozen=s.frozen), s, w)
            for k, (r, s, w) in enumerate(zip(ranks, sent, weights, strict=True))
        ]
        terms = delta_terms(start, jobs)
    else:
        states = [random_state(r, seed + 1 + k, frozen_rank=2) for k, r in enumerate(ranks)]
        terms = client_results(states, weights)
    merged = agg.combine(terms)
    for m in MODULES:
        assert_close(total(merged, m), dense_sum(terms, m), F64_TOL)
        # the residual's rank: at most the sum of the ranks merged (frozen and the averages'
        # included), and never beyond the 6×5 layer's
        merged_ranks = sum(f.rank for _, f in products(terms, m)) + top
        assert merged.frozen[m].rank <= min(merged_ranks, 5)
    assert merge_error(terms, merged) < F64_TOL
    for rank in sorted(set(ranks)):
        served = agg.project(merged, rank)
        assert served.lora["q"].rank == rank
        for m in MODULES:
            assert_close(total(served, m), total(merged, m), F64_TOL)


def test_fedex_adapter_is_fedit_and_the_residual_is_the_cross_terms() -> None:
    """Same-rank clients: the adapter is FedIT's mean of A and of B, and the frozen update is
    exactly what that mean misses: ½(B₁A₁ + B₂A₂) − B̄Ā = ¼(B₁ − B₂)(A₁ − A₂), of rank 2."""
    states = [random_state(2, 1), random_state(2, 2)]
    terms = client_results(states, [0.5, 0.5])
    fedex, fedavg = make("fedex", 2).combine(terms), make("fedavg", 2).combine(terms)
    for m in MODULES:
        assert torch.equal(fedex.lora[m].A, fedavg.lora[m].A)
        missed = dense_sum(terms, m) - fedavg.lora[m].delta()
        assert_close(fedex.frozen[m].delta(), missed, F64_TOL)
        assert fedex.frozen[m].rank == 2
    one = make("fedex", 2).combine(client_results(states[:1], [1.0]))  # nothing to correct
    assert all(float(one.frozen[m].delta().norm()) == 0.0 for m in MODULES)


def test_fedex_charges_the_frozen_factors_down_and_not_up() -> None:
    agg = make("fedex", 4)
    merged = agg.combine(client_results([random_state(2, 1), random_state(4, 2)], [0.5, 0.5]))
    sent = agg.project(merged, 2)
    frozen = sum(t.numel() * 8 for f in sent.frozen.values() for t in (f.A, f.B))
    assert frozen > 0
    assert agg.download_bytes(sent, client=0) == sent.num_bytes()
    assert agg.transmitted_bytes(sent) == sent.num_bytes() - frozen


# --- every policy, both update modes -----------------------------------------------------

SERVERS = {
    "fedavg": {"per_round": 3},
    "fedbuff": {"concurrency": 3, "window": 2},
    "semiasync": {"concurrency": 3, "window": 2},
    "fedasync": {"concurrency": 3, "mixing": 0.5},
    "fedfa": {"concurrency": 3, "window": 2},
}
NEW = ["fedex", "reppad"]


def run_config(
    aggregator: str, policy: str, update: str, ranks: list[int], **sections: Any
) -> ExperimentConfig:
    return config(
        lora={"r": 4, "alpha": 8.0},
        clients={"ranks": ranks},
        server={"policy": policy, "aggregator": aggregator, "update": update, "rounds": 3}
        | SERVERS[policy],
        **sections,
    )


@pytest.mark.parametrize("aggregator", NEW)
@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_a_global_that_clients_return_unchanged_stays_unchanged(
    aggregator: str, update: str, policy: str
) -> None:
    """FedEx-LoRA serves every client the global model itself, so mixed ranks hold under
    model updates too; replication-padding truncates for a lower-rank client by design, so
    there every client holds the global rank."""
    mixed = update == "delta" or aggregator == "fedex"
    ranks = [2, 4, 2, 4] if mixed else [4, 4, 4, 4]
    learner = EchoLearner([5, 5, 5, 5])
    outcome, events = simulate(run_config(aggregator, policy, update, ranks), learner)
    assert [e for e in events if e["type"] == "merge"]
    assert not [e for e in events if e["type"] in ("reject", "merge_refused")]
    start = learner.initial_state().lora["m"].delta()
    end = total(outcome.global_state, "m")
    # ≤ 9 float32 merges in a row, each ≲ 1e-5 of ‖ΔW‖ (≈ 16 here)
    assert float((end - start).norm()) <= 10 * F32_MERGE * float(start.norm())


class TrainingLearner(FakeLearner):
    """FakeLearner's training (each job moves A) from EchoLearner's rank-4 global."""

    initial_state = EchoLearner.initial_state


@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_fedex_merges_exactly_under_every_policy(update: str, policy: str) -> None:
    """Every merge's error against the exact weighted sum of its terms (frozen updates
    included) is rounding, with clients of ranks 2 and 4 training away from the global."""
    outcome, events = simulate(
        run_config("fedex", policy, update, [2, 4, 2, 4]), TrainingLearner([5] * 4)
    )
    merges = [e["diagnostics"]["error"] for e in events if e["type"] == "merge"]
    assert merges and max(merges) < F32_MERGE
    assert outcome.global_state.frozen["m"].rank >= 1
    down = [e["bytes"] for e in events if e["type"] == "dispatch"]
    up = [e["bytes"] for e in events if e["type"] == "arrival"]
    adapter = {2: 4 * (6 + 10 + 2), 4: 4 * (12 + 20 + 2)}  # A r×3, B 5×r, head 2 (float32)
    assert set(up) <= set(adapter.values())  # what comes back is the adapter alone
    assert max(down) > max(adapter.values())  # what goes down carries the frozen factors


@pytest.mark.slow
def test_a_fedex_run_exports_only_merged_and_the_merged_model_is_the_global(
    tmp_path: Path, tiny_config: dict
) -> None:
    tiny_config["clients"]["ranks"] = {2: 0.5, 4: 0.5}
    tiny_config["server"]["aggregator"] = "fedex"
    run = tmp_path / "run"
    run_cli(tmp_path, tiny_config, run)
    state = read_global_state(run)
    assert state.frozen and all(f.rank >= 1 for f in state.frozen.values())
    assert not (run / "adapter").exists()  # no PEFT folder that would drop the frozen part
    plain = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert plain.exit_code != 0
    assert "frozen factors" in plain.output and "--merge" in plain.output
    merged_folder = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(run), str(merged_folder), "--merge"])
    assert result.exit_code == 0, result.output
    merged = AutoModelForSequenceClassification.from_pretrained(merged_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_folder)
    batch = tokenizer(["red cat runs"], ["red dog"], return_tensors="pt")
    config = load_config(run / "config.yaml")
    resident, _ = build_resident_model(config.model, config.lora, 2, config.seed, rank=state.rank)
    resident.load(state)  # the frozen update folded into the base weights, LoRA beside them
    resident.model.eval()
    # float32, ΔW folded into the weights or applied beside them: a dozen matmuls of width
    # ≤ 64 each round by ~√64·ε₃₂ ≈ 1e-6 of O(1) activations. The frozen update moves these
    # logits by ~8e-4 (seen), so without it they differ by more than 1e-4
    with torch.no_grad():
        logits = merged(**batch).logits
        assert torch.allclose(logits, resident.model(**batch).logits, atol=1e-5)
        resident.load(replace(state, frozen={}))  # what a plain adapter would have carried
        assert not torch.allclose(logits, resident.model(**batch).logits, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("update", ["model", "delta"])
def test_a_resumed_fedex_run_merges_as_the_uninterrupted_one(update: str) -> None:
    """FedFa's window holds results (and, with delta updates, what their jobs were sent)
    across checkpoints, and a resumed run reads their shared frozen factors back as copies;
    the merge groups frozen factors by value, so the resumed run is bit for bit the
    uninterrupted one (grouped by object only, delta updates differ in the last bits)."""
    every_merge = {"checkpoint_every": 1, "checkpoint_seconds": None}
    cfg = run_config("fedex", "fedfa", update, [2, 4, 2, 4], runtime=every_merge)
    saved: list[Snapshot] = []

    def simulation(log: EventLog, keep: bool) -> Simulation:
        def checkpoint(snap: Snapshot) -> None:
            snap.meta["events_offset"] = log.sync()
            saved.append(Snapshot.from_bytes(snap.to_bytes()))  # through the file format

        learner = TrainingLearner([5] * 4)
        return build_simulation(cfg, learner, [5] * 4, log, checkpoint=checkpoint if keep else None)

    log = EventLog()
    reference = simulation(log, keep=True).run()
    assert len(saved) > 3
    for snap in saved[1::2]:
        resumed_log = EventLog()
        resumed = simulation(resumed_log, keep=False)
        resumed.load_state_dict(snap)
        outcome = resumed.run()
        events = log.records[: snap.meta["events_offset"]] + resumed_log.records
        assert deterministic(events) == deterministic(log.records)
        assert outcome.global_state.to_bytes() == reference.global_state.to_bytes()
