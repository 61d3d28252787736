"""A model's per-example outputs on the eval split, as data: :class:`Predictions`.

The learner computes them when it evaluates the global model, ``results/`` writes them to
``predictions.csv`` and reads them back (:mod:`fedlora.results.predictions`), and studies pair
two runs' rows on the same examples. The record lives below ``client/`` and ``results/`` so that
neither imports the other: a learner returns its predictions without knowing the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax


@dataclass(frozen=True)
class Predictions:
    """One row per eval example, in eval-split order: ``ids`` pair them across runs.

    ``losses`` are per example: the cross-entropy of the label, or for an instruction task the
    mean over the example's ``tokens`` response tokens."""

    ids: npt.NDArray[np.int64]
    losses: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]  # label ids (an instruction task's: category ids)
    probabilities: npt.NDArray[np.float64] | None = None  # examples x classes
    lengths: npt.NDArray[np.float64] | None = None  # context length score, to slice by length
    tokens: npt.NDArray[np.int64] | None = None  # response tokens scored (instruction tasks)
    categories: tuple[str, ...] | None = None  # each example's category (instruction tasks)

    @classmethod
    def from_logits(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        lengths: np.ndarray | None = None,
        ids: np.ndarray | None = None,
    ) -> Predictions:
        log_p = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
        labels = np.asarray(labels, dtype=np.int64)
        return cls(
            ids=example_ids(ids, len(labels)),
            losses=-log_p[np.arange(len(labels)), labels],
            labels=labels,
            probabilities=np.exp(log_p),
            lengths=None if lengths is None else np.asarray(lengths, dtype=np.float64),
        )

    @classmethod
    def from_response_losses(
        cls,
        loss_sums: np.ndarray,
        tokens: np.ndarray,
        labels: np.ndarray,
        categories: tuple[str, ...],
        lengths: np.ndarray | None = None,
        ids: np.ndarray | None = None,
    ) -> Predictions:
        """An instruction task's rows: each example's summed response loss and token count,
        its category id (``labels``) and name."""
        counts = np.asarray(tokens, dtype=np.int64)
        return cls(
            ids=example_ids(ids, len(counts)),
            losses=np.asarray(loss_sums, dtype=np.float64) / counts,
            labels=np.asarray(labels, dtype=np.int64),
            tokens=counts,
            categories=categories,
            lengths=None if lengths is None else np.asarray(lengths, dtype=np.float64),
        )

    @property
    def predicted(self) -> npt.NDArray[np.int64]:
        return self._probabilities.argmax(axis=1).astype(np.int64)

    @property
    def correct(self) -> npt.NDArray[np.float64]:
        return (self.predicted == self.labels).astype(np.float64)

    @property
    def classified(self) -> bool:
        """Whether the rows are a classifier's (with class probabilities and accuracy)."""
        return self.probabilities is not None

    @property
    def _probabilities(self) -> npt.NDArray[np.float64]:
        if self.probabilities is None:
            raise ValueError("these predictions carry no class probabilities (no classifier's)")
        return self.probabilities

    def loss(self, mask: npt.NDArray[np.bool_] | None = None) -> float:
        """The task's loss over the examples ``mask`` selects (all when None): the mean per
        example, or weighted by response tokens where the rows carry them."""
        chosen = np.ones(len(self.ids), dtype=bool) if mask is None else mask
        if self.tokens is None:
            return float(self.losses[chosen].mean())
        weights = self.tokens[chosen]
        return float((self.losses[chosen] * weights).sum() / weights.sum())


def example_ids(ids: np.ndarray | None, count: int) -> npt.NDArray[np.int64]:
    """``ids`` as example ids, or where there are none the row order (0 … count - 1)."""
    return np.arange(count, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
