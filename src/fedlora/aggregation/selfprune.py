"""HetLoRA's local rank self-pruning (Cho et al., EMNLP 2024): each client adds to its local
loss a penalty on the trailing components of its LoRA rank and, when those components have
shrunk since its previous round, drops them for its next rounds.

**What a client trains.** A client of current (active) rank r adds

    λ · Σ_modules ‖B[:, ⌊γr⌋:r]‖_F · ‖A[⌊γr⌋:r, :]‖_F

to its loss (γ < 1 the decay factor, λ the penalty weight; B as PEFT stores it, without the
scaling α/r, which is a constant of the client). After local training the server-side memory
of the client (the client's own bookkeeping, kept by the aggregator as FedSA keeps a client's
B) measures the same trailing norm on the result; if it is smaller than the client's trailing
norm of its previous round, the client's rank becomes max(1, ⌊γr⌋) for its next rounds. Its
first round only records the norm.

**Pruning inside the shape it was sent.** A client's upload keeps the shape (its profile
rank) it was sent, so screening, the merge and the byte counts stay as they are. Pruned
components are zero in both A and B of what the client is sent (:meth:`RankMemory.personalize`),
so training leaves them exactly zero: their gradients vanish (each factor's gradient goes
through the other, which is zero; the penalty covers only the active components), AdamW's
moments stay zero, weight decay scales zero and LoRA dropout acts on the input. A learner
therefore reads a client's active rank from what it was sent (:func:`active_rank`: the
components up to the last one whose A row or B column is non-zero) and stays stateless.
Zero-padding then averages the zeros in, as it does for a lower-rank client: under model
updates a component every contributing client has pruned leaves the global, and a client that
has not pruned it is then sent it as zeros, which prune it for that client too (its A row
and B column are both zero, so it cannot grow back); :meth:`RankMemory.remember` reads the
rank from the result, so the learner's penalty window and the memory agree.

(Written from the paper's abstract and third-party descriptions of it: its method section
was not available here to check. Those agree on the penalty above, the decay factor γ (0.99
in the descriptions) and ⌊γr⌋ as the pruned rank; the comparison is the one the issue asked
for, against the trailing norm of the client's previous round. One public reimplementation
(a FederatedScope fork) compares instead with the trailing norm of what the client was sent
in the same round; the paper's own rule may be either. The rank floor of 1, a client-wide
rank shared by all its modules, the sum over modules and the unscaled B are choices made
here where the descriptions are silent.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from fractions import Fraction

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedlora.adapters import AdapterState

Pairs = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (A: r × in, B: out × r) per module


class SelfPrune(BaseModel):
    """``aggregator_options.self_prune``: the decay factor γ and the penalty weight λ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decay: float = Field(gt=0, lt=1)
    penalty: float = Field(ge=0)

    def tail_start(self, rank: int) -> int:
        """⌊γ·rank⌋, with γ read as the decimal it was written as (0.29·100 is 29, not 28)."""
        return math.floor(Fraction(repr(self.decay)) * rank)

    def pruned(self, rank: int) -> int:
        """The rank after one pruning step, never below 1."""
        return max(1, self.tail_start(rank))

    def tail_norm(self, pairs: Pairs, rank: int) -> torch.Tensor:
        """Σ_modules ‖B[:, ⌊γr⌋:r]‖_F · ‖A[⌊γr⌋:r, :]‖_F at rank r (differentiable)."""
        start = self.tail_start(rank)
        terms = [
            torch.linalg.matrix_norm(b[:, start:rank]) * torch.linalg.matrix_norm(a[start:rank])
            for a, b in pairs
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def loss(self, pairs: Pairs, rank: int) -> torch.Tensor:
        """The term a client adds to its local loss: λ times the trailing norm."""
        return self.penalty * self.tail_norm(pairs, rank)


def active_rank(pairs: Pairs) -> int:
    """The components up to the last one whose A row or B column is non-zero, over modules."""
    rank = 0
    for a, b in pairs:
        alive = torch.nonzero((a != 0).any(dim=1) | (b != 0).any(dim=0))
        if len(alive):
            rank = max(rank, int(alive[-1]) + 1)
    return rank


def factor_pairs(state: AdapterState) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(f.A, f.B) for f in state.lora.values()]


class RankMemory:
    """Each client's active rank and the trailing norm of its previous round."""

    def __init__(self, options: SelfPrune) -> None:
        self.options = options
        self.ranks: dict[int, int] = {}
        self.tails: dict[int, float] = {}

    def personalize(self, sent: AdapterState, client: int) -> AdapterState:
        """``sent`` with the components at and beyond the client's active rank zeroed."""
        rank = self.ranks.get(client)
        if rank is None:
            return sent
        lora = {
            m: replace(f, A=_zero_rows(f.A, rank), B=_zero_rows(f.B.T, rank).T)
            if f.rank > rank
            else f
            for m, f in sent.lora.items()
        }
        return replace(sent, lora=lora)

    def remember(self, client: int, update: AdapterState) -> None:
        """Measure the client's trailing norm on its result and prune if it fell."""
        pairs = [(a.double(), b.double()) for a, b in factor_pairs(update)]
        rank = self.ranks.get(client, max(f.rank for f in update.lora.values()))
        rank = max(1, min(rank, active_rank(pairs)))
        tail = float(self.options.tail_norm(pairs, rank))
        previous = self.tails.get(client)
        if previous is not None and tail < previous:
            rank = self.options.pruned(rank)
        self.ranks[client] = rank
        self.tails[client] = tail

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Per client: its active rank and previous trailing norm (float64: exact)."""
        return {
            f"self_prune.{client}": torch.tensor([rank, self.tails[client]], dtype=torch.float64)
            for client, rank in self.ranks.items()
        }

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.ranks, self.tails = {}, {}
        for key, value in tensors.items():
            client = int(key.removeprefix("self_prune."))
            self.ranks[client] = int(value[0])
            self.tails[client] = float(value[1])


def _zero_rows(tensor: torch.Tensor, keep: int) -> torch.Tensor:
    out = tensor.clone()
    out[keep:] = 0
    return out
