"""What each client of a partition holds: sizes, label mix, a context score's distribution, and
how far each client's distribution is from everyone's (``fedlora partition``).

Three divergences tell which factors a partition moves: the **score divergence** (mean
Jensen-Shannon divergence, in bits, of each client's score histogram from the pooled one), the
**label divergence** (the same over the label counts) and the **size divergence** (coefficient
of variation of the client sizes, with the largest over the smallest). A Dirichlet over score
buckets moves the sizes too; ``sorted`` bands do not, and banded ``within_labels`` they keep
the labels where they were even when the score and the label are correlated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedlora.data.federated import FederatedData

MAX_DISTINCT = 30  # a score with at most this many values is binned by value, else by decile


@dataclass(frozen=True)
class ClientDescription:
    client: int
    examples: int
    labels: list[int]  # count per label id
    mean: float
    q1: float
    median: float
    q3: float
    divergence: float  # Jensen-Shannon (bits) between its score histogram and everyone's
    degraded: bool


@dataclass(frozen=True)
class PartitionDescription:
    score: str
    label_names: list[str]
    clients: list[ClientDescription]
    overall: ClientDescription

    @property
    def mean_divergence(self) -> float:
        """The score divergence: mean JS (bits) of the clients' histograms from the pooled one."""
        return float(np.mean([c.divergence for c in self.clients]))

    @property
    def label_divergence(self) -> float:
        """The label divergence: mean JS (bits) of the clients' label mix from the pooled one."""
        pooled = np.asarray(self.overall.labels, dtype=np.float64)
        mixes = [np.asarray(c.labels, dtype=np.float64) for c in self.clients]
        return float(np.mean([jensen_shannon(mix, pooled) for mix in mixes]))

    @property
    def size_variation(self) -> float:
        """The size divergence: coefficient of variation of the client sizes."""
        return size_variation([c.examples for c in self.clients])

    @property
    def size_ratio(self) -> float:
        """The largest client's size over the smallest's."""
        sizes = [c.examples for c in self.clients]
        return max(sizes) / min(sizes)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mean_divergence": self.mean_divergence,
            "label_divergence": self.label_divergence,
            "size_variation": self.size_variation,
            "size_ratio": self.size_ratio,
        }


def client_examples(data: FederatedData) -> list[np.ndarray]:
    """Every example a client holds: what it trains on and its local test split."""
    if data.client_test is None:
        return data.client_train
    pairs = zip(data.client_train, data.client_test, strict=True)
    return [np.sort(np.concatenate(pair)) for pair in pairs]


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JS divergence in bits of two histograms (normalised here): 0 equal, 1 disjoint."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return (kl(p) + kl(q)) / 2


def size_variation(sizes: Sequence[int]) -> float:
    """Population standard deviation of the sizes over their mean: 0 for equal clients."""
    values = np.asarray(sizes, dtype=np.float64)
    return float(values.std() / values.mean())


def score_divergences(scores: np.ndarray, clients: Sequence[np.ndarray]) -> list[float]:
    """Each client's JS divergence (bits) from the pooled histogram of ``scores`` over the
    examples the clients hold together."""
    held = np.concatenate(clients)
    edges = _bins(scores[held])
    pooled = np.histogram(scores[held], edges)[0].astype(float)
    return [
        jensen_shannon(np.histogram(scores[c], edges)[0].astype(float), pooled) for c in clients
    ]


def _bins(scores: np.ndarray) -> np.ndarray:
    """Histogram edges: one bin per value for a few-valued score, else pooled deciles."""
    values = np.unique(scores)
    if len(values) <= MAX_DISTINCT:
        return np.append(values, values[-1] + 1)
    return np.unique(np.quantile(scores, np.linspace(0, 1, 11)))


def describe_partition(data: FederatedData, score: str) -> PartitionDescription:
    """Per client statistics of ``score`` over the data it actually holds (after any
    degradation), and its divergence from the pooled distribution."""
    scores = data.train.scores[score]
    labels = data.train.labels.numpy()

    def describe(client: int, indices: np.ndarray, divergence: float) -> ClientDescription:
        values = scores[indices]
        q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
        return ClientDescription(
            client=client,
            examples=len(indices),
            labels=np.bincount(labels[indices], minlength=data.task.num_labels).tolist(),
            mean=float(values.mean()),
            q1=float(q1),
            median=float(median),
            q3=float(q3),
            divergence=divergence,
            degraded=client in data.degraded_clients,
        )

    held = client_examples(data)
    divergences = score_divergences(scores, held)
    clients = [
        describe(c, idx, d) for c, (idx, d) in enumerate(zip(held, divergences, strict=True))
    ]
    overall = describe(-1, np.concatenate(held), 0.0)
    return PartitionDescription(score, list(data.task.label_names), clients, overall)


def plot_partition(data: FederatedData, description: PartitionDescription, path: Path) -> None:
    """Box plots of the score per client (and of everyone's), with client sizes underneath."""
    scores = data.train.scores[description.score]
    groups = [scores[indices] for indices in client_examples(data)]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(7.0, 0.6 * len(groups) + 3), 6.5), height_ratios=[3, 1], sharex=True
    )
    positions = np.arange(len(groups) + 1)
    top.boxplot([*groups, scores], positions=positions, showfliers=False)
    top.set_ylabel(description.score)
    top.set_title(
        f"{description.score} per client (mean JS divergence from all:"
        f" {description.mean_divergence:.3f} bits)"
    )
    top.grid(alpha=0.3, axis="y")
    counts = np.array([c.labels for c in description.clients]).T
    bottom_of = np.zeros(len(groups))
    for label, row in zip(description.label_names, counts, strict=True):
        bottom.bar(positions[:-1], row, bottom=bottom_of, label=label)
        bottom_of += row
    bottom.set_ylabel("examples")
    bottom.legend(fontsize=8)
    names = [f"{c}{'*' if c in data.degraded_clients else ''}" for c in range(len(groups))]
    bottom.set_xticks(positions, [*names, "all"])
    bottom.set_xlabel("client (* degraded)" if data.degraded_clients else "client")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
