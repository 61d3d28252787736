"""Aggregators: exact FedAvg means, the zero-padding cross-term bias, HLoRA's exact merge."""

from __future__ import annotations

import pytest
import torch
from fakes import delta_terms
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import client_results
from fedlora.aggregation.fedavg import update_norm
from fedlora.config import LoraConfig, ServerConfig

# A float32 merge (QR and SVD of R ≤ 8 stacked components, 2 to 7 wide) rounds by ≲ R·ε₃₂ ≈
# 8·1.2e-7 ≈ 1e-6 of ‖ΔW‖, a projection (leading components rescaled) by a few ε₃₂ more.
# 1e-5·‖ΔW‖ holds both; a wrong term, scaling or truncation is off by a large share of ‖ΔW‖
# (≥ 0.25 in the cases by hand).
# (The zero-padding family's merges are sums and products of binary fractions: exact.)
F32_TOL = 1e-5


def one_module(
    a: list[list[float]], b: list[list[float]], alpha: float, head: float = 0.0
) -> AdapterState:
    return AdapterState(
        lora={"q": LoraFactors(torch.tensor(a), torch.tensor(b), alpha)},
        extra={"classifier.bias": torch.tensor([head])},
    )


def delta(state: AdapterState) -> torch.Tensor:
    return state.lora["q"].delta()


def make(name: str, rank: int, alpha: float = 2.0, **options: object) -> aggregation.Aggregator:
    return aggregation.create(name, LoraConfig(r=rank, alpha=alpha), rank, options)


def test_registry() -> None:
    assert set(aggregation.available()) == {
        "fedavg",
        "fedex",
        "fedsa",
        "flexlora",
        "flora",
        "hetlora",
        "hlora",
        "raflora",
        "reppad",
        "zeropad",
    }
    with pytest.raises(ValueError, match=r"server\.aggregator: unknown name 'nope'"):
        aggregation.create("nope", LoraConfig(), 8)
    with pytest.raises(ValueError, match=r"server\.aggregator_options\.spilt: Extra inputs"):
        aggregation.create("hlora", LoraConfig(), 8, {"spilt": "us"})
    with pytest.raises(ValueError, match=r"server\.aggregator_options\.spilt: Extra inputs"):
        aggregation.create("fedavg", LoraConfig(), 8, {"spilt": "us"})


def test_fedavg_weighted_average_by_hand() -> None:
    agg = make("fedavg", rank=1)
    s1 = one_module([[1.0, 2.0]], [[1.0], [0.0]], 2.0, head=1.0)
    s2 = one_module([[3.0, 6.0]], [[0.0], [4.0]], 2.0, head=0.0)
    merged = agg.combine(client_results([s1, s2], [0.25, 0.75]))
    assert torch.equal(merged.lora["q"].A, torch.tensor([[2.5, 5.0]]))
    assert torch.equal(merged.lora["q"].B, torch.tensor([[0.25], [3.0]]))
    assert torch.equal(merged.extra["classifier.bias"], torch.tensor([0.25]))
    assert merged.lora["q"].alpha == 2.0


def test_alpha_is_folded_into_b() -> None:
    """A client trained with alpha 4 contributes twice the effective B of one with alpha 2."""
    merged = make("fedavg", rank=1).combine(
        client_results(
            [one_module([[1.0]], [[1.0]], 4.0), one_module([[1.0]], [[1.0]], 2.0)], [0.5, 0.5]
        )
    )
    assert merged.lora["q"].scaling * merged.lora["q"].B.item() == pytest.approx(3.0)


def test_fedavg_is_same_rank_only() -> None:
    server = ServerConfig()
    make("fedavg", rank=2).check_setup([2, 2, 2], server)
    with pytest.raises(
        ValueError, match=r"fedavg merges same-rank LoRA only, client ranks are \[2, 4\]"
    ):
        make("fedavg", rank=4).check_setup([2, 4], server)
    make("zeropad", rank=4).check_setup([2, 4], server)


# Two clients on a 2×2 layer: client 1 of rank 1 updates ΔW_1 = e1·[1, 0] (top-left),
# client 2 of rank 2 updates ΔW_2 = I. Alpha = rank, so the scaling is 1 and B A = ΔW.
CLIENT_1 = one_module([[1.0, 0.0]], [[1.0], [0.0]], alpha=1.0)
CLIENT_2 = one_module([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], alpha=2.0)
TRUE_MEAN = torch.tensor([[1.0, 0.0], [0.0, 0.5]])  # ½ΔW_1 + ½ΔW_2


