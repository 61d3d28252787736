"""The low-rank core: equal to the dense SVD route, Eckart–Young truncation error, exactness."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.aggregation.lowrank import stacked_svd, weighted_sum_factors

# float64 merges of the cases below (≤ 24 wide, total rank R ≤ 30, |w| ≤ 2) are backward
# stable: each route (stacked QR+SVD, dense SVD) errs by ≲ R·ε₆₄·σ₁ ≈ 7e-15·σ₁. 1e-8·(1 + σ₁)
# leaves room for that (and for the truncation's conditioning, see the gap below) and still
# fails on a merge that drops to float32 (≈ 1e-7·σ₁).
F64_TOL = 1e-8
# float32 merges of O(1) factors a few wide (σ₁ ≤ 8 below): products and orthonormality checks
# round by ≲ R·ε₃₂·σ₁ ≈ 3·1.2e-7·8 ≈ 3e-6; 1e-5 holds that, a wrong component is off by O(1).
F32_TOL = 1e-5


def dense_sum(Bs: list[torch.Tensor], As: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return sum(w * (b.double() @ a.double()) for b, a, w in zip(Bs, As, weights, strict=True))


@st.composite
def factor_lists(
    draw: st.DrawFn,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    out_features = draw(st.integers(1, 24))
    in_features = draw(st.integers(1, 24))
    ranks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    weights = draw(
        st.lists(st.floats(-2, 2, allow_nan=False), min_size=len(ranks), max_size=len(ranks))
    )
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    Bs = [torch.randn(out_features, r, generator=g, dtype=torch.float64) for r in ranks]
    As = [torch.randn(r, in_features, generator=g, dtype=torch.float64) for r in ranks]
    rank = draw(st.integers(1, 8))
    return Bs, As, weights, rank


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(factor_lists(), st.sampled_from(["us", "sqrt"]))
def test_equals_the_dense_truncated_svd(case: tuple, split: str) -> None:
    Bs, As, weights, rank = case
    total = dense_sum(Bs, As, weights)
    B, A = weighted_sum_factors(Bs, As, weights, rank, split=split)  # type: ignore[arg-type]
    assert B.shape == (total.shape[0], rank) and A.shape == (rank, total.shape[1])
    s = torch.linalg.svdvals(total)
    # Eckart–Young: the error of the best rank-r approximation is √(Σ discarded σ²) ...
    expected_error = s[rank:].square().sum().sqrt()
    assert torch.linalg.norm(total - B @ A) == pytest.approx(
        float(expected_error), abs=F64_TOL * (1 + float(s[0]) if len(s) else 1)
    )  # Weyl: a backward error E moves the residual by ≤ 2‖E‖, whatever the gap
    # ... and it equals the dense truncated SVD itself where the r-th gap makes that unique:
    # a perturbation E moves a truncation by ≲ ‖E‖·σ₁/gap ≤ 7e-15·σ₁/1e-4 ≈ 1e-10·σ₁
    if len(s) > rank and s[rank - 1] - s[rank] > 1e-4 * (1 + s[0]):
        u, sd, vh = torch.linalg.svd(total)
        dense = (u[:, :rank] * sd[:rank]) @ vh[:rank]
        assert torch.allclose(B @ A, dense, rtol=0, atol=F64_TOL * (1 + float(s[0])))


@settings(max_examples=50, deadline=None)
@given(factor_lists())
def test_full_rank_is_exact(case: tuple) -> None:
    Bs, As, weights, _ = case
    rank = sum(a.shape[0] for a in As)
    B, A = weighted_sum_factors(Bs, As, weights, rank)
    total = dense_sum(Bs, As, weights)
    scale = 1 + float(torch.linalg.matrix_norm(total, ord=2))
    assert torch.allclose(B @ A, total, rtol=0, atol=F64_TOL * scale)


def test_singular_values_by_hand() -> None:
    """B1 A1 = diag(3, 0), B2 A2 = diag(0, 1): weights ½, ½ give diag(1.5, 0.5)."""
    Bs = [torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])]
    As = [torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    _, s, _ = stacked_svd(Bs, As, [0.5, 0.5])
    assert torch.allclose(s, torch.tensor([1.5, 0.5]), rtol=0, atol=F32_TOL)
    B, A = weighted_sum_factors(Bs, As, [0.5, 0.5], rank=1)
    # the signs are canonical (largest entry of U's column positive), so B and A are defined
    assert torch.allclose(B, torch.tensor([[1.5], [0.0]]), rtol=0, atol=F32_TOL)
    assert torch.allclose(A, torch.tensor([[1.0, 0.0]]), rtol=0, atol=F32_TOL)  # "us": A = Vᵀ


def test_split_shares_singular_values() -> None:
    g = torch.Generator().manual_seed(0)
    Bs, As = [torch.randn(6, 3, generator=g)], [torch.randn(3, 5, generator=g)]
    B_us, A_us = weighted_sum_factors(Bs, As, [1.0], 2, split="us")
    B_sq, A_sq = weighted_sum_factors(Bs, As, [1.0], 2, split="sqrt")
    assert torch.allclose(B_us @ A_us, B_sq @ A_sq, rtol=0, atol=F32_TOL)
    assert torch.allclose(A_us @ A_us.T, torch.eye(2), rtol=0, atol=F32_TOL)  # orthonormal rows
    assert torch.allclose(B_sq.norm(dim=0), A_sq.norm(dim=1), rtol=0, atol=F32_TOL)  # balanced


def test_rank_above_the_sum_pads_with_zero_b_and_orthonormal_a() -> None:
    Bs, As = [torch.ones(4, 1)], [torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])]
    B, A = weighted_sum_factors(Bs, As, [2.0], rank=3)
    assert torch.allclose(B @ A, 2 * Bs[0] @ As[0], rtol=0, atol=F32_TOL)
    assert torch.equal(B[:, 1:], torch.zeros(4, 2))
    assert torch.allclose(A @ A.T, torch.eye(3), rtol=0, atol=F32_TOL)
    assert torch.equal(weighted_sum_factors(Bs, As, [2.0], rank=3)[1], A)  # deterministic


def test_keeps_the_input_dtype_and_refuses_nonsense() -> None:
    B, A = weighted_sum_factors([torch.ones(3, 2)], [torch.ones(2, 3)], [1.0], 1)
    assert B.dtype == A.dtype == torch.float32
    with pytest.raises(ValueError, match="as many"):
        weighted_sum_factors([torch.ones(3, 2)], [], [1.0], 1)
    with pytest.raises(ValueError, match="at least 1"):
        weighted_sum_factors([torch.ones(3, 2)], [torch.ones(2, 3)], [1.0], 0)
