"""Average A and B separately: FedAvg (FedIT), zero- and replication-padding, HetLoRA, and
FedSA (A only).

Averaging the factors separately is what FedIT does. With different ranks, padding every
client to the global rank with zeros (HetLoRA-style) makes the shapes agree, but the product of
the averages (Σ w_k B_k)(Σ w_k A_k) contains the cross-terms B_i A_j, i ≠ j: a biased merge,
kept here as the baseline that ``hlora`` corrects. Zero-padding also shrinks each component a
client lacks by the share of weight of the clients lacking it; replication-padding fills those
components instead (:class:`ReplicationPad`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict

from fedlora.adapters import AdapterState
from fedlora.aggregation.base import (
    Aggregator,
    WeightedState,
    average_extra,
    effective_b,
    registry,
    weighted_sum,
)
from fedlora.aggregation.selfprune import RankMemory, SelfPrune, active_rank, factor_pairs
from fedlora.config import LoraConfig
from fedlora.terms import Source


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
        lora = {}
        for module in terms[0].state.lora:
            a_rows, b_rows = self.padded(terms, module)
            a = weighted_sum(a_rows, weights)
            b = weighted_sum(b_rows, weights).T
            lora[module] = self.factors(b, a)
        return AdapterState(lora=lora, extra=average_extra(terms, weights))

    def padded(
        self, terms: Sequence[WeightedState], module: str
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each term's A and effective Bᵀ (rank × in, rank × out) at the global rank; the
        components beyond a term's own rank are zero."""
        factors = [t.state.lora[module] for t in terms]
        rank = self.global_rank
        return (
            [_pad_rows(f.A, rank) for f in factors],
            [_pad_rows(effective_b(f).T, rank) for f in factors],
        )

    def reweight(self, terms: Sequence[WeightedState]) -> list[float]:
        """The weights the factors are averaged with; the policy's, unless a variant says."""
        return [t.weight for t in terms]


@registry.register("zeropad")
class ZeroPad(FedAvg):
    """Pad every client to the global rank, average A and B separately, truncate on the way out."""

    name = "zeropad"
    same_rank_only = False


@registry.register("reppad")
class ReplicationPad(ZeroPad):
    """Replication-padding (Byun & Lee, NAACL 2025): a client's missing rank components are
    filled with replicated values instead of zeros, then A and B are averaged as ``zeropad``.

    Zero-padding makes component j of the average the weighted sum over the clients of rank
    > j only, shrunk by the share of weight of the clients without it, which dilutes what the
    high-rank clients learned. Here, among the terms of one role (client results; what jobs
    were sent), every term lacking component j gets the weighted mean (by |weight|) of row j
    of A, and of column j of the effective B, over the terms of that role which have it. With
    weights summing to 1, component j of the average is then the weighted mean over the
    clients that trained it. A result and its sent term have the same rank, so under delta
    updates the pair contributes the mean *update* of the clients that have the component,
    and cancels when every client returns what it was sent. The global term is at the global
    rank and never padded; a component no term of a role has is zero, as in ``zeropad``.
    (Written from the paper's abstract, which names the dilution by zero-padding and the
    replication-based fix; its method section was not available to check the exact rule.)
    """

    name = "reppad"

    def padded(
        self, terms: Sequence[WeightedState], module: str
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        a_rows, b_rows = super().padded(terms, module)
        ranks = [t.state.lora[module].rank for t in terms]
        for role in (Source.UPDATE, Source.SENT):
            members = [i for i, t in enumerate(terms) if t.role is role]
            if not members:
                continue
            weights = [abs(terms[i].weight) for i in members]
            present = [ranks[i] for i in members]
            for rows in (a_rows, b_rows):
                fill = _mean_where_present([rows[i] for i in members], weights, present)
                for i in members:
                    rows[i] = torch.cat([rows[i][: ranks[i]], fill[ranks[i] :]])
        return a_rows, b_rows


def _mean_where_present(
    rows: Sequence[torch.Tensor], weights: Sequence[float], ranks: Sequence[int]
) -> torch.Tensor:
    """Row j: the weighted mean of row j over the tensors whose rank exceeds j (0 if none).

    The rows beyond a tensor's rank are zero (padding), so the numerator is a plain weighted
    sum; the denominator sums the weights of the tensors that have row j.
    """
    total = weighted_sum(rows, weights)
    index = torch.arange(total.shape[0])
    share = weighted_sum([(index < r).to(total.dtype) for r in ranks], weights)[:, None]
    return torch.where(share > 0, total / torch.where(share > 0, share, 1.0), 0.0)


class HetLoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    self_prune: SelfPrune | None = None  # off unless set: {decay: γ, penalty: λ}


@registry.register("hetlora")
class HetLoRA(ZeroPad):
    """Zero-padding with sparsity weights: each client result's weight scaled by ‖ΔW_k‖_F
    (HetLoRA).

    Only client results are reweighted, and the total weight of the results is kept, so a
    mean stays a mean. A job's sent term takes its result's factor, so under delta updates
    the pair stays a (rescaled) difference that vanishes when a client returns what it was
    sent; the global term keeps its weight.

    With ``self_prune: {decay: γ, penalty: λ}`` clients also self-prune their rank
    (:mod:`fedlora.aggregation.selfprune`): every client adds λ times the norm of its trailing
    components to its local loss, and a client whose trailing norm fell since its previous
    round is from then on sent its adapter with the components from ⌊γr⌋ on zeroed, inside
    the shape of its rank (uploads, screening and bytes keep that shape). Each dispatch event
    then carries the client's ``active_rank``; the memory is checkpointed.
    """

    name = "hetlora"
    Options = HetLoRAOptions

    def __init__(self, lora: LoraConfig, global_rank: int, options: BaseModel) -> None:
        super().__init__(lora, global_rank, options)
        assert isinstance(options, HetLoRAOptions)
        self.pruning = None if options.self_prune is None else RankMemory(options.self_prune)

    def local_penalty(self) -> SelfPrune | None:
        return None if self.pruning is None else self.pruning.options

    def personalize(self, sent: AdapterState, client: int) -> AdapterState:
        return sent if self.pruning is None else self.pruning.personalize(sent, client)

    def remember(self, client: int, update: AdapterState) -> None:
        if self.pruning is not None:
            self.pruning.remember(client, update)

    def dispatch_details(self, client: int, sent: AdapterState) -> dict[str, int]:
        """The rank the client trains at, read from ``sent`` as its learner reads it: below
        its memory's where the global has lost a component every client had pruned."""
        if self.pruning is None:
            return {}
        return {"active_rank": active_rank(factor_pairs(sent))}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.pruning is None else self.pruning.state_dict()

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if self.pruning is not None:
            self.pruning.load_state_dict(tensors)

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
