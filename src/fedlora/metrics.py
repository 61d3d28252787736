"""Scores of predicted label ids against true ones, as GLUE reports them (numpy, no sklearn),
and an instruction task's response loss and perplexity, overall and per slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

Metric = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], float]


def compute_metrics(
    names: Sequence[str], predictions: npt.ArrayLike, labels: npt.ArrayLike
) -> dict[str, float]:
    """Each named metric of predicted label ids (argmax of the logits) against the true ids."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; available: {', '.join(METRICS)}")
    predicted = np.asarray(predictions, dtype=np.int64)
    true = np.asarray(labels, dtype=np.int64)
    if predicted.ndim != 1 or predicted.shape != true.shape:
        raise ValueError(
            f"predictions {predicted.shape} and labels {true.shape} must be equal-length 1-D arrays"
        )
    if len(true) == 0:
        raise ValueError("no examples to score")
    return {name: METRICS[name](predicted, true) for name in names}


def accuracy(predicted: npt.NDArray[np.int64], true: npt.NDArray[np.int64]) -> float:
    return float(np.mean(predicted == true))


def f1(predicted: npt.NDArray[np.int64], true: npt.NDArray[np.int64]) -> float:
    """F1 of label 1 when only labels 0 and 1 occur (GLUE's MRPC/QQP F1), else macro-F1.

    Macro-F1 averages over the labels that occur in either array.
    """
    present = np.union1d(predicted, true)
    if np.isin(present, (0, 1)).all():
        return _label_f1(predicted, true, 1)
    return float(np.mean([_label_f1(predicted, true, label) for label in present]))


def _label_f1(predicted: npt.NDArray[np.int64], true: npt.NDArray[np.int64], label: int) -> float:
    """2TP / (2TP + FP + FN): 0.0, not NaN, when the label is neither predicted nor true."""
    hits = predicted == label
    wanted = true == label
    denominator = int(hits.sum() + wanted.sum())
    return 2 * int((hits & wanted).sum()) / denominator if denominator else 0.0


METRICS: dict[str, Metric] = {"accuracy": accuracy, "f1": f1}


def response_metrics(
    loss_sums: npt.ArrayLike, tokens: npt.ArrayLike, slices: Mapping[str, npt.ArrayLike]
) -> dict[str, float]:
    """Token-weighted response loss (mean cross-entropy per response token) and perplexity
    (its exp) over all examples, and the loss within each named slice (a boolean mask; a
    slice without examples is left out) as ``"<slice>.loss"``."""
    sums = np.asarray(loss_sums, dtype=np.float64)
    counts = np.asarray(tokens, dtype=np.int64)
    if len(counts) == 0 or counts.sum() == 0:
        raise ValueError("no response tokens to score")
    loss = float(sums.sum() / counts.sum())
    scores = {"loss": loss, "perplexity": float(np.exp(loss))}
    for name, selected in slices.items():
        mask = np.asarray(selected, dtype=bool)
        if mask.any():
            scores[f"{name}.loss"] = float(sums[mask].sum() / counts[mask].sum())
    return scores
