"""The factors a client receives do not depend on the signs LAPACK gives singular vectors and
QR factors: the same merge, computed from flipped inputs or by a LAPACK that flips its
outputs, hands out the same factors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import client_results, create
from fedlora.aggregation.lowrank import canonical_signs, weighted_sum_factors
from fedlora.config import LoraConfig

RANKS = (2, 4, 3)


def client_states(seed: int) -> list[AdapterState]:
    """Clients of different ranks on one 12×10 module, with a head."""
    g = torch.Generator().manual_seed(seed)
    return [
        AdapterState(
            {
                "q": LoraFactors(
                    torch.randn(r, 10, generator=g), torch.randn(12, r, generator=g), 8.0
                )
            },
            {"head": torch.randn(3, generator=g)},
        )
        for r in RANKS
    ]


def flip(state: AdapterState, signs: torch.Tensor) -> AdapterState:
    """The same update with each component's sign flipped as ``signs`` says: B·D, D·A."""
    f = state.lora["q"]
    d = signs[: f.rank]
    return AdapterState({"q": LoraFactors(f.A * d[:, None], f.B * d, f.alpha)}, state.extra)


def served(states: list[AdapterState]) -> list[AdapterState]:
    """What each client rank receives after an HLoRA merge of ``states``."""
    aggregator = create("hlora", LoraConfig(r=4, alpha=8.0), global_rank=4)
    merged = aggregator.combine(client_results(states, [0.2, 0.5, 0.3]))
    return [aggregator.project(merged, r) for r in RANKS]


def assert_identical(ours: list[AdapterState], theirs: list[AdapterState]) -> None:
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.to_bytes() == other.to_bytes()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.sampled_from([-1.0, 1.0]), min_size=4, max_size=4))
def test_flipped_input_factors_serve_identical_factors(seed: int, signs: list[float]) -> None:
    """Clients whose own factors arrive with flipped signs (their LoRA came from an SVD on
    another machine) contribute the same products, and receive the same bytes back: a sign
    flip is exact in floating point, and Householder QR maps a flipped column to a flipped
    row of R with the very same reflector."""
    states = client_states(seed)
    flipped = [flip(s, torch.tensor(signs)) for s in states]
    assert_identical(served(flipped), served(states))


def test_a_lapack_that_flips_its_factors_serves_identical_factors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another LAPACK may return Q·D, D·R from QR and U·D, D·Vᵀ from the SVD for any signs D:
    equally valid factorisations. The canonical signs make the merge's output the same."""
    states = client_states(0)
    reference = served(states)
    qr, svd = torch.linalg.qr, torch.linalg.svd

    def alternating(n: int) -> torch.Tensor:
        return torch.tensor([(-1.0) ** k for k in range(n)])

    def flipped_qr(matrix: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        q, r = qr(matrix, *args, **kwargs)  # type: ignore[arg-type]
        d = alternating(q.shape[1]).to(q.dtype)
        return q * d, r * d[:, None]

    def flipped_svd(matrix: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        u, s, vh = svd(matrix, *args, **kwargs)  # type: ignore[arg-type]
        d = -alternating(u.shape[1]).to(u.dtype)
        return u * d, s, vh * d[:, None]

    monkeypatch.setattr(torch.linalg, "qr", flipped_qr)
    monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    other = served(states)
    for mine, theirs in zip(other, reference, strict=True):
        for module, factors in mine.lora.items():
            # The flipped factorisations are exact, but the products that follow them are
            # rounded afresh: equal to a few float32 ε on entries of order 1.
            torch.testing.assert_close(factors.A, theirs.lora[module].A, rtol=0, atol=1e-6)
            torch.testing.assert_close(factors.B, theirs.lora[module].B, rtol=0, atol=1e-5)


def test_the_entry_of_largest_magnitude_is_positive() -> None:
    left = torch.tensor([[0.6, -0.1], [-0.8, 0.3], [0.0, -0.9]])
    right = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    signed_left, signed_right = canonical_signs(left, right)
    assert torch.equal(signed_left, torch.tensor([[-0.6, 0.1], [0.8, -0.3], [0.0, 0.9]]))
    assert torch.equal(signed_right, torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]))
    assert torch.equal(signed_left @ signed_right, left @ right)


def test_components_beyond_the_numerical_rank_are_the_seeded_complement() -> None:
    """A rank-1 sum asked for rank 3: the two directions with zero singular value are free
    (LAPACK may return any basis of them); the merge hands out the seeded complement instead,
    so they too are the same on every machine, whatever the inputs' scale."""
    a = torch.tensor([[1.0, 2.0, 2.0, 0.0]]) / 3
    b = torch.tensor([[2.0], [1.0]])
    small = weighted_sum_factors([b], [a], [1.0], rank=3)
    large = weighted_sum_factors([b * 1e3], [a], [1.0], rank=3)
    assert torch.equal(small[1][1:], large[1][1:])  # the same free directions
    assert torch.equal(small[0][:, 1:], torch.zeros(2, 2))
    # Householder orthogonality in float32: m·n·ε₃₂ ≈ 4·3·1.2e-7 ≈ 1.4e-6
    torch.testing.assert_close(small[1] @ small[1].T, torch.eye(3), rtol=0, atol=1e-5)
