"""Per-example outputs of the global model (``predictions.csv``), keyed by example id.

Per-example rows let two arms be compared on the same examples (a paired difference is far
less noisy than two separate accuracies) and let any slice of the eval split be scored later.
A classification task writes each example's label, prediction, class probabilities and loss; an
instruction task each example's category (its label id and name), its response tokens and their
mean loss. ``id`` is the example's row in its data file (0-based); files written before that
column existed (``index`` = row order) read with their row order as ids, and a file without a
``label`` column reads with label 0 everywhere.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

PREDICTIONS_FILE = "predictions.csv"
STEP_PREDICTIONS = "predictions"  # folder of every global evaluation's predictions
STEP_FILE = re.compile(r"step_\d{6,}\.csv")  # a file in it: the global version evaluated


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
            ids=_ids(ids, len(labels)),
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
            ids=_ids(ids, len(counts)),
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


def _ids(ids: np.ndarray | None, count: int) -> npt.NDArray[np.int64]:
    return np.arange(count, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)


def write_predictions(path: Path, predictions: Predictions) -> None:
    """One CSV row per example; the columns its task has (``id`` and ``loss`` always)."""
    columns: dict[str, list[object]] = {"id": [int(i) for i in predictions.ids]}
    columns["label"] = [int(label) for label in predictions.labels]
    if predictions.classified:
        columns["predicted"] = [int(p) for p in predictions.predicted]
        for c, probs in enumerate(predictions._probabilities.T):
            columns[f"p_{c}"] = [repr(p) for p in probs.tolist()]
    if predictions.categories is not None:
        columns["category"] = list(predictions.categories)
    if predictions.tokens is not None:
        columns["tokens"] = [int(n) for n in predictions.tokens]
    columns["loss"] = [repr(float(loss)) for loss in predictions.losses]
    if predictions.lengths is not None:
        columns["length"] = [repr(float(n)) for n in predictions.lengths]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))


def step_predictions_path(folder: Path, step: int) -> Path:
    """Where the global model of version ``step`` wrote its predictions in a run folder."""
    return folder / STEP_PREDICTIONS / f"step_{step:06d}.csv"


def read_predictions(path: Path) -> Predictions:
    """The rows of ``path``; a missing column or a non-number names the file. Files written
    before the ``length`` column existed read with ``lengths`` None, before ``id`` with the
    row order as ids."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        first = rows[0]

        def numbers(key: str, kind: type = float) -> np.ndarray | None:
            return np.array([kind(r[key]) for r in rows]) if key in first else None

        classes = sorted((k for k in first if k.startswith("p_")), key=lambda k: int(k[2:]))
        labels = numbers("label", int)
        return Predictions(
            ids=_ids(numbers("id", int), len(rows)),
            losses=np.array([float(r["loss"]) for r in rows]),
            labels=np.zeros(len(rows), dtype=np.int64) if labels is None else labels,
            probabilities=np.array([[float(r[k]) for k in classes] for r in rows])
            if classes
            else None,
            lengths=numbers("length"),
            tokens=numbers("tokens", int),
            categories=tuple(r["category"] for r in rows) if "category" in first else None,
        )
    except (OSError, IndexError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a readable {PREDICTIONS_FILE} ({error!r})") from error
