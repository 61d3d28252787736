"""HetLoRA's local rank self-pruning: the penalty against a hand computation, pruned
components through real local training, the memory's decisions, and runs under every policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import config, run_cli, simulate, tiny_data
from hypothesis import given, settings
from hypothesis import strategies as st
from test_aggregators_exact import SERVERS  # every policy
from test_diagnostics import EchoLearner

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.selfprune import RankMemory, SelfPrune, active_rank, factor_pairs
from fedlora.client.model import ResidentModel, build_resident_model
from fedlora.client.protocol import LocalResult
from fedlora.client.trainer import plan_batches, train_local
from fedlora.config import (
    ConfigError,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    build_config,
    load_config,
)
from fedlora.experiment import prepare
from fedlora.preflight import check
from fedlora.results.events import read_events

PRUNE = {"self_prune": {"decay": 0.5, "penalty": 0.1}}


def pair(a: list[list[float]], b: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(a, dtype=torch.float64, requires_grad=True),
        torch.tensor(b, dtype=torch.float64, requires_grad=True),
    )


def test_the_penalty_and_its_gradient_by_hand() -> None:
    """Rank 4, γ = 0.5: the trailing components are 2 and 3. ‖A_t‖ = 5 (rows 3,0,0 and
    0,4,0), ‖B_t‖ = 2, so λ·‖B_t‖·‖A_t‖ = 0.1·2·5 = 1; ∂/∂A_t = λ‖B_t‖·A_t/‖A_t‖ = 0.04·A_t,
    ∂/∂B_t = λ‖A_t‖·B_t/‖B_t‖ = 0.25·B_t, and nothing on the leading components."""
    options = SelfPrune(decay=0.5, penalty=0.1)
    a, b = pair(
        [[1.0, 1.0, 1.0], [1.0, -1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]],
        [[7.0, 1.0, 2.0, 0.0], [5.0, 1.0, 0.0, 0.0]],
    )
    value = options.loss([(a, b)], rank=4)
    assert float(value.detach()) == pytest.approx(1.0, rel=1e-15)
    value.backward()
    assert a.grad is not None and b.grad is not None
    expected_a = torch.zeros(4, 3, dtype=torch.float64)
    expected_a[2:] = 0.04 * a.detach()[2:]
    expected_b = torch.zeros(2, 4, dtype=torch.float64)
    expected_b[:, 2:] = 0.25 * b.detach()[:, 2:]
    assert torch.allclose(a.grad, expected_a, rtol=1e-15, atol=0)
    assert torch.allclose(b.grad, expected_b, rtol=1e-15, atol=0)
    # modules add up; at rank 3 the window is components 1 and 2 (⌊1.5⌋ = 1): here
    # ‖B_t‖² = 1 + 4 + 1 + 0 and ‖A_t‖² = 1 + 1 + 4 + 9, there ‖B_t‖² = 8 and ‖A_t‖² = 2
    other = pair([[0.0, 0.0, 1.0]] * 3, [[2.0, 2.0, 2.0]])
    at_three = options.tail_norm([(a, b), other], rank=3).detach()
    assert float(at_three) == pytest.approx((6 * 15) ** 0.5 + (8 * 2) ** 0.5, rel=1e-15)


def test_the_pruned_rank_is_the_decimal_floor_and_never_below_one() -> None:
    assert SelfPrune(decay=0.29, penalty=0).tail_start(100) == 29  # 0.29·100 = 28.999… in binary
    assert SelfPrune(decay=0.99, penalty=0).pruned(100) == 99
    assert SelfPrune(decay=0.99, penalty=0).pruned(8) == 7
    assert SelfPrune(decay=0.9, penalty=0).pruned(1) == 1


@settings(max_examples=30, deadline=None)
@given(rank=st.integers(1, 8), keep=st.integers(1, 8), seed=st.integers(0, 999))
def test_the_active_rank_read_from_what_a_client_is_sent_is_the_memory_s(
    rank: int, keep: int, seed: int
) -> None:
    keep = min(keep, rank)
    g = torch.Generator().manual_seed(seed)
    lora = {
        m: LoraFactors(torch.randn(rank, 3, generator=g), torch.randn(5, rank, generator=g), 2.0)
        for m in ("q", "v")
    }
    memory = RankMemory(SelfPrune(decay=0.5, penalty=0.1))
    memory.ranks[0] = keep
    sent = memory.personalize(AdapterState(lora, {}), 0)
    assert active_rank(factor_pairs(sent)) == keep
    assert all(f.rank == rank for f in sent.lora.values())  # the shape it was sent
    assert all(int(torch.count_nonzero(f.A[keep:])) == 0 for f in sent.lora.values())
    assert all(int(torch.count_nonzero(f.B[:, keep:])) == 0 for f in sent.lora.values())
    assert memory.personalize(AdapterState(lora, {}), 1).lora == lora  # no memory: as sent


def scaled_tail(factor: float, seed: int = 0) -> AdapterState:
    """A rank-4 state whose components 2 and 3 are scaled by ``factor``."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 3, generator=g), torch.randn(5, 4, generator=g)
    a[2:] *= factor
    return AdapterState({"q": LoraFactors(a, b, 8.0)}, {})


