"""FedEx-LoRA (Singhal et al., ACL 2025): FedIT's averages, plus the residual folded into the
frozen weights, so the merged model is the exact weighted sum.

Averaging A and B separately (FedIT; zero-padded across ranks, as ``zeropad``) gives
B̄Ā = (Σ w_t B_t)(Σ w_t A_t), not Σ w_t B_t A_t. FedEx-LoRA keeps the averages as the
adapter every client trains on, and adds the difference Σ w_t B_t A_t − B̄Ā to the frozen
weights. Here every term's model update is ΔW_t = F_t + s_t B_t A_t, F_t its frozen update (a
client's result carries what its job was sent, the global its own), and the merge is

    A = Σ w_t A_t,   B = Σ w_t B_t,   F = Σ_t w_t ΔW_t − B A,

so F + B A = Σ_t w_t ΔW_t exactly, under any weights: every policy's merge (a mean of client
models, the global plus a step along the mean update, FedAsync's mix, FedBuff's and FedFa's
windows, stale or not) is such a weighted sum, and so under every policy and both update
modes the global model is exact (to rounding); there is nothing to refuse at setup. F is
kept per module as low-rank factors: the truncated SVD of the stacked factors of its terms
(:func:`~fedlora.aggregation.lowrank.stacked_svd` in float64, canonical signs) cut to its
numerical rank (relative to the largest term: the residual is a difference of larger
matrices), which is at most the sum of the ranks merged and F's previous rank, and never
beyond the layer's size. It grows over the run as FLoRA's stack does.

A client of a rank below the global's receives the leading components of the averages as its
adapter and the rest in its frozen factors, so every client starts from the global model
itself. What is sent down includes the frozen factors (charged: :meth:`download_bytes`);
what comes back is the adapter alone. A PEFT adapter cannot carry frozen factors: such a run
exports only as a merged model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.base import WeightedState, effective_b, products, registry
from fedlora.aggregation.fedavg import ZeroPad
from fedlora.aggregation.lowrank import numerical_rank, stacked_svd


@registry.register("fedex")
class FedExLoRA(ZeroPad):
    name = "fedex"

    def combine(self, terms: Sequence[WeightedState]) -> AdapterState:
        averaged = super().combine(terms)
        frozen = {}
        for module, factors in averaged.lora.items():
            pairs = [*products(terms, module), (-1.0, factors)]
            bs = [effective_b(f).double() for _, f in pairs]
            a_s = [f.A.double() for _, f in pairs]
            u, s, vh = stacked_svd(bs, a_s, [weight for weight, _ in pairs])
            # Rounding noise is not rank: the float64 rounding of the largest term (‖w·s·B·A‖
            # ≤ |w|·‖s·B‖·‖A‖) is cut, so a residual that is that alone (one client) leaves
            # no component; the float32 rounding of the averages is a real residual and kept.
            largest = max(
                abs(w) * float(torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(right))
                for (w, _), left, right in zip(pairs, bs, a_s, strict=True)
            )
            keep = numerical_rank(s, (u.shape[0], vh.shape[1]), largest)
            b, a = u[:, :keep] * s[:keep], vh[:keep]
            if keep == 0:  # no residual: one zero component keeps every module's factors
                b, a = b.new_zeros(b.shape[0], 1), a.new_zeros(1, a.shape[1])
            frozen[module] = self.factors(b.to(factors.A.dtype), a.to(factors.A.dtype))
        return AdapterState(lora=averaged.lora, extra=averaged.extra, frozen=frozen)

    def project(self, global_state: AdapterState, rank: int) -> AdapterState:
        """The leading ``rank`` components of the averages as the adapter; the global's frozen
        update plus the components beyond ``rank`` as the frozen factors."""
        served = super().project(global_state, rank)
        frozen: dict[str, LoraFactors] = {}
        for module, factors in global_state.lora.items():
            held = global_state.frozen.get(module)
            if rank == factors.rank:
                if held is not None:
                    frozen[module] = held  # the same object: a result and its sent share it
                continue
            parts = [(effective_b(factors)[:, rank:], factors.A[rank:])]
            if held is not None:
                parts.insert(0, (effective_b(held), held.A))
            frozen[module] = self.factors(
                torch.cat([b for b, _ in parts], dim=1), torch.cat([a for _, a in parts])
            )
        return AdapterState(lora=served.lora, extra=served.extra, frozen=frozen)
