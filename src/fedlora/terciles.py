"""The final global model's accuracy (a classifier's) and loss per length tercile of the eval split.

Does a length skew hurt the global model on long texts or on short ones? The tercile edges are
the eval split's own 1/3 and 2/3 quantiles of the context length, so every arm of a study
slices the same examples the same way and a tercile can be compared pair by pair like the
whole split.

The learner cuts its per-tercile eval losses with the same edges (:func:`tercile_ids`) as the
results writer and the studies cut predictions: the slicing lives below ``client/`` and
``results/`` so that neither imports the other for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.predictions import Predictions

TERCILES = ("short", "middle", "long")


def tercile_ids(lengths: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """0, 1 or 2 per example: at most the 1/3 quantile, at most the 2/3 quantile, above."""
    values = np.asarray(lengths, dtype=np.float64)
    edges = np.quantile(values, [1 / 3, 2 / 3])
    return np.searchsorted(edges, values, side="left").astype(np.int64)


def length_terciles(predictions: Predictions) -> dict[str, dict[str, Any]]:
    """Per tercile with examples: their number, length range, accuracy (classification) and
    loss (:meth:`Predictions.loss`: per example, or per response token for an instruction task).

    Weighted by ``examples`` the terciles' accuracies and per-example losses average to the
    whole split's (token-weighted losses, weighted by the terciles' tokens).
    """
    if predictions.lengths is None:
        raise ValueError("length terciles: these predictions carry no context lengths")
    ids = tercile_ids(predictions.lengths)
    sliced: dict[str, dict[str, Any]] = {}
    for tercile, name in enumerate(TERCILES):
        mask = ids == tercile
        if mask.any():
            lengths = predictions.lengths[mask]
            sliced[name] = {
                "examples": int(mask.sum()),
                "lengths": [float(lengths.min()), float(lengths.max())],
            }
            if predictions.classified:
                sliced[name]["accuracy"] = float(predictions.correct[mask].mean())
            sliced[name]["loss"] = predictions.loss(mask)
    return sliced
