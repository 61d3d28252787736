"""What the server does to an update from a client before anything else touches it.

A client's update is untrusted input: bytes that may be truncated, nested or lie about their
sizes, tensors of the wrong dtype, shape or rank, NaN/Inf, a scaling it was not sent, or a
finite update far larger than training produces. What is screened is what the client really
contributes, the scaled product s·B·A per module (and the head), never the factors alone:
scaling the factors' alpha by 1e30 moves the product, not the tensors. Every such update is
turned into one :class:`InvalidUpdate` with the reason (the core rejects and counts it); an
update whose distance from what its job was sent exceeds ``server.max_update_norm`` is
rejected, or clipped back to the bound, as configured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate, LoraFactors
from fedlora.aggregation.diagnostics import squared_norm

# No training moves a LoRA product this far (base weights have norms of order 10 to 100),
# and below it every float32 computation a merge makes stays finite: a squared norm of
# (1e9)² summed over a million terms is 1e24, far below float32's 3.4e38. One finite entry of
# 3e38 passes a dtype check yet overflows the merge's QR and SVD; it does not pass this.
MAX_CONTRIBUTION_NORM = 1e9
_CLIP_STEPS = 60  # bisection halvings: the clip factor to float64 precision


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
    _check_scaling(state, sent)
    state = replace(state, frozen=sent.frozen)  # frozen factors are the server's, not the client's
    size = update_distance(state, _nothing(sent))
    if not size <= MAX_CONTRIBUTION_NORM:  # NaN too
        raise InvalidUpdate(
            f"the update (products s·B·A and head) has norm {size:.4g}, beyond any training"
            f" ({MAX_CONTRIBUTION_NORM:g})"
        )
    norm = update_distance(state, sent)
    if max_norm is None or norm <= max_norm:
        return Screened(state, None)
    if action == "reject":
        raise InvalidUpdate(f"update norm {norm:.4g} exceeds server.max_update_norm {max_norm:g}")
    return Screened(clip_to(sent, state, max_norm), norm)


def _nothing(sent: AdapterState) -> AdapterState:
    """A zero update of ``sent``'s shapes: the distance from it is the update's own size."""
    return AdapterState(
        lora={m: LoraFactors(f.A, torch.zeros_like(f.B), f.alpha) for m, f in sent.lora.items()},
        extra={name: torch.zeros_like(t) for name, t in sent.extra.items()},
    )


def _check_scaling(state: AdapterState, sent: AdapterState) -> None:
    """A client trains at the alpha its job was sent: it does not choose its own scaling."""
    for module, factors in state.lora.items():
        expected = sent.lora[module].alpha
        if factors.alpha != expected:
            raise InvalidUpdate(
                f"{module}: alpha {factors.alpha:.6g}, but the job was sent alpha {expected:g}"
            )


def update_distance(state: AdapterState, sent: AdapterState) -> float:
    """‖update − what was sent‖: the products s·B·A per module and the head tensors, in
    float64 (from the factors' QR, never the dense matrix), so a huge finite update cannot
    overflow unseen."""
    squared = sum(
        squared_norm([(1.0, factors), (-1.0, sent.lora[module])])
        for module, factors in state.lora.items()
    )
    for name, tensor in state.extra.items():
        squared += float(torch.sum((tensor.double() - sent.extra[name].double()) ** 2))
    return math.sqrt(squared)


def clip_to(sent: AdapterState, state: AdapterState, bound: float) -> AdapterState:
    """The point on the line from ``sent`` to ``state`` (factors and head alike) whose update
    norm is ``bound``, to float64 precision and never above it.

    The product moves quadratically along that line, so the factor is found by bisection: the
    distance is 0 at ``sent`` and above ``bound`` at ``state``, and continuous in between.
    """
    low, high = 0.0, 1.0
    for _ in range(_CLIP_STEPS):
        middle = (low + high) / 2
        if update_distance(towards(sent, state, middle), sent) <= bound:
            low = middle
        else:
            high = middle
    return towards(sent, state, low)


def towards(sent: AdapterState, state: AdapterState, factor: float) -> AdapterState:
    """sent + factor · (state − sent), tensor by tensor."""

    def scaled(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return (old.double() + factor * (new.double() - old.double())).to(new.dtype)

    lora = {
        m: LoraFactors(scaled(f.A, sent.lora[m].A), scaled(f.B, sent.lora[m].B), f.alpha)
        for m, f in state.lora.items()
    }
    extra = {name: scaled(t, sent.extra[name]) for name, t in state.extra.items()}
    return AdapterState(lora=lora, extra=extra, frozen=state.frozen)
