"""``server.defence``: a robust centre of a merge's client results, before any aggregator.

Applied to the merge terms whose role is a client result, so it composes with every
aggregator and policy: each result is replaced by what its job was sent plus the centre of
all the results' updates (ΔW_k = s·B·A of the result minus that of what the job was sent,
per module, and the head's difference), at the result's own rank. The coordinate-wise median
ignores up to half of the results, however far off; the trimmed mean drops ``trim`` of them
at each end of every coordinate. Both are unweighted, as in Yin et al. (2018); the policy's
weights then apply to results that all carry the same update. Global and sent terms are
left as the policy wrote them.

The centre of low-rank products is not low rank: it is computed on the dense out×in matrices,
block of rows by block of rows (memory stays bounded on any layer), and each result receives
its best approximation at its own rank (Eckart–Young), the same truncation HLoRA applies.
That costs one dense SVD per distinct (sent adapter, rank) and module: fine for layers up to
a few thousand wide, slow beyond. A merge of fewer than three results (every FedAsync merge,
a FedFa window of two) has no centre more robust than its mean and is left unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import WeightedState
from fedlora.aggregation.base import effective_b
from fedlora.aggregation.lowrank import weighted_sum_factors
from fedlora.config.server import DefenceConfig
from fedlora.policies import Source

_BLOCK_VALUES = 1 << 24  # floats per block of stacked rows: 64 MB in float32


def defend(
    terms: Sequence[WeightedState], sent: Mapping[int, AdapterState], defence: DefenceConfig
) -> list[WeightedState]:
    """``terms`` with every client result replaced by its sent adapter plus the centre;
    ``sent`` maps each result's job to what that job was sent."""
    results = [t for t in terms if t.role is Source.UPDATE]
    if defence.centre == "mean" or len(results) < 3:
        return list(terms)
    pairs = [(t.state, sent[_job(t)]) for t in results]
    centre = {module: _product_centre(pairs, module, defence) for module in pairs[0][0].lora}
    heads = {
        name: _centre(torch.stack([u.extra[name] - s.extra[name] for u, s in pairs]), defence)
        for name in pairs[0][0].extra
    }
    served: dict[tuple[str, int], AdapterState] = {}
    defended = []
    for term in terms:
        if term.role is Source.UPDATE:
            base = sent[_job(term)]
            key = (hashlib.sha256(base.to_bytes()).hexdigest(), term.state.rank)
            if key not in served:
                served[key] = _moved(base, term.state, centre, heads)
            term = replace(term, state=served[key])
        defended.append(term)
    return defended


def _job(term: WeightedState) -> int:
    assert term.job is not None, "a client result names its job"
    return term.job


def _product_centre(
    pairs: Sequence[tuple[AdapterState, AdapterState]], module: str, defence: DefenceConfig
) -> torch.Tensor:
    """The centre of the results' ΔW for ``module``: dense out×in, a block of rows at a time."""
    first = pairs[0][0].lora[module]
    out_features, in_features = first.B.shape[0], first.A.shape[1]
    step = max(1, _BLOCK_VALUES // (len(pairs) * in_features))
    blocks = []
    for start in range(0, out_features, step):
        rows = slice(start, start + step)
        deltas = [_product(u.lora[module], rows) - _product(s.lora[module], rows) for u, s in pairs]
        blocks.append(_centre(torch.stack(deltas), defence))
    return torch.cat(blocks)


def _product(factors: LoraFactors, rows: slice) -> torch.Tensor:
    return (factors.B[rows] * factors.scaling) @ factors.A


def _centre(stacked: torch.Tensor, defence: DefenceConfig) -> torch.Tensor:
    """The median (the mean of the two middle values when their count is even) or trimmed
    mean along the first dimension."""
    ordered = stacked.sort(dim=0).values
    count = ordered.shape[0]
    if defence.centre == "median":
        return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
    cut = int(defence.trim * count)
    return ordered[cut : count - cut].mean(dim=0)


def _moved(
    base: AdapterState,
    update: AdapterState,
    centre: Mapping[str, torch.Tensor],
    heads: Mapping[str, torch.Tensor],
) -> AdapterState:
    """``base`` plus the centre, at ``update``'s rank and alphas: the best approximation of
    each module's product there, through the merges' own truncated SVD (the dense centre is
    the factor pair C·I), so its signs and free directions are the same on every machine."""
    lora = {}
    for module, factors in update.lora.items():
        start = base.lora[module]
        b, a = weighted_sum_factors(
            [effective_b(start), centre[module]],
            [start.A, torch.eye(start.A.shape[1], dtype=start.A.dtype)],
            [1.0, 1.0],
            factors.rank,
        )
        lora[module] = LoraFactors(A=a, B=b / factors.scaling, alpha=factors.alpha)
    extra = {name: base.extra[name] + heads[name] for name in update.extra}
    return AdapterState(lora=lora, extra=extra, frozen=update.frozen)
