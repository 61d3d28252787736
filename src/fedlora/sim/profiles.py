"""Client profiles (slowness, bandwidth, rank) and the cost model that turns work into seconds.

Slowness multiplies the virtual seconds a client needs per token; 1 is the fastest device.
Draws are seeded, so the same config and seed give the same federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedlora.config import (
    ClientsConfig,
    ConstantSpeed,
    LognormalSpeed,
    NormalSpeed,
    ParetoSpeed,
    UniformSpeed,
    ZipfSpeed,
)

_MIN_SLOWNESS = 1e-3  # a normal draw can go below zero; no device is infinitely fast


@dataclass(frozen=True)
class ClientProfile:
    client: int
    slowness: float
    bandwidth_mbps: float
    rank: int


Sampler = Callable[[np.random.Generator, int], np.ndarray]


def _sampler(speed: object) -> Sampler:
    match speed:
        case ConstantSpeed(value=value):
            return lambda rng, n: np.full(n, value)
        case UniformSpeed(low=low, high=high):
            return lambda rng, n: rng.uniform(low, high, n)
        case NormalSpeed(mean=mean, std=std):
            return lambda rng, n: rng.normal(mean, std, n)
        case LognormalSpeed(mean=mean, sigma=sigma):
            return lambda rng, n: rng.lognormal(mean, sigma, n)
        case ParetoSpeed(alpha=alpha):
            return lambda rng, n: 1.0 + rng.pareto(alpha, n)  # classical Pareto, minimum 1
        case ZipfSpeed(alpha=alpha):
            return lambda rng, n: rng.zipf(alpha, n).astype(float)
    raise TypeError(f"clients.speed: unsupported distribution {speed!r}")


def draw_slowness(clients: ClientsConfig, seed: int) -> np.ndarray:
    """One slowness per client from ``clients.speed``, capped at ``cap`` when set."""
    rng = np.random.default_rng([seed, 0x51])
    values = np.maximum(_sampler(clients.speed)(rng, clients.num), _MIN_SLOWNESS)
    cap = getattr(clients.speed, "cap", None)
    return np.minimum(values, cap) if cap is not None else values


def assign_ranks(
    clients: ClientsConfig, default: int, slowness: np.ndarray, seed: int
) -> np.ndarray:
    """Each client's LoRA rank: as listed, or tiers dealt by share (largest remainder).

    ``rank_by: speed`` hands the largest ranks to the fastest clients, as a client with more
    compute can afford a larger adapter; ``random`` deals them in a seeded random order.
    """
    if clients.ranks is None:
        return np.full(clients.num, default)
    if isinstance(clients.ranks, list):
        return np.asarray(clients.ranks)
    tiers = sorted(clients.ranks)
    quotas = np.array([clients.ranks[r] for r in tiers]) * clients.num
    counts = np.floor(quotas).astype(int)
    leftover = clients.num - counts.sum()
    counts[np.argsort(-(quotas - counts), kind="stable")[:leftover]] += 1
    dealt = np.repeat(tiers, counts)[::-1]  # largest rank first
    if clients.rank_by == "speed":
        order = np.argsort(slowness, kind="stable")  # fastest first
    else:
        order = np.random.default_rng([seed, 0x52]).permutation(clients.num)
    ranks = np.empty(clients.num, dtype=int)
    ranks[order] = dealt
    return ranks


def draw_profiles(clients: ClientsConfig, default_rank: int, seed: int) -> list[ClientProfile]:
    slowness = draw_slowness(clients, seed)
    ranks = assign_ranks(clients, default_rank, slowness, seed)
    return [
        ClientProfile(
            client=c, slowness=float(s), bandwidth_mbps=clients.bandwidth_mbps, rank=int(r)
        )
        for c, (s, r) in enumerate(zip(slowness, ranks, strict=True))
    ]


def job_seconds(
    profile: ClientProfile, tokens: int, seconds_per_token: float, bytes_down: int, bytes_up: int
) -> float:
    """Virtual duration: compute (tokens × s/token × slowness) plus adapter transfer both ways."""
    compute = tokens * seconds_per_token * profile.slowness
    transfer = (bytes_down + bytes_up) * 8 / (profile.bandwidth_mbps * 1e6)
    return compute + transfer