def trains_at(agg: aggregation.Aggregator, client: int) -> int:
    """The active rank of what ``client`` is sent next, as its dispatch event names it."""
    sent = agg.personalize(scaled_tail(1.0, seed=9), client)
    assert sent.rank == 4  # the shape of its rank, whatever it trains at
    rank = agg.dispatch_details(client, sent)["active_rank"]
    assert rank == active_rank(factor_pairs(sent))  # what its learner reads
    return rank


def test_a_client_prunes_when_its_trailing_norm_fell_and_not_when_it_rose() -> None:
    agg = aggregation.create("hetlora", LoraConfig(r=4, alpha=8.0), 4, PRUNE)
    assert agg.local_penalty() == SelfPrune(decay=0.5, penalty=0.1)
    assert trains_at(agg, 0) == 4
    agg.remember(0, scaled_tail(1.0))  # the first round only records its norm
    assert trains_at(agg, 0) == 4
    agg.remember(0, scaled_tail(2.0))  # rose: kept
    assert trains_at(agg, 0) == 4
    agg.remember(0, scaled_tail(1.5))  # fell: 4 → ⌊0.5·4⌋ = 2
    assert trains_at(agg, 0) == 2
    assert trains_at(agg, 1) == 4  # another client is its own
    # now the window is component 1 of the rank-2 client (⌊0.5·2⌋ = 1), compared with the
    # previous round's norm whatever its window (there two components, scaled by 1.5): fell
    agg.remember(0, agg.personalize(scaled_tail(1.0), 0))
    assert trains_at(agg, 0) == 1
    agg.remember(0, agg.personalize(scaled_tail(1.0, seed=2), 0))  # never below 1
    agg.remember(0, agg.personalize(scaled_tail(1.0, seed=3), 0))
    assert trains_at(agg, 0) == 1
    restored = aggregation.create("hetlora", LoraConfig(r=4, alpha=8.0), 4, PRUNE)
    restored.load_state_dict(agg.state_dict())
    assert restored.state_dict().keys() == agg.state_dict().keys() == {"self_prune.0"}
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in agg.state_dict().items())
    assert trains_at(restored, 0) == 1


def test_without_the_option_hetlora_keeps_nothing_and_sends_as_projected() -> None:
    agg = aggregation.create("hetlora", LoraConfig(r=4, alpha=8.0), 4)
    state = scaled_tail(1.0)
    agg.remember(0, state)
    agg.remember(0, scaled_tail(0.5))
    assert agg.personalize(state, 0) is state
    assert agg.state_dict() == {} and agg.dispatch_details(0, state) == {}
    assert agg.local_penalty() is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"self_prune": {"decay": 1.0, "penalty": 0.1}}, r"self_prune\.decay: .*less than 1"),
        ({"self_prune": {"decay": 0.9, "penalty": -1}}, r"self_prune\.penalty: .*greater than"),
        ({"self_prune": {"decay": 0.9}}, r"self_prune\.penalty: Field required"),
        ({"self_prune": {"decay": 0.9, "penalty": 1, "gamma": 2}}, r"self_prune\.gamma: Extra"),
    ],
)
def test_a_bad_option_names_its_key(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=rf"server\.aggregator_options\.{message}"):
        aggregation.create("hetlora", LoraConfig(r=4), 4, options)


def test_the_option_with_another_aggregator_is_a_config_error(tiny_config: dict) -> None:
    tiny_config["server"].update(aggregator="zeropad", aggregator_options=PRUNE)
    with pytest.raises(ConfigError, match=r"aggregator_options\.self_prune: Extra.*zeropad"):
        check(build_config(tiny_config))


# --- local training on a tiny random BERT ----------------------------------------------------


@pytest.fixture(scope="module")
def resident() -> ResidentModel:
    model, _ = build_resident_model(ModelConfig(init="random"), LoraConfig(r=4), 2, seed=0)
    return model


def trained_from(
    resident: ResidentModel, start: AdapterState, penalty: SelfPrune | None
) -> AdapterState:
    train = TrainConfig(local_steps=4, batch_size=4, lr=5e-2, weight_decay=0.1)
    batches = plan_batches(np.arange(16), train, np.random.default_rng(0))
    result = train_local(resident, start, batches, tiny_data(), train, 3, False, 0, penalty)
    return result.state


