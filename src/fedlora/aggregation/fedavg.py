"""FedAvg for same-rank LoRA: the weighted average of A, of effective B, and of the head.

Averaging A and B separately is what FedIT does; it is exact only when every client holds the
same factors' basis. Heterogeneous ranks need the product-space aggregators instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.base import Aggregator, registry


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights, strict=True):
        total.add_(tensor, alpha=weight)
    return total


def average_extra(
    states: Sequence[AdapterState], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The head (``modules_to_save``) tensors: a plain weighted sum for every aggregator."""
    return {
        name: weighted_sum([s.extra[name] for s in states], weights) for name in states[0].extra
    }


@registry.register("fedavg")
class FedAvg(Aggregator):
    name = "fedavg"
    same_rank_only = True

    def combine(self, states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
        if not states:
            raise ValueError("combine needs at least one state")
        ranks = {s.rank for s in states}
        if len(ranks) > 1:
            raise ValueError(f"fedavg got states of ranks {sorted(ranks)}")
        scaling = self.lora.alpha / ranks.pop()
        lora = {}
        for module in states[0].lora:
            factors = [s.lora[module] for s in states]
            effective_b = weighted_sum([f.B * f.scaling for f in factors], weights)
            lora[module] = LoraFactors(
                A=weighted_sum([f.A for f in factors], weights),
                B=effective_b / scaling,
                alpha=self.lora.alpha,
            )
        return AdapterState(lora=lora, extra=average_extra(states, weights))