def test_zeropad_has_the_cross_term_bias() -> None:
    """(½B_1 + ½B_2)(½A_1 + ½A_2) = [[1,0],[0,½]]·[[1,0],[0,½]] = diag(1, ¼) ≠ diag(1, ½)."""
    merged = make("zeropad", rank=2, alpha=2.0).combine(
        client_results([CLIENT_1, CLIENT_2], [0.5, 0.5])
    )
    assert torch.allclose(delta(merged), torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    assert not torch.allclose(delta(merged), TRUE_MEAN)


@pytest.mark.parametrize("name", ["hlora", "flexlora"])
@pytest.mark.parametrize("split", ["us", "sqrt"])
def test_hlora_merges_the_true_products(name: str, split: str) -> None:
    merged = make(name, rank=2, alpha=2.0, split=split).combine(
        client_results([CLIENT_1, CLIENT_2], [0.5, 0.5])
    )
    assert torch.allclose(delta(merged), TRUE_MEAN, atol=F32_TOL)  # ‖ΔW‖ ≈ 1


def test_hlora_hands_each_client_its_best_approximation() -> None:
    agg = make("hlora", rank=2, alpha=2.0)
    merged = agg.combine(client_results([CLIENT_1, CLIENT_2], [0.5, 0.5]))
    one = agg.project(merged, 1)  # the best rank-1 approximation of diag(1, ½) is diag(1, 0)
    assert one.lora["q"].rank == 1 and one.lora["q"].alpha == 2.0
    assert torch.allclose(delta(one), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), atol=F32_TOL)
    assert agg.project(merged, 2) is not None and torch.allclose(
        delta(agg.project(merged, 2)), TRUE_MEAN, atol=F32_TOL
    )
    with pytest.raises(ValueError, match="rank-3 client from a rank-2"):
        agg.project(merged, 3)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(0.5, 64),
    st.floats(0.5, 64),
    st.integers(0, 999),
)
def test_scaling_round_trips_across_ranks_and_alphas(
    client_rank: int, extra_rank: int, client_alpha: float, server_alpha: float, seed: int
) -> None:
    """A client of any rank and alpha merged alone comes back with the same ΔW at its rank."""
    g = torch.Generator().manual_seed(seed)
    client = AdapterState(
        {
            "q": LoraFactors(
                torch.randn(client_rank, 7, generator=g),
                torch.randn(5, client_rank, generator=g),
                client_alpha,
            )
        },
        {"h": torch.zeros(1)},
    )
    global_rank = client_rank + extra_rank - 1
    agg = aggregation.create("hlora", LoraConfig(r=global_rank, alpha=server_alpha), global_rank)
    merged = agg.combine(client_results([client], [1.0]))
    # rounding scales with the whole ΔW (‖ΔW‖ up to ~400 at alpha 64), not with each entry
    tolerance = F32_TOL * float(torch.linalg.matrix_norm(delta(client)))
    assert torch.allclose(delta(merged), delta(client), rtol=0, atol=tolerance)
    back = agg.project(merged, client_rank)
    assert back.lora["q"].alpha == server_alpha and back.lora["q"].rank == client_rank
    assert torch.allclose(delta(back), delta(client), rtol=0, atol=tolerance)


def test_hetlora_weights_by_update_norm() -> None:
    small = one_module([[1.0, 0.0]], [[1.0], [0.0]], alpha=1.0)  # ‖ΔW‖ = 1
    big = one_module([[3.0, 0.0]], [[1.0], [0.0]], alpha=1.0)  # ‖ΔW‖ = 3
    assert update_norm(big) == pytest.approx(3.0)
    agg = make("hetlora", rank=1, alpha=1.0)
    assert agg.reweight(client_results([small, big], [0.5, 0.5])) == pytest.approx([0.25, 0.75])
    merged = agg.combine(client_results([small, big], [0.5, 0.5]))
    assert torch.allclose(merged.lora["q"].A, torch.tensor([[2.5, 0.0]]))  # ¼·1 + ¾·3