def test_pruned_components_stay_exactly_zero_and_the_penalty_shrinks_the_tail(
    resident: ResidentModel,
) -> None:
    """AdamW with weight decay, LoRA dropout 0.1 and gradient clipping: components 3 and 4 of
    a rank-4 adapter sent at active rank 3 (γ = 0.5: window 1 to 3) stay zero; a strong
    penalty leaves the window smaller than training without it."""
    g = torch.Generator().manual_seed(0)
    initial = resident.state()
    lora = {
        m: LoraFactors(f.A, torch.randn(f.B.shape, generator=g), f.alpha)
        for m, f in initial.lora.items()
    }
    memory = RankMemory(SelfPrune(decay=0.5, penalty=0.1))
    memory.ranks[0] = 3
    start = memory.personalize(AdapterState(lora, initial.extra), 0)
    strong = SelfPrune(decay=0.5, penalty=100.0)
    with_penalty = trained_from(resident, start, strong)
    without = trained_from(resident, start, None)
    for trained in (with_penalty, without):
        assert trained.rank == 4  # the shape it was sent
        for f in trained.lora.values():
            assert int(torch.count_nonzero(f.A[3:])) == 0
            assert int(torch.count_nonzero(f.B[:, 3:])) == 0
        assert active_rank(factor_pairs(trained)) == 3
    tail = [float(strong.tail_norm(factor_pairs(s), 3)) for s in (start, with_penalty, without)]
    assert tail[1] < tail[0] and tail[1] < tail[2]


# --- whole runs ------------------------------------------------------------------------------


class ShrinkingLearner(EchoLearner):
    """Returns what it was sent with A halved, and notes the rank it read from the start."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(sizes)
        self.read: dict[int, list[int]] = {}

    def train(self, start: AdapterState, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        client = next(c for c, idx in enumerate(self.indices) if batches[0][0] in idx)
        self.read.setdefault(client, []).append(active_rank(factor_pairs(start)))
        lora = {m: LoraFactors(f.A * 0.5, f.B, f.alpha) for m, f in start.lora.items()}
        return LocalResult(AdapterState(lora, start.extra), loss=0.0, examples=2, steps=1)


@pytest.mark.parametrize("update", ["model", "delta"])
@pytest.mark.parametrize("policy", sorted(SERVERS))
def test_clients_prune_under_every_policy_and_update_mode(policy: str, update: str) -> None:
    """Trailing norms fall every job, so every client's second job starts pruned; each job
    trains at the rank its dispatch event names, read back from what it was sent, and its
    upload costs what its download did (the shape it was sent)."""
    cfg = config(
        lora={"r": 4, "alpha": 8.0},
        clients={"ranks": [2, 4, 2, 4]},
        server={"policy": policy, "aggregator": "hetlora", "update": update, "rounds": 6}
        | SERVERS[policy]
        | {"aggregator_options": PRUNE},
    )
    learner = ShrinkingLearner([5, 5, 5, 5])
    _, events = simulate(cfg, learner)
    assert not [e for e in events if e["type"] in ("reject", "merge_refused")]
    dispatches = [e for e in events if e["type"] == "dispatch"]
    assert any(e["active_rank"] < e["rank"] for e in dispatches)
    for client, read in learner.read.items():
        named = [e["active_rank"] for e in dispatches if e["client"] == client]
        assert read == named[: len(read)]
    down = {e["job"]: e["bytes"] for e in dispatches}
    assert all(e["bytes"] == down[e["job"]] for e in events if e["type"] == "arrival")


@pytest.mark.slow
def test_a_tiny_model_run_trains_with_the_penalty(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["clients"]["ranks"] = {2: 0.5, 4: 0.5}
    tiny_config["server"].update(
        aggregator="hetlora",
        rounds=6,
        aggregator_options={"self_prune": {"decay": 0.5, "penalty": 10.0}},
    )
    run = tmp_path / "run"
    run_cli(tmp_path, tiny_config, run)
    events = read_events(run / "events.jsonl")
    dispatches = [e for e in events if e["type"] == "dispatch"]
    assert all(1 <= e["active_rank"] <= e["rank"] for e in dispatches)
    assert any(e["active_rank"] < e["rank"] for e in dispatches)  # seen: 5 of 18 jobs
    learner = prepare(load_config(run / "config.yaml")).learner  # what each client trains with
    assert learner.penalty == SelfPrune(decay=0.5, penalty=10.0)
    assert not [e for e in events if e["type"] == "reject"]
