"""Split a dataset's example indices among clients: evenly (IID) or skewed by a key.

The key is the label or a context score (:mod:`fedlora.data.context`). ``dirichlet`` draws
each client's share of every group (a label, or a quantile bucket of the score), so one
``alpha`` dials from near-IID (large) to nearly one group per client (small). ``sorted`` deals
out contiguous bands of the examples ordered by the key, blurred towards random by
``1 - strictness``; ranked within each label, the bands keep every client's label mix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fedlora.config import PartitionConfig
from fedlora.data.context import quantile_buckets

MAX_ATTEMPTS = 100  # Dirichlet redraws before giving up on min_size

Indices = npt.NDArray[np.int64]


class PartitionError(ValueError):
    """No partition satisfies the config; the message names the keys to change."""


def partition(
    keys: npt.ArrayLike,
    num_clients: int,
    config: PartitionConfig,
    seed: int,
    labels: npt.ArrayLike | None = None,
) -> list[Indices]:
    """One sorted index array per client; every example goes to exactly one client.

    ``keys`` are the examples' labels, or their scores when ``config.by`` names a score;
    ``labels`` are needed only to band ``within_labels``. Deterministic in its arguments:
    the same seed gives the same clients on every machine.
    """
    groups = np.asarray(keys)
    if groups.ndim != 1:
        raise PartitionError(f"partition keys: expected a 1-D array, got shape {groups.shape}")
    if num_clients < 1:
        raise PartitionError(f"clients.num: need at least one client, got {num_clients}")
    if num_clients * config.min_size > len(groups):
        raise PartitionError(
            f"data.partition.min_size: {num_clients} clients (clients.num) with at least"
            f" {config.min_size} examples each need {num_clients * config.min_size} examples,"
            f" but there are {len(groups)}"
        )
    if config.method not in _METHODS:  # given: read from the data file, never drawn
        raise PartitionError(f"data.partition.method: {config.method!r} is not a drawn partition")
    rng = np.random.default_rng(seed)
    if config.within_labels:
        if labels is None or np.shape(labels) != groups.shape:
            raise PartitionError(
                "data.partition.within_labels: needs one label per example to rank within"
            )
        return sorted_bands(groups, num_clients, config, rng, np.asarray(labels))
    return _METHODS[config.method](groups, num_clients, config, rng)


def iid(
    groups: np.ndarray, num_clients: int, config: PartitionConfig, rng: np.random.Generator
) -> list[Indices]:
    """Shuffle and deal out: client sizes differ by at most one."""
    shuffled = rng.permutation(len(groups)).astype(np.int64)
    return [np.sort(part) for part in np.array_split(shuffled, num_clients)]


def dirichlet(
    groups: np.ndarray, num_clients: int, config: PartitionConfig, rng: np.random.Generator
) -> list[Indices]:
    """Give each client a Dir(alpha) share of every group, redrawn until all have min_size."""
    if config.by != "label":
        groups = quantile_buckets(groups.astype(np.float64), config.buckets, rng)
    members = [np.flatnonzero(groups == group).astype(np.int64) for group in np.unique(groups)]
    for _ in range(MAX_ATTEMPTS):
        shares: list[list[Indices]] = [[] for _ in range(num_clients)]
        for indices in members:
            proportions = rng.dirichlet(np.full(num_clients, config.alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
            for client, part in enumerate(np.split(rng.permutation(indices), cuts)):
                shares[client].append(part)
        clients = [np.sort(np.concatenate(parts)) for parts in shares]
        if min(len(client) for client in clients) >= config.min_size:
            return clients
    raise PartitionError(
        f"data.partition.min_size: no Dirichlet draw in {MAX_ATTEMPTS} gave all"
        f" {num_clients} clients (clients.num) at least {config.min_size} of {len(groups)}"
        f" examples with data.partition.alpha={config.alpha}; lower min_size or clients.num,"
        " or raise alpha"
    )


def sorted_bands(
    keys: np.ndarray,
    num_clients: int,
    config: PartitionConfig,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
) -> list[Indices]:
    """Contiguous bands of the examples ordered by a blend of key rank and noise.

    The sort key is ``strictness · rank + (1 − strictness) · uniform`` on [0, 1], so bands
    are strict at 1 and random (IID) at 0; ties in the key fall in random order. Given
    ``labels``, both the rank and the blend are ranked among the examples of the same label:
    every label spreads evenly over [0, 1], so each band holds its share of every label.
    """
    strata = np.zeros(len(keys), dtype=np.int64) if labels is None else labels
    tie_break = rng.random(len(keys))
    rank = _ranks(strata, tie_break, keys)
    blended = config.strictness * rank + (1 - config.strictness) * rng.random(len(keys))
    if labels is not None:  # even spacing within every label: each band gets its share
        blended = _ranks(strata, blended)
    order = np.argsort(blended, kind="stable").astype(np.int64)
    return [np.sort(band) for band in np.array_split(order, num_clients)]


def _ranks(strata: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Each example's rank by ``keys`` (the last is the primary) among the examples of its
    stratum, on [0, 1]."""
    rank = np.empty(len(strata))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        order = members[np.lexsort(tuple(key[members] for key in keys))]
        rank[order] = np.arange(len(members)) / max(1, len(members) - 1)
    return rank


Method = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[Indices]]
_METHODS: dict[str, Method] = {"iid": iid, "dirichlet": dirichlet, "sorted": sorted_bands}
