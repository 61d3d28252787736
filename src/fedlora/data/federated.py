"""A task's data as the clients of one run see it: encoded, partitioned, degraded, held out.

The order matters and is fixed: the partition is drawn on the clean examples (so the same seed
gives the same clients with and without degradation), then the chosen clients' texts are
degraded, then each client holds out its local test split. A model-based score (the response's
perplexity, :mod:`fedlora.client.quality`) comes from a scorer the caller passes in, so this
layer never loads a model; it scores the clean rows, and a degraded split keeps their scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedlora.config import ConfigError, ExperimentConfig, resolve_data_dir
from fedlora.data.degrade import degrade
from fedlora.data.encoding import EncodedSplit, encode_split
from fedlora.data.examples import LabelledSplit
from fedlora.data.partition import partition
from fedlora.data.sources import load_split
from fedlora.data.tasks import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ModelScorer = Callable[[EncodedSplit], dict[str, np.ndarray]]
"""Scores of every row of a split that need the model (:data:`fedlora.client.quality.Scorer`)."""


@dataclass(frozen=True)
class FederatedData:
    task: TaskSpec
    train: EncodedSplit  # degraded where the config says so
    eval: EncodedSplit
    client_train: list[np.ndarray]  # indices into ``train`` each client trains on
    client_test: list[np.ndarray] | None  # its held-out local test split, if any
    degraded_clients: list[int]
    eval_ids: np.ndarray  # each eval example's row in its file (0-based): its id


def subset_rows(count: int, limit: int | None, seed: int) -> np.ndarray:
    """The rows a seeded random subset of ``limit`` of ``count`` keeps, in file order."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, 3]).choice(count, limit, False))


def _subset(split: LabelledSplit, limit: int | None, seed: int) -> LabelledSplit:
    """A seeded random subset (in file order) for quick runs; the whole split when no limit."""
    if limit is None or limit >= len(split.examples):
        return split
    keep = subset_rows(len(split.examples), limit, seed)
    examples = [split.examples[i] for i in keep]
    return LabelledSplit(
        split.task, split.split, examples, split.origin, f"{split.fingerprint}:{limit}:{seed}"
    )


def given_clients(split: LabelledSplit, num_clients: int, column: str | None) -> list[np.ndarray]:
    """The clients the data file names (``data.partition.method: given``): ids 0 … num − 1."""
    ids = np.array([-1 if e.client is None else e.client for e in split.examples])
    outside = sorted({int(c) for c in ids if not 0 <= c < num_clients})
    if outside:
        raise ConfigError(
            f"data.client_column: {split.origin} names client(s) {outside[:5]} in column"
            f" {column!r}, outside 0 … {num_clients - 1} (clients.num: {num_clients})"
        )
    return [np.flatnonzero(ids == client).astype(np.int64) for client in range(num_clients)]


def partition_keys(data: EncodedSplit, by: str) -> np.ndarray:
    """What the partition splits on: the labels, or one context score."""
    if by == "label":
        return data.labels.numpy()
    if by not in data.scores:
        raise ConfigError(f"data.partition.by: no {by!r} score for this data")
    return data.scores[by]


def hold_out(
    clients: list[np.ndarray], share: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Each client's (train, local test) indices: a random ``share`` of its examples, at least
    one, held out for testing; at least one always stays to train on."""
    if share == 0:
        return clients, None
    train, test = [], []
    for client, indices in enumerate(clients):
        if len(indices) < 2:
            raise ConfigError(
                f"eval.local_share: client {client} has {len(indices)} example(s), too few to"
                " hold out a local test split; raise data.partition.min_size"
            )
        count = min(len(indices) - 1, max(1, round(share * len(indices))))
        shuffled = np.random.default_rng([seed, 7, client]).permutation(indices)
        test.append(np.sort(shuffled[:count]))
        train.append(np.sort(shuffled[count:]))
    return train, test


def prepare_data(
    config: ExperimentConfig,
    tokenizer: PreTrainedTokenizerBase,
    model_scores: ModelScorer | None = None,
) -> FederatedData:
    """The run's data; ``model_scores`` adds scores computed by a model to the training rows
    (needed when ``data.partition.by`` names one)."""
    data_dir = resolve_data_dir(config)
    seed = config.seed
    train_split = _subset(
        load_split(config.data, data_dir, "train"), config.data.max_train_examples, seed
    )
    eval_full = load_split(config.data, data_dir, config.eval.split)
    eval_ids = subset_rows(len(eval_full.examples), config.data.max_eval_examples, seed)
    eval_split = _subset(eval_full, config.data.max_eval_examples, seed)

    def encode(split: LabelledSplit) -> EncodedSplit:
        return encode_split(split, tokenizer, config.data.max_length, config.data.cache_dir)

    train = encode(train_split)
    added = {} if model_scores is None else model_scores(train)
    train = with_scores(train, added)
    clients = client_partition(config, train_split, train)
    degraded: list[int] = []
    if config.data.degrade is not None:
        degraded_split, degraded = degrade(train_split, clients, config.data.degrade, seed)
        train = with_scores(encode(degraded_split), added)
    client_train, client_test = hold_out(clients, config.eval.local_share, seed)
    return FederatedData(
        train_split.task, train, encode(eval_split), client_train, client_test, degraded, eval_ids
    )


def with_scores(data: EncodedSplit, scores: dict[str, np.ndarray]) -> EncodedSplit:
    """``data`` with more scores: a copy, since an encoding is shared by every run in the
    process."""
    if not scores:
        return data
    return dataclasses.replace(data, scores=data.scores | scores)


def client_partition(
    config: ExperimentConfig, split: LabelledSplit, encoded: EncodedSplit
) -> list[np.ndarray]:
    """Each client's training examples: the file's own clients, or a draw by the config."""
    method = config.data.partition
    if method.method == "given":
        clients = given_clients(split, config.clients.num, config.data.client_column)
        small = [c for c, indices in enumerate(clients) if len(indices) < method.min_size]
        if small:
            raise ConfigError(
                f"data.partition.min_size: the file's client(s) {small[:5]} hold fewer than"
                f" {method.min_size} examples (of data.max_train_examples)"
            )
        return clients
    return partition(
        partition_keys(encoded, method.by),
        config.clients.num,
        method,
        seed=config.seed,
        labels=encoded.labels.numpy(),
    )
