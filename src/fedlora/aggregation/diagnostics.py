"""What a merge gets wrong, measured from the factors alone (never a dense out×in matrix).

For a merge of weighted terms into a new global G:

- ``error``: ‖G − E‖ / ‖E‖, E = Σ_t w_t ΔW_t the exact weighted sum of *all* terms as the
  policy wrote them (global and sent included), ΔW_t = s_t B_t A_t plus the term's frozen
  update, if any (and G's own frozen update counts in G). 0 for a lossless merge (FLoRA,
  FedEx-LoRA, HLoRA at a global rank that holds the sum); zero-padding's cross-terms and any
  truncation show here.
- ``energy_above``: per client rank r, the share of the energy (squared singular values) of
  G's trained factors in their components beyond r, which a rank-r client cannot receive.
- ``spread``: Σ_k w_k‖ΔW_k − ΔW̄‖² / ‖ΔW̄‖² over the merge's client results (weights
  normalised to 1): how much the clients disagree. ΔW_k is the client's adapter, minus what
  its job was sent when the merge carries that sent term (delta updates).

Every norm comes from the QR factors of the stacked factors (an R×R core, R the summed
rank), as in :mod:`fedlora.aggregation.lowrank`. Modules combine as sums of squares; the head
(``modules_to_save``) is not part of ΔW and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation.base import Aggregator, WeightedState, create, products
from fedlora.config import ConfigError, ExperimentConfig
from fedlora.terms import Source

Product = list[tuple[float, LoraFactors]]  # Σ coefficient · s·B·A


@dataclass(frozen=True)
class MergeDiagnostics:
    error: float
    spread: float
    energy_above: dict[int, float]
    shadow: dict[str, float] = field(default_factory=dict)  # other aggregators' errors

    def as_event(self) -> dict[str, Any]:
        """The ``diagnostics`` field of a ``merge`` event (JSON keys are strings)."""
        event: dict[str, Any] = {
            "error": self.error,
            "spread": self.spread,
            "energy_above": {str(r): e for r, e in self.energy_above.items()},
        }
        if self.shadow:
            event["shadow"] = dict(self.shadow)
        return event

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> MergeDiagnostics:
        return cls(
            error=event["error"],
            spread=event["spread"],
            energy_above={int(r): e for r, e in event["energy_above"].items()},
            shadow=dict(event.get("shadow", {})),
        )


def squared_norm(product: Product) -> float:
    """‖Σ_i c_i s_i B_i A_i‖_F² = ‖R_b R_aᵀ‖_F², with 𝔅 = Q_b R_b and 𝔄ᵀ = Q_a R_a the QR
    factorisations of the stacked factors (float64; no cancellation of squares, so an exact
    merge reads as 0 to rounding)."""
    _, r_b = torch.linalg.qr(torch.cat([_effective_b64(f) * c for c, f in product], dim=1))
    _, r_a = torch.linalg.qr(torch.cat([f.A.double() for _, f in product], dim=0).T)
    return float(torch.linalg.matrix_norm(r_b @ r_a.T) ** 2)


def singular_values(factors: LoraFactors) -> torch.Tensor:
    """The singular values of s·B·A from the QR factors of B and Aᵀ (float64)."""
    _, r_b = torch.linalg.qr(_effective_b64(factors))
    _, r_a = torch.linalg.qr(factors.A.double().T)
    return torch.linalg.svdvals(r_b @ r_a.T)


def _effective_b64(factors: LoraFactors) -> torch.Tensor:
    """s·B in float64, scaled after the cast: a large finite B times s cannot overflow."""
    return factors.B.double() * factors.scaling


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with 0/0 = 0 (nothing to get wrong)."""
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator == 0 else float("inf")


def merge_error(terms: Sequence[WeightedState], merged: AdapterState) -> float:
    """‖G − Σ_t w_t ΔW_t‖ / ‖Σ_t w_t ΔW_t‖ over all modules."""
    wrong = exact = 0.0
    for module in merged.lora:
        product = products(terms, module)
        exact += squared_norm(product)
        merged_product = products([WeightedState(merged, 1.0)], module)
        wrong += squared_norm([*merged_product, *[(-w, f) for w, f in product]])
    return _ratio(wrong**0.5, exact**0.5)


def energy_above(merged: AdapterState, ranks: Sequence[int]) -> dict[int, float]:
    """Per rank r, the share of the global's squared singular values beyond the r-th."""
    energies = [singular_values(f) ** 2 for f in merged.lora.values()]
    total = sum(float(e.sum()) for e in energies)
    return {r: _ratio(sum(float(e[r:].sum()) for e in energies), total) for r in sorted(ranks)}


def client_spread(terms: Sequence[WeightedState]) -> float:
    """Σ_k w_k‖ΔW_k − ΔW̄‖² / ‖ΔW̄‖² (w normalised) = (Σ_k w_k‖ΔW_k‖² − ‖ΔW̄‖²) / ‖ΔW̄‖²."""
    results = [t for t in terms if t.role is Source.UPDATE and t.weight != 0]
    total = sum(t.weight for t in results)
    if not results or total == 0:
        return 0.0
    sent = {t.job: t.state for t in terms if t.role is Source.SENT and t.job is not None}
    spread = mean = 0.0
    for module in terms[0].state.lora:
        updates = [
            products(
                [WeightedState(t.state, 1.0)]
                + ([WeightedState(sent[t.job], -1.0)] if t.job in sent else []),
                module,
            )
            for t in results
        ]
        weights = [t.weight / total for t in results]
        mean_module = squared_norm(
            [(w * c, f) for w, update in zip(weights, updates, strict=True) for c, f in update]
        )
        spread += sum(w * squared_norm(u) for w, u in zip(weights, updates, strict=True))
        spread -= mean_module
        mean += mean_module
    return _ratio(max(spread, 0.0), mean)


def diagnose(
    terms: Sequence[WeightedState],
    merged: AdapterState,
    ranks: Sequence[int],
    shadows: Mapping[str, Aggregator] | None = None,
) -> MergeDiagnostics:
    """All of a merge's diagnostics; ``shadows`` merge the same terms for a paired error.

    Rounded to 12 significant digits: LAPACK's last bits can vary with memory alignment from
    one process to the next, and a resumed run must log what an uninterrupted one logs.
    """
    return MergeDiagnostics(
        error=_measured(merge_error(terms, merged)),
        spread=_measured(client_spread(terms)),
        energy_above={r: _measured(e) for r, e in energy_above(merged, ranks).items()},
        shadow={
            name: _measured(merge_error(terms, aggregator.combine(terms)))
            for name, aggregator in (shadows or {}).items()
        },
    )


def _measured(value: float) -> float:
    return float(f"{value:.12g}")


def shadow_aggregators(config: ExperimentConfig, ranks: Sequence[int]) -> dict[str, Aggregator]:
    """The ``eval.shadow`` aggregators, each checked against this run's ranks and server."""
    shadows = {}
    for name in config.eval.shadow:
        try:
            shadow = create(name, config.lora, config.global_rank)
            shadow.check_setup(ranks, config.server)
        except ValueError as error:
            raise ConfigError(f"eval.shadow: {name}: {error}") from None
        shadows[name] = shadow
    return shadows