def test_zero_padding_truncates_on_the_way_out() -> None:
    agg = make("zeropad", rank=2, alpha=2.0)
    merged = agg.combine(client_results([CLIENT_1, CLIENT_2], [0.5, 0.5]))
    one = agg.project(merged, 1)
    assert torch.equal(one.lora["q"].A, merged.lora["q"].A[:1])


def test_fedsa_shares_a_and_keeps_each_clients_b() -> None:
    agg = make("fedsa", rank=1, alpha=1.0)
    start = one_module([[1.0, 1.0]], [[0.0], [0.0]], alpha=1.0)
    assert agg.personalize(start, client=3) is start  # no B of its own yet: the global's
    trained = one_module([[2.0, 0.0]], [[5.0], [6.0]], alpha=1.0)
    agg.remember(3, trained)
    merged = agg.combine(client_results([trained, start], [0.5, 0.5]))
    assert torch.equal(merged.lora["q"].A, torch.tensor([[1.5, 0.5]]))
    mine = agg.personalize(agg.project(merged, 1), client=3)
    assert torch.equal(mine.lora["q"].A, merged.lora["q"].A)  # the shared A ...
    assert torch.equal(mine.lora["q"].B, torch.tensor([[5.0], [6.0]]))  # ... and its own B
    other = agg.personalize(agg.project(merged, 1), client=4)
    assert torch.equal(other.lora["q"].B, merged.lora["q"].B)
    # B never crosses the network: only A (1×2) and the head (1) are charged
    assert agg.transmitted_bytes(mine) == 4 * (2 + 1)
    assert make("zeropad", rank=1).transmitted_bytes(mine) == 4 * (2 + 2 + 1)


def test_flora_stacks_exactly_and_restarts_clients_fresh() -> None:
    agg = make("flora", rank=2, alpha=2.0)
    with pytest.raises(ValueError, match=r"server\.update: flora adds"):
        agg.check_setup([1, 2], ServerConfig())
    agg.check_setup([1, 2], ServerConfig(update="delta"))
    start = one_module([[0.1, 0.2], [0.3, 0.4]], [[0.0, 0.0], [0.0, 0.0]], alpha=2.0)
    sent_1, sent_2 = agg.project(start, 1), agg.project(start, 2)
    for sent, rank in ((sent_1, 1), (sent_2, 2)):
        factors = sent.lora["q"]
        assert factors.rank == rank and torch.equal(factors.B, torch.zeros(2, rank))
        assert factors.A.abs().max() <= 2**-0.5  # PEFT's bound 1/√in
        assert sent.frozen == start.lora
    # the round as the fedavg policy sends it in delta mode: G + Σ w (U − S)
    merged = agg.combine(delta_terms(start, [(CLIENT_1, sent_1, 0.5), (CLIENT_2, sent_2, 0.5)]))
    assert torch.allclose(delta(merged), TRUE_MEAN, atol=F32_TOL)  # no truncation
    assert merged.lora["q"].rank == 2  # the numerical rank of the sum
    nxt = agg.combine(delta_terms(merged, [(CLIENT_1, agg.project(merged, 1), 1.0)]))
    assert torch.allclose(delta(nxt), TRUE_MEAN + delta(CLIENT_1), atol=F32_TOL)


def test_rslora_gives_every_rank_the_scaling_alpha_over_root_rank() -> None:
    """Under rsLoRA a rank-r factor carries α·√r, so its standard scaling α·√r / r = α/√r; the
    merge and the projection keep ΔW exact across ranks."""
    lora = LoraConfig(r=4, alpha=2.0, rslora=True)
    assert [lora.alpha_at(r) / r for r in (1, 4, 16)] == [2.0, 1.0, 0.5]
    agg = aggregation.create("hlora", lora, 4)
    client = one_module([[1.0, 0.0], [0.0, 0.5]], [[1.0, 0.0], [0.0, 1.0]], alpha=lora.alpha_at(2))
    merged = agg.combine(client_results([client], [1.0]))
    assert merged.lora["q"].alpha == 4.0
    assert torch.allclose(delta(merged), delta(client), atol=F32_TOL)  # ‖ΔW‖ ≈ 1.6
    one = agg.project(merged, 1)
    assert one.lora["q"].alpha == 2.0 and one.lora["q"].scaling == 2.0
    assert torch.allclose(delta(one), torch.tensor([[1.0, 0.0], [0.0, 0.0]]) * 2**0.5, atol=F32_TOL)
