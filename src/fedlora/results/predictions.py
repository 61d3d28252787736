"""The global model's per-example outputs in a run folder: ``predictions.csv``, one row per
example (a :class:`~fedlora.predictions.Predictions` row), keyed by example id.

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
from pathlib import Path

import numpy as np

from fedlora.predictions import Predictions, example_ids

PREDICTIONS_FILE = "predictions.csv"
STEP_PREDICTIONS = "predictions"  # folder of every global evaluation's predictions
STEP_FILE = re.compile(r"step_\d{6,}\.csv")  # a file in it: the global version evaluated


def write_predictions(path: Path, predictions: Predictions) -> None:
    """One CSV row per example; the columns its task has (``id`` and ``loss`` always)."""
    columns: dict[str, list[object]] = {"id": [int(i) for i in predictions.ids]}
    columns["label"] = [int(label) for label in predictions.labels]
    if predictions.probabilities is not None:
        columns["predicted"] = [int(p) for p in predictions.predicted]
        for c, probs in enumerate(predictions.probabilities.T):
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
            ids=example_ids(numbers("id", int), len(rows)),
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
