"""Per-example outputs of the final global model (``predictions.csv``).

Per-example rows let two arms be compared on the same examples (a paired difference is far
less noisy than two separate accuracies) and let any slice of the eval split be scored later.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

PREDICTIONS_FILE = "predictions.csv"


@dataclass(frozen=True)
class Predictions:
    """One row per eval example, in eval-split order."""

    labels: npt.NDArray[np.int64]
    probabilities: npt.NDArray[np.float64]  # examples x classes
    losses: npt.NDArray[np.float64]  # per-example cross-entropy
    lengths: npt.NDArray[np.float64] | None = None  # context length score, to slice by length

    @classmethod
    def from_logits(
        cls, logits: np.ndarray, labels: np.ndarray, lengths: np.ndarray | None = None
    ) -> Predictions:
        log_p = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
        labels = np.asarray(labels, dtype=np.int64)
        losses = -log_p[np.arange(len(labels)), labels]
        kept = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        return cls(labels=labels, probabilities=np.exp(log_p), losses=losses, lengths=kept)

    @property
    def predicted(self) -> npt.NDArray[np.int64]:
        return self.probabilities.argmax(axis=1).astype(np.int64)

    @property
    def correct(self) -> npt.NDArray[np.float64]:
        return (self.predicted == self.labels).astype(np.float64)


def write_predictions(path: Path, predictions: Predictions) -> None:
    classes = predictions.probabilities.shape[1]
    lengths = predictions.lengths
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["index", "label", "predicted", *(f"p_{c}" for c in range(classes)), "loss"]
            + ([] if lengths is None else ["length"])
        )
        for i, (label, predicted, probs, loss) in enumerate(
            zip(
                predictions.labels,
                predictions.predicted,
                predictions.probabilities,
                predictions.losses,
                strict=True,
            )
        ):
            writer.writerow(
                [i, int(label), int(predicted), *map(repr, probs.tolist()), repr(float(loss))]
                + ([] if lengths is None else [repr(float(lengths[i]))])
            )


def read_predictions(path: Path) -> Predictions:
    """The rows of ``path``; a missing column or a non-number names the file. Files written
    before the ``length`` column existed read with ``lengths`` None."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        classes = sorted((k for k in rows[0] if k.startswith("p_")), key=lambda k: int(k[2:]))
        return Predictions(
            labels=np.array([int(r["label"]) for r in rows], dtype=np.int64),
            probabilities=np.array([[float(r[k]) for k in classes] for r in rows]),
            losses=np.array([float(r["loss"]) for r in rows]),
            lengths=np.array([float(r["length"]) for r in rows]) if "length" in rows[0] else None,
        )
    except (OSError, IndexError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a readable {PREDICTIONS_FILE} ({error!r})") from error
