"""HLoRA: merge the true products Σ_k w_k s_k B_k A_k, keep the best global-rank factors.

No cross-terms: the merge is the weighted sum of the clients' actual updates ΔW_k, truncated
to the global rank by :func:`~fedlora.aggregation.lowrank.weighted_sum_factors` (never forming
the dense matrix). The factors come out SVD-ordered, so a client of rank r_c receives the best
rank-r_c approximation of the global update by taking the leading r_c components.
FlexLoRA (Bai et al., 2024) is the same math and is registered as ``flexlora``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedlora.adapters import AdapterState
from fedlora.aggregation.base import (
    Aggregator,
    WeightedState,
    average_extra,
    effective_b,
    registry,
)
from fedlora.aggregation.lowrank import weighted_sum_factors


class HLoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # How the singular values are shared between the factors: B = U·Σ, A = Vᵀ ("us"), or
    # B = U·√Σ, A = √Σ·Vᵀ ("sqrt"). The product, and so the merge, is the same either way.
    split: Literal["us", "sqrt"] = "us"


@registry.register("hlora")
@registry.register("flexlora")
class HLoRA(Aggregator):
    name = "hlora"
    Options = HLoRAOptions

    def combine(self, terms: Sequence[WeightedState]) -> AdapterState:
        if not terms:
            raise ValueError("combine needs at least one term")
        assert isinstance(self.options, HLoRAOptions)
        lora = {}
        for module in terms[0].state.lora:
            factors = [t.state.lora[module] for t in terms]
            b, a = weighted_sum_factors(
                self.merged_bs(terms, module),
                [f.A for f in factors],
                [t.weight for t in terms],
                self.global_rank,
                split=self.options.split,
            )
            lora[module] = self.factors(b, a)
        return AdapterState(lora=lora, extra=average_extra(terms))

    def merged_bs(self, terms: Sequence[WeightedState], module: str) -> list[torch.Tensor]:
        """Each term's B (scale folded in) as the merge sums it: as it is, for ``hlora``."""
        return [effective_b(t.state.lora[module]) for t in terms]
