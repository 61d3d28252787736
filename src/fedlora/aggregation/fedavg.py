"""Average A and B separately: FedAvg (FedIT), zero-padding, HetLoRA, and FedSA (A only).

Averaging the factors separately is what FedIT does. With different ranks, padding every
client to the global rank with zeros (HetLoRA-style) makes the shapes agree, but the product of
the averages (Σ w_k B_k)(Σ w_k A_k) contains the cross-terms B_i A_j, i ≠ j: a biased merge,
kept here as the baseline that ``hlora`` corrects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from pydantic import BaseModel

from fedlora.adapters import AdapterState
from fedlora.aggregation.base import (
    Aggregator,
    WeightedState,
    average_extra,
    effective_b,
    registry,
    weighted_sum,
)
from fedlora.config import LoraConfig
from fedlora.policies.base import Source


def _pad_rows(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.cat([tensor, tensor.new_zeros(rank - tensor.shape[0], tensor.shape[1])])


@registry.register("fedavg")
class FedAvg(Aggregator):
    """Weighted means of A and of effective B (and of the head), all at the global rank."""

    name = "fedavg"
    same_rank_only = True

    def combine(self, terms: Sequence[WeightedState]) -> AdapterState:
        if not terms:
            raise ValueError("combine needs at least one term")
        weights = self.reweight(terms)
        rank = self.global_rank
        lora = {}
        for module in terms[0].state.lora:
            factors = [t.state.lora[module] for t in terms]
            a = weighted_sum([_pad_rows(f.A, rank) for f in factors], weights)
            b = weighted_sum([_pad_rows(effective_b(f).T, rank).T for f in factors], weights)
            lora[module] = self.factors(b, a)
        return AdapterState(lora=lora, extra=average_extra(terms, weights))

    def reweight(self, terms: Sequence[WeightedState]) -> list[float]:
        """The weights the factors are averaged with; the policy's, unless a variant says."""
        return [t.weight for t in terms]


@registry.register("zeropad")
class ZeroPad(FedAvg):
    """Pad every client to the global rank, average A and B separately, truncate on the way out."""

    name = "zeropad"
    same_rank_only = False


@registry.register("hetlora")
class HetLoRA(ZeroPad):
    """Zero-padding with sparsity weights: each client result's weight scaled by ‖ΔW_k‖_F
    (HetLoRA).

    Only client results are reweighted, and the total weight of the results is kept, so a
    mean stays a mean. A job's sent term takes its result's factor, so under delta updates
    the pair stays a (rescaled) difference that vanishes when a client returns what it was
    sent; the global term keeps its weight. (HetLoRA's local rank self-pruning is a change to
    local training and is not part of this aggregator.)
    """

    name = "hetlora"

    def reweight(self, terms: Sequence[WeightedState]) -> list[float]:
        norms = {i: update_norm(t.state) for i, t in enumerate(terms) if t.role is Source.UPDATE}
        total = sum(terms[i].weight * n for i, n in norms.items())
        if total == 0:
            return [t.weight for t in terms]
        share = sum(terms[i].weight for i in norms) / total
        factors = {i: n * share for i, n in norms.items()}
        by_job = {terms[i].job: f for i, f in factors.items() if terms[i].job is not None}
        return [
            t.weight * factors[i]
            if i in factors
            else t.weight * by_job.get(t.job, 1.0)
            if t.role is Source.SENT
            else t.weight
            for i, t in enumerate(terms)
        ]


@registry.register("fedsa")
class FedSA(ZeroPad):
    """FedSA: only the A matrices are shared; each client keeps its own B between rounds.

    A (and the head) are averaged with zero-padding across ranks; a client starts every job
    from the global A and the B it trained last (the global B on its first job). The server's
    B is the mean of the clients' B's, used to evaluate a global model and to start a client's
    first job: that first download is charged with B (:meth:`download_bytes`); afterwards B
    never leaves the client.
    """

    name = "fedsa"

    def __init__(self, lora: LoraConfig, global_rank: int, options: BaseModel) -> None:
        super().__init__(lora, global_rank, options)
        self._own_b: dict[int, dict[str, torch.Tensor]] = {}

    def personalize(self, sent: AdapterState, client: int) -> AdapterState:
        own = self._own_b.get(client)
        if own is None:
            return sent
        lora = {m: replace(f, B=own[m]) for m, f in sent.lora.items()}
        return AdapterState(lora=lora, extra=sent.extra)

    def remember(self, client: int, update: AdapterState) -> None:
        self._own_b[client] = {m: f.B for m, f in update.lora.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"own_b.{client}.{module}": b
            for client, modules in self._own_b.items()
            for module, b in modules.items()
        }

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._own_b = {}
        for key, b in tensors.items():
            client, module = key.removeprefix("own_b.").split(".", 1)
            self._own_b.setdefault(int(client), {})[module] = b

    def transmitted_bytes(self, state: AdapterState) -> int:
        local = sum(f.B.numel() * f.B.element_size() for f in state.lora.values())
        return state.num_bytes() - local

    def download_bytes(self, sent: AdapterState, client: int) -> int:
        """A client's first job carries the server's mean B as well: it has none of its own."""
        if client not in self._own_b:
            return sent.num_bytes()
        return self.transmitted_bytes(sent)


def update_norm(state: AdapterState) -> float:
    """‖ΔW‖_F over all modules, from the r×r Gram matrices: ‖BA‖² = tr((BᵀB)(AAᵀ))."""
    squared = 0.0
    for factors in state.lora.values():
        b = effective_b(factors).double()
        a = factors.A.double()
        squared += float(torch.trace((b.T @ b) @ (a @ a.T)))
    return max(squared, 0.0) ** 0.5
