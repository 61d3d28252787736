"""How much a stale result counts: s(τ) for a result τ behind the global.

The three functions of FedAsync (Xie et al., 2019): ``constant`` (s = 1), ``polynomial``
s = (τ + 1)^(−a), and ``hinge`` s = 1 for τ ≤ b, else 1 / (a·(τ − b) + 1). FedAsync scales its
mixing rate by s; FedBuff and FedFa scale each buffered or windowed result's weight by it.
"""

from __future__ import annotations

from fedlora.config import StalenessConfig


def staleness_factor(staleness: int, config: StalenessConfig) -> float:
    """s(τ) in (0, 1]; τ is the result's staleness in ``server.staleness_unit``."""
    if staleness < 0:
        raise ValueError(f"staleness must be non-negative, got {staleness}")
    match config.function:
        case "constant":
            return 1.0
        case "polynomial":
            return float((staleness + 1) ** -config.a)
        case "hinge":
            if staleness <= config.b:
                return 1.0
            return 1.0 / (config.a * (staleness - config.b) + 1.0)
