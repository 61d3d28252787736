"""raFLoRA (Wu, Hu, Min & Wang, arXiv 2602.13486, 2026): HLoRA's merge of the true products,
with each rank partition of the client results weighted by the clients that contribute it.
Written from the paper's abstract and summaries of it: its method section (the exact weights,
its collapse measure) was not available here to check against.

**The collapse it fixes.** Under SVD-based allocation (HLoRA, FlexLoRA) a client of rank r_k
trains the leading r_k components of the global and the server merges Σ_k p_k B_k A_k with
rank-agnostic weights p_k (Σ_k p_k = 1). Component i of the global is then rebuilt from the
clients with r_k > i alone, but with their plain weights: it comes back scaled by
Σ_{k: r_k > i} p_k < 1 for every i at or beyond the smallest rank, round after round, so
the global's energy concentrates geometrically in the minimum shared rank ("rank collapse").
The merge diagnostics' ``energy_above`` at the smallest client rank is the share of the
global's energy (squared singular values) outside that rank: one minus the concentration
in the minimum shared rank that the paper calls collapse, so the collapse shows there
without a new measure (pooled over modules, as ``energy_above`` always is; the paper may
report it per layer).

**The merge.** Each client's update is split by rank index into partitions at the distinct
client ranks r_(1) < … < r_(m): partition j holds components r_(j−1) … r_(j) − 1 of every
client that has them, S_j = {k : r_k ≥ r_(j)}, and is averaged over S_j with the weights
renormalised to them:

    ΔW = Σ_j Σ_{k ∈ S_j} (p_k / Σ_{k' ∈ S_j} p_k') · s_k B_k[:, P_j] A_k[P_j, :].

Because B A = Σ_i B[:, i] A[i, :], this is the low-rank sum Σ_k s_k B_k D_k A_k with the
diagonal D_k[i] = P / Σ_{k': r_k' > i} p_k' (P = Σ_k p_k, 1 in the paper), merged and
re-factored exactly as ``hlora`` does (QR of the stacked factors, SVD of the small core,
truncated to the global rank); a client of rank r then receives the leading r components,
the best rank-r approximation of the global. With equal ranks every D_k is 1 and the merge
is ``hlora``'s, bit for bit. The head is averaged with the policy's weights.

**Merge terms keep their role.** Only client results are reweighted. Their weights are the
policy's p_k (whatever they sum to: a FedAsync mix or a FedBuff step moves the global
part-way, and each partition then moves it as far); the global term keeps its weight, so
under delta updates the global's components that no result in a merge has are kept, and a
job's sent term takes its result's D_k, so the pair stays a (reweighted) difference that
vanishes when a client returns what it was sent. Every policy's merge is such a sum, under
both update modes, so there is nothing to refuse at setup. Under model updates with a global
term (FedAsync, FedBuff, FedFa), a merge whose results all lack a partition scales the
global's share of it by the global's weight, as ``hlora`` does: the fix acts within a merge,
over the results it has.

(Written from the paper's abstract (v1 and v2) and third-party summaries: its method section
(§5) and the exact form of its collapse measure (§4) were not in the copies available to
check. The weights above are the reading of "aggregates each partition weighted by its
effective client contributions" that makes every partition a weighted mean over the clients
that train it, which is what removes the geometric factor of its analysis; a summary of the
paper says the same, "re-weights each partition by the clients that actually provide it".
With the policy's weights equal this is 1/|S_j| per partition; with data-size weights it is
n_k / Σ_{k' ∈ S_j} n_k'.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.aggregation.base import WeightedState, effective_b, registry
from fedlora.aggregation.hlora import HLoRA, HLoRAOptions
from fedlora.terms import Source


def partition_scales(terms: Sequence[WeightedState], module: str) -> list[list[float]]:
    """Per term, the factor each of its rank components in ``module`` is scaled by.

    A client result's component i: P / Σ_{results with rank > i} w (P the results' total
    weight), so the partition holding i sums to P over the results that have it. A sent term
    takes the factors of its job's result; the global term, and a sent term without its
    result in the merge, keep 1. A share of 0 (no weight on the results that have the
    component) leaves the component as it is.
    """
    results = [t for t in terms if t.role is Source.UPDATE]
    total = sum(t.weight for t in results)
    ranks = [t.state.lora[module].rank for t in results]
    top = max(ranks, default=0)
    shares = [
        sum(t.weight for t, r in zip(results, ranks, strict=True) if r > i) for i in range(top)
    ]
    scale = [total / share if share != 0 else 1.0 for share in shares]
    paired = {t.job for t in results if t.job is not None}
    scales = []
    for term in terms:
        rank = term.state.lora[module].rank
        if term.role is Source.UPDATE or (term.role is Source.SENT and term.job in paired):
            scales.append((scale + [1.0] * rank)[:rank])
        else:
            scales.append([1.0] * rank)
    return scales


@registry.register("raflora")
class RaFLoRA(HLoRA):
    """``hlora`` with every client result's rank components scaled by
    :func:`partition_scales` before the merge; serving is ``hlora``'s."""

    name = "raflora"
    Options = HLoRAOptions

    def merged_bs(self, terms: Sequence[WeightedState], module: str) -> list[torch.Tensor]:
        """Each term's B with its rank components scaled by :func:`partition_scales`."""
        bs = []
        for term, scale in zip(terms, partition_scales(terms, module), strict=True):
            b = effective_b(term.state.lora[module])
            if any(s != 1.0 for s in scale):
                b = b * torch.tensor(scale, dtype=b.dtype, device=b.device)
            bs.append(b)
        return bs
