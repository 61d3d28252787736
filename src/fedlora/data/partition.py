"""Split a dataset's example indices among clients: evenly (IID) or skewed by a grouping key.

The skew is a Dirichlet draw per group, so one ``alpha`` dials from near-IID (large) to nearly
one group per client (small). The group of an example is a label today; any per-example key
(e.g. a bucket of context length or quality) partitions the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fedlora.config import PartitionConfig

MAX_ATTEMPTS = 100  # Dirichlet redraws before giving up on min_size

Indices = npt.NDArray[np.int64]


class PartitionError(ValueError):
    """No partition satisfies the config; the message names the keys to change."""


def partition(
    labels: npt.ArrayLike, num_clients: int, config: PartitionConfig, seed: int
) -> list[Indices]:
    """One sorted index array per client; every example goes to exactly one client.

    Deterministic in its arguments: the same seed gives the same clients on every machine.
    """
    groups = np.asarray(labels)
    if groups.ndim != 1:
        raise PartitionError(f"labels: expected a 1-D array, got shape {groups.shape}")
    if num_clients < 1:
        raise PartitionError(f"clients.num: need at least one client, got {num_clients}")
    if num_clients * config.min_size > len(groups):
        raise PartitionError(
            f"data.partition.min_size: {num_clients} clients (clients.num) with at least"
            f" {config.min_size} examples each need {num_clients * config.min_size} examples,"
            f" but there are {len(groups)}"
        )
    rng = np.random.default_rng(seed)
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


Method = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[Indices]]
_METHODS: dict[str, Method] = {"iid": iid, "dirichlet": dirichlet}
