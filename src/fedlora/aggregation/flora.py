"""FLoRA: stack the clients' factors, fold the exact sum into the base, restart LoRA each round.

Stacking [B_1 … B_K] and [A_1; …; A_K] (each weighted) is the exact sum Σ_k w_k B_k A_k, of
rank Σ r_k. FLoRA merges that sum into the frozen base weights and every client starts its
next job from a fresh LoRA at its own rank, so no client's rank limits the global update.

Here the global adapter is that exact sum kept as factors (re-compressed without loss to its
numerical rank, at most the layer's size); a client receives it as ``frozen`` factors, which
the resident model adds to its base weights, plus a fresh LoRA (A random, B zero). The global
grows by Σ r_k per round, and so does what is sent down: that is FLoRA's communication cost.
It needs ``server.update: delta``: the round's updates are added to the global, not averaged
in place of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.base import (
    Aggregator,
    WeightedState,
    average_extra,
    effective_b,
    registry,
)
from fedlora.aggregation.lowrank import numerical_rank, stacked_svd
from fedlora.config import LoraConfig, ServerConfig


@registry.register("flora")
class FLoRA(Aggregator):
    name = "flora"

    def __init__(self, lora: LoraConfig, global_rank: int, options: BaseModel) -> None:
        super().__init__(lora, global_rank, options)
        self._fresh = torch.Generator().manual_seed(0)  # dispatch order is deterministic

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"fresh_generator": self._fresh.get_state()}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._fresh.set_state(tensors["fresh_generator"])

    def check_setup(self, ranks: Sequence[int], server: ServerConfig) -> None:
        super().check_setup(ranks, server)
        if server.update != "delta":
            raise ValueError(
                "server.update: flora adds each round's stacked updates to the global adapter;"
                " set update: delta"
            )

    def combine(self, terms: Sequence[WeightedState]) -> AdapterState:
        if not terms:
            raise ValueError("combine needs at least one term")
        weights = [t.weight for t in terms]
        svds = {}
        for module in terms[0].state.lora:
            factors = [t.state.lora[module] for t in terms]
            svds[module] = stacked_svd(
                [effective_b(f) for f in factors], [f.A for f in factors], weights
            )
        rank = max(  # rounding noise is not rank: the same global rank on every machine
            1,
            max(numerical_rank(s, (u.shape[0], vh.shape[1])) for u, s, vh in svds.values()),
        )
        lora = {}
        for module, (u, s, vh) in svds.items():
            keep = min(rank, s.shape[0])
            b, a = u[:, :keep] * s[:keep], vh[:keep]
            if keep < rank:  # a layer smaller than the global rank: zero components on top
                b = torch.cat([b, b.new_zeros(b.shape[0], rank - keep)], dim=1)
                a = torch.cat([a, a.new_zeros(rank - keep, a.shape[1])])
            dtype = terms[0].state.lora[module].A.dtype
            lora[module] = self.factors(b.to(dtype), a.to(dtype))
        return AdapterState(lora=lora, extra=average_extra(terms))

    def project(self, global_state: AdapterState, rank: int) -> AdapterState:
        """A fresh LoRA at ``rank`` (PEFT's init: A ~ U(±1/√in), B = 0) on the frozen global."""
        fresh = {}
        for module, factors in global_state.lora.items():
            out_features, in_features = factors.B.shape[0], factors.A.shape[1]
            bound = in_features**-0.5
            a = (torch.rand(rank, in_features, generator=self._fresh) * 2 - 1) * bound
            fresh[module] = LoraFactors(
                a, torch.zeros(out_features, rank), self.lora.alpha_at(rank)
            )
        return AdapterState(lora=fresh, extra=global_state.extra, frozen=global_state.lora)
