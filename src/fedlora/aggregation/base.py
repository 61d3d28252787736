"""The aggregator contract: how client adapters merge, and what each client is handed back.

Pure tensor math with no I/O and no clock, so any aggregator runs under any policy and any
runtime. Aggregators work on the *effective* update: each state's scaling alpha/r is folded into
B before combining (:func:`effective_b`), and the receiver's scaling is unfolded on the way out
(:func:`from_effective`). The global adapter is kept at ``global_rank``; every rank r carries
the alpha ``lora.alpha_at(r)`` (``lora.alpha`` itself, or α·√r under rsLoRA).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.catalog import registry
from fedlora.config import LoraConfig, ServerConfig
from fedlora.terms import Source

if TYPE_CHECKING:
    from fedlora.aggregation.selfprune import SelfPrune


@dataclass(frozen=True)
class WeightedState:
    """One merge term: an adapter, its weight in the sum, and its role.

    The role says what the policy meant the term to be (a client result, what a job was
    sent, the global), so an aggregator that reweights client results leaves the others as
    written; ``job`` pairs a result with what it was sent.
    """

    state: AdapterState
    weight: float
    role: Source = Source.UPDATE
    job: int | None = None


def client_results(states: Sequence[AdapterState], weights: Sequence[float]) -> list[WeightedState]:
    """Terms for plain client results (the model-update merge without a global term)."""
    return [WeightedState(s, w) for s, w in zip(states, weights, strict=True)]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def effective_b(factors: LoraFactors) -> torch.Tensor:
    """B with its scaling folded in: ΔW = effective_b · A."""
    return factors.B * factors.scaling


def from_effective(b: torch.Tensor, a: torch.Tensor, alpha: float) -> LoraFactors:
    """Factors for ΔW = b·a as PEFT stores them at rank ``a.shape[0]`` with this alpha."""
    return LoraFactors(A=a, B=b / (alpha / a.shape[0]), alpha=alpha)


def products(terms: Sequence[WeightedState], module: str) -> list[tuple[float, LoraFactors]]:
    """Σ_t w_t ΔW_t for ``module`` as (coefficient, factors) pairs, ΔW_t = s·B·A plus the term's
    frozen update F_t, if any.

    The trained factors come first, one pair per term in order. Frozen factors follow, one
    pair per distinct value with the terms' weights summed: a job's result and what it was
    sent carry the same (screening gives the result the sent ones), so under delta updates
    they cancel exactly and are left out, instead of adding rounding to every merge, and a
    resumed run (whose factors are copies read back from a checkpoint) merges the same.
    """
    pairs = [(t.weight, t.state.lora[module]) for t in terms]
    shared: list[tuple[float, LoraFactors]] = []
    for t in terms:
        frozen = t.state.frozen.get(module)
        if frozen is None:
            continue
        same = next((i for i, (_, f) in enumerate(shared) if _same_factors(f, frozen)), None)
        if same is None:
            shared.append((t.weight, frozen))
        else:
            shared[same] = (shared[same][0] + t.weight, shared[same][1])
    return pairs + [(weight, f) for weight, f in shared if weight != 0.0]


def _same_factors(one: LoraFactors, other: LoraFactors) -> bool:
    return one is other or (
        one.alpha == other.alpha
        and one.A.shape == other.A.shape
        and one.B.shape == other.B.shape
        and bool(torch.equal(one.A, other.A))
        and bool(torch.equal(one.B, other.B))
    )


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights, strict=True):
        total.add_(tensor, alpha=weight)
    return total


def average_extra(
    terms: Sequence[WeightedState], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """The head (``modules_to_save``) tensors: a plain weighted sum for every aggregator,
    with the terms' own weights unless ``weights`` replaces them."""
    if weights is None:
        weights = [t.weight for t in terms]
    first = terms[0].state
    return {
        name: weighted_sum([t.state.extra[name] for t in terms], weights) for name in first.extra
    }


