"""Client profiles (slowness, bandwidth, rank): who the experiment's clients are, assigned by
the experiment for every runtime.

Slowness multiplies the virtual seconds a client needs per token under the simulator's cost
model (:mod:`fedlora.sim.cost`); 1 is the fastest device. Draws are seeded, so the same config
and seed give the same federation. A rank is drawn too, or, with ``clients.rank_by: node``,
the one each client's node reports (a deployment's data owners choose what their hardware
affords).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fedlora.config import (
    ClientsConfig,
    ConfigError,
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


def node_ranks(reported: Mapping[int, int], num: int, largest: int) -> np.ndarray:
    """``clients.rank_by: node``: each client's rank as its node reported it (client → rank);
    a client whose node reported none, or one outside 1 … ``largest`` (``lora.r``), is named."""
    silent = [c for c in range(num) if c not in reported]
    if silent:
        raise ConfigError(
            f"clients.rank_by: node, but the nodes of clients {silent[:10]} report no rank"
            " (start each SuperNode with --node-config 'partition-id=K rank=R')"
        )
    wrong = {c: r for c, r in sorted(reported.items()) if c < num and not 1 <= r <= largest}
    if wrong:
        raise ConfigError(
            f"clients.rank_by: node: clients {list(wrong)} report ranks {list(wrong.values())},"
            f" outside 1 … {largest} (lora.r, the largest rank a node may train)"
        )
    return np.array([reported[c] for c in range(num)])


def draw_profiles(
    clients: ClientsConfig,
    default_rank: int,
    seed: int,
    reported: Mapping[int, int] | None = None,
) -> list[ClientProfile]:
    """Every client's profile; ``reported``: the ranks the clients' nodes report, by client,
    which ``clients.rank_by: node`` takes."""
    slowness = draw_slowness(clients, seed)
    if clients.rank_by == "node":
        ranks = node_ranks(reported or {}, clients.num, default_rank)
    else:
        ranks = assign_ranks(clients, default_rank, slowness, seed)
    return [
        ClientProfile(
            client=c, slowness=float(s), bandwidth_mbps=clients.bandwidth_mbps, rank=int(r)
        )
        for c, (s, r) in enumerate(zip(slowness, ranks, strict=True))
    ]
