"""What the server does to an update from a client before anything else touches it.

A client's update is untrusted input: bytes that may be truncated or lie about their sizes,
tensors of the wrong dtype, shape or rank, NaN/Inf, or a finite update far larger than
training produces. Every such update is turned into one :class:`InvalidUpdate` with the
reason (the core rejects and counts it); an update whose norm exceeds
``server.max_update_norm`` is rejected or clipped back to the bound, as configured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate, LoraFactors


@dataclass(frozen=True)
class Screened:
    state: AdapterState
    clipped_from: float | None  # the update's norm, when it was clipped to the bound


def screen(
    update: AdapterState | bytes,
    spec: AdapterSpec,
    sent: AdapterState,
    max_norm: float | None = None,
    action: str = "reject",
) -> Screened:
    """The validated update; raises :class:`InvalidUpdate` naming what is wrong with it."""
    state = AdapterState.from_bytes(update) if isinstance(update, bytes) else update
    spec.validate(state, sent.rank)
    norm = update_distance(state, sent)
    if not norm < spec.largest_value:  # NaN too
        raise InvalidUpdate(f"the update's norm {norm:.4g} overflows its dtype")
    if max_norm is None or norm <= max_norm:
        return Screened(state, None)
    if action == "reject":
        raise InvalidUpdate(f"update norm {norm:.4g} exceeds server.max_update_norm {max_norm:g}")
    return Screened(clip_towards(sent, state, max_norm / norm), norm)


def update_distance(state: AdapterState, sent: AdapterState) -> float:
    """‖update − what was sent‖ over every trained tensor (A, B, head), in float64 so that a
    huge finite update cannot overflow unseen. A client trains at the rank it was sent, so the
    tensors pair up."""
    squared = 0.0
    for new, old in zip(_trained(state), _trained(sent), strict=True):
        squared += float(torch.sum((new.double() - old.double()) ** 2))
    return math.sqrt(squared)


def clip_towards(sent: AdapterState, state: AdapterState, factor: float) -> AdapterState:
    """sent + factor · (state − sent), tensor by tensor."""

    def scaled(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return (old.double() + factor * (new.double() - old.double())).to(new.dtype)

    lora = {
        m: LoraFactors(scaled(f.A, sent.lora[m].A), scaled(f.B, sent.lora[m].B), f.alpha)
        for m, f in state.lora.items()
    }
    extra = {name: scaled(t, sent.extra[name]) for name, t in state.extra.items()}
    return AdapterState(lora=lora, extra=extra, frozen=state.frozen)


def _trained(state: AdapterState) -> list[torch.Tensor]:
    pairs = [t for m in sorted(state.lora) for t in (state.lora[m].A, state.lora[m].B)]
    return pairs + [state.extra[name] for name in sorted(state.extra)]