class Aggregator(ABC):
    """Template: :meth:`combine` merges weighted terms; :meth:`project` serves one client.

    Subclasses set ``Options`` (a pydantic model for ``server.aggregator_options``) when they
    take any, and ``same_rank_only`` when they cannot merge adapters of different ranks.
    """

    name: ClassVar[str]
    same_rank_only: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, lora: LoraConfig, global_rank: int, options: BaseModel) -> None:
        self.lora = lora
        self.global_rank = global_rank
        self.options = options

    def check_setup(self, ranks: Sequence[int], server: ServerConfig) -> None:
        """Raise ``ValueError`` naming the key if this aggregator cannot serve this setup."""
        if self.same_rank_only and len(set(ranks)) > 1:
            raise ValueError(
                f"server.aggregator: {self.name} merges same-rank LoRA only, client ranks are"
                f" {sorted(set(ranks))}"
            )

    @abstractmethod
    def combine(self, terms: Sequence[WeightedState]) -> AdapterState:
        """The global state (at ``global_rank``) for Σ_t weight_t·state_t.

        Global and sent terms keep the weights the policy wrote; only an aggregator's own
        reweighting of client results may change what the results contribute.
        """

    def project(self, global_state: AdapterState, rank: int) -> AdapterState:
        """What a client of ``rank`` receives: the leading ``rank`` components, rescaled to the
        client's alpha/rank. Exact for the SVD-ordered factors the product-space aggregators
        keep; plain truncation for the zero-padding family."""
        lora = {}
        for module, factors in global_state.lora.items():
            if rank > factors.rank:
                raise ValueError(
                    f"cannot serve a rank-{rank} client from a rank-{factors.rank} global adapter"
                )
            if rank == factors.rank and factors.alpha == self.lora.alpha_at(rank):
                lora[module] = factors
            else:
                lora[module] = self.factors(effective_b(factors)[:, :rank], factors.A[:rank])
        return AdapterState(lora=lora, extra=global_state.extra)

    def factors(self, b: torch.Tensor, a: torch.Tensor) -> LoraFactors:
        """ΔW = b·a as factors at rank ``a.shape[0]`` with this run's alpha for that rank."""
        return from_effective(b, a, self.lora.alpha_at(a.shape[0]))

    def personalize(self, sent: AdapterState, client: int) -> AdapterState:
        """The adapter ``client`` starts from, given its projection of the global adapter.

        Personalised aggregators (FedSA) put back the parts a client keeps to itself.
        """
        return sent

    def remember(self, client: int, update: AdapterState) -> None:  # noqa: B027 (optional hook)
        """Told every accepted update, so personalised aggregators can keep a client's parts."""

    def local_penalty(self) -> SelfPrune | None:
        """A term every client adds to its local loss (HetLoRA's rank self-pruning), or None."""
        return None

    def dispatch_details(self, client: int, sent: AdapterState) -> dict[str, int]:
        """Fields the dispatch event of a job that sends ``client`` the adapter ``sent``
        carries besides its rank (HetLoRA's self-pruning: the rank it trains at)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the aggregator keeps between merges, for checkpoints (most keep nothing)."""
        return {}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned."""

    def transmitted_bytes(self, state: AdapterState) -> int:
        """Bytes of a client's update to ``state``'s shape that cross the network: all of it,
        unless parts stay local. Frozen factors never go up: they are the server's."""
        return state.num_bytes() - frozen_bytes(state)

    def download_bytes(self, sent: AdapterState, client: int) -> int:
        """Bytes of a job's adapter ``sent`` down to ``client``: its frozen factors, and its
        personalised parts when the client does not hold them yet, included."""
        return self.transmitted_bytes(sent) + frozen_bytes(sent)


def frozen_bytes(state: AdapterState) -> int:
    """Bytes of ``state``'s frozen factors."""
    return sum(t.numel() * t.element_size() for f in state.frozen.values() for t in (f.A, f.B))


def create(
    name: str, lora: LoraConfig, global_rank: int, options: Mapping[str, Any] | None = None
) -> Aggregator:
    """The aggregator ``name`` with its ``server.aggregator_options`` validated."""
    cls = registry.get(name)
    try:
        parsed = cls.Options.model_validate(dict(options or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"server.aggregator_options.{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in error.errors()
        )
        raise ValueError(f"{problems} (aggregator {name})") from None
    return cls(lora, global_rank, parsed)
