"""The truncated SVD of a weighted sum of low-rank products, without the dense matrix.

Σ_k w_k B_k A_k = [B_1 … B_K] · blockdiag(w_k I_{r_k}) · [A_1; …; A_K] = 𝔅 W 𝔄 with total
rank R = Σ r_k. With QR factorisations 𝔅 = Q_b R_b and 𝔄ᵀ = Q_a R_a, the sum is
Q_b (R_b W R_aᵀ) Q_aᵀ, so the SVD of the small R×R core gives the SVD of the sum:
O((out + in)·R²) work instead of O(out·in·min(out, in)). This is what makes a merge on every
arrival (FedFa) affordable for 4096-wide layers.

**The same factors on every machine.** A singular vector's sign is free, and each LAPACK build
(and each QR inside this computation) picks its own; so would the factors a client receives,
its training from them, and every file a run writes. :func:`canonical_signs` fixes the sign
of every component this module returns. Where singular values are zero (to rounding) the
directions are free altogether, not only their sign: :func:`weighted_sum_factors` does not hand
out LAPACK's arbitrary choice there but a seeded orthonormal complement, the same everywhere.
Where non-zero singular values tie, any rotation within their subspace is an equally exact
answer: the basis is then LAPACK's (the product B·A is not affected); tests avoid such ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Split = Literal["us", "sqrt"]


def stacked_svd(
    Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) with Σ_k w_k B_k A_k = U diag(S) Vh; at most R = Σ r_k components.

    Computed in the factors' own precision (at least float32): float32 adapters merge in
    float32, about twice as fast as float64 at 4096 wide, with errors far below the
    truncation's; float64 inputs get float64 throughout.
    """
    if not (len(Bs) == len(As) == len(weights)) or not Bs:
        raise ValueError("weighted_sum_factors needs as many Bs, As and weights, at least one")
    dtype = torch.promote_types(Bs[0].dtype, torch.float32)
    stacked_b = torch.cat([b.to(dtype) for b in Bs], dim=1)  # out × R
    stacked_a = torch.cat([a.to(dtype) for a in As], dim=0)  # R × in
    ranks = torch.tensor([a.shape[0] for a in As])
    scale = torch.repeat_interleave(torch.tensor(weights, dtype=dtype), ranks)
    q_b, r_b = torch.linalg.qr(stacked_b)  # out × m, m × R   (m = min(out, R))
    q_a, r_a = torch.linalg.qr(stacked_a.T)  # in × n, n × R  (n = min(in, R))
    core = (r_b * scale) @ r_a.T  # m × n
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    left, right = canonical_signs(q_b @ u, vh @ q_a.T)
    return left, s, right


def canonical_signs(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each pair (column k of ``left``, row k of ``right``) so that the entry of largest
    magnitude in the column is positive: the product is unchanged, and the factors no longer
    depend on the sign LAPACK chose (scikit-learn's ``svd_flip`` convention). Of entries equal
    in magnitude the first counts, so exact ties (a column of equal entries) are decided the
    same way everywhere; only entries that tie to rounding *and* differ in sign are not."""
    largest = left.abs().argmax(dim=0)
    signs = torch.sign(left[largest, torch.arange(left.shape[1])])
    signs[signs == 0] = 1
    return left * signs, right * signs[:, None]


def numerical_rank(s: torch.Tensor, shape: tuple[int, int], scale: float | None = None) -> int:
    """How many singular values are not rounding noise: above s_max·max(out, in)·ε, the
    threshold of ``numpy.linalg.matrix_rank`` for the out×in matrix the factors stand for.

    ``scale`` replaces s_max where the matrix is a difference of larger ones: rounding then
    scales with the terms, not with what is left of them."""
    if s.numel() == 0:
        return 0
    largest = float(s.max()) if scale is None else max(scale, float(s.max()))
    tolerance = largest * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tolerance).sum())


def weighted_sum_factors(
    Bs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    weights: Sequence[float],
    rank: int,
    split: Split = "us",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A), B: out×rank, A: rank×in, with B @ A the best rank-``rank`` approximation of
    Σ_k weights[k]·Bs[k] @ As[k] (Eckart–Young), in the dtype of ``Bs[0]``.

    ``split`` says how the singular values are shared: ``"us"`` gives B = U·Σ and A = Vᵀ
    (A keeps orthonormal rows), ``"sqrt"`` gives B = U·√Σ and A = √Σ·Vᵀ. When the sum has
    fewer than ``rank`` components above rounding (:func:`numerical_rank`) the extra columns
    of B are zero and the extra rows of A are seeded orthonormal directions of the complement
    of A's row space (so training can still move them, and every machine sends the same ones).
    """
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    u, s, vh = stacked_svd(Bs, As, weights)
    out_features, in_features = Bs[0].shape[0], As[0].shape[1]
    keep = min(rank, numerical_rank(s, (out_features, in_features)))
    u, s, vh = u[:, :keep], s[:keep], vh[:keep]
    if split == "us":
        b, a = u * s, vh
    else:
        root = s.sqrt()
        b, a = u * root, root[:, None] * vh
    if keep < rank:
        b = torch.cat([b, b.new_zeros(out_features, rank - keep)], dim=1)
        a = torch.cat([a, _orthonormal_complement(vh, rank - keep, in_features)], dim=0)
    dtype = Bs[0].dtype
    return b.to(dtype), a.to(dtype)


def _orthonormal_complement(rows: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """``count`` rows orthogonal to ``rows``, orthonormal as far as ``width`` allows (then zero).

    Seeded, and signed by :func:`canonical_signs`, so merges stay deterministic everywhere.
    """
    generator = torch.Generator().manual_seed(0)
    candidates = torch.randn(width, count, generator=generator, dtype=rows.dtype)
    candidates -= rows.T @ (rows @ candidates)
    q, r = torch.linalg.qr(candidates)
    q, _ = canonical_signs(q, r)
    room = max(0, min(count, width - rows.shape[0]))
    complement = q[:, :room].T
    return torch.cat([complement, complement.new_zeros(count - room, width)])
