"""Paired differences between two arms, with a hierarchical bootstrap interval.

Two arms run with the same seeds score the same eval examples, so their difference is taken
example by example within each seed: the example-to-example variance both arms share cancels,
which is what makes a one-point effect on 408 or 1,725 examples measurable at all.

The interval is an explicit two-level percentile bootstrap built on numpy's Generator:
resample seeds, then examples within each drawn seed. ``scipy.stats.bootstrap(paired=True)``
resamples a single level only; it would either treat seeds as fixed (too narrow when the
seeds disagree) or ignore the example noise inside each seed (too narrow with few seeds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.results.predictions import PREDICTIONS_FILE, Predictions, read_predictions
from fedlora.results.slices import TERCILES, tercile_ids

_CHUNK = 256  # bootstrap draws materialised at once: bounds memory at seeds x examples x chunk


@dataclass(frozen=True)
class PairedDifference:
    """``arm`` minus ``reference``: the mean per-example difference over seeds, its interval,
    and ``real`` when the interval excludes 0."""

    estimate: float
    low: float
    high: float

    @property
    def real(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        flag = " *" if self.real else ""
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]{flag}"


def paired_difference(
    reference: Sequence[npt.ArrayLike],
    arm: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> PairedDifference:
    """``reference[s]`` and ``arm[s]`` are one per-example value (1/0 correct, or a loss) per
    eval example for seed ``s``; every seed must score the same examples in both arms."""
    if len(reference) != len(arm) or not reference:
        raise ValueError(f"paired: {len(reference)} reference seeds against {len(arm)} arm seeds")
    diffs = [
        np.asarray(b, float) - np.asarray(a, float) for a, b in zip(reference, arm, strict=True)
    ]
    sizes = {len(d) for d in diffs}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"paired: seeds score different numbers of examples {sorted(sizes)}")
    matrix = np.stack(diffs)  # seeds x examples
    seeds, examples = matrix.shape
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        chosen_seeds = rng.integers(0, seeds, size=(count, seeds, 1))
        chosen_examples = rng.integers(0, examples, size=(count, seeds, examples))
        draws.append(matrix[chosen_seeds, chosen_examples].mean(axis=2).mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(draws), [tail, 1 - tail])
    return PairedDifference(float(matrix.mean(axis=1).mean()), float(low), float(high))


def compare_runs(
    reference: Sequence[Path], arm: Sequence[Path], confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """Accuracy and mean-loss differences of ``arm`` against ``reference`` from their run
    folders' predictions, paired seed by seed (the folders in the same seed order); where the
    predictions carry context lengths, also the accuracy within each length tercile of the
    eval split (``"accuracy, short"``, ``"accuracy, middle"``, ``"accuracy, long"``; a
    tercile whose size differs between seeds, as seeded eval subsets may give, is left out)."""
    pairs = [(_predictions(a), _predictions(b)) for a, b in zip(reference, arm, strict=True)]
    for (a, b), folder in zip(pairs, arm, strict=True):
        same_lengths = (
            a.lengths is None or b.lengths is None or np.array_equal(a.lengths, b.lengths)
        )
        if not np.array_equal(a.labels, b.labels) or not same_lengths:
            raise ValueError(f"{folder}: its eval examples differ from the reference's")
    differences = {
        "accuracy": paired_difference(
            [a.correct for a, _ in pairs], [b.correct for _, b in pairs], confidence
        ),
        "loss": paired_difference(
            [a.losses for a, _ in pairs], [b.losses for _, b in pairs], confidence
        ),
    }
    if any(a.lengths is None or b.lengths is None for a, b in pairs):
        return differences
    ids = [tercile_ids(a.lengths) for a, _ in pairs]  # type: ignore[arg-type]
    for tercile, name in enumerate(TERCILES):
        masks = [of_seed == tercile for of_seed in ids]
        if len({int(m.sum()) for m in masks}) == 1 and masks[0].any():
            differences[f"accuracy, {name}"] = paired_difference(
                [a.correct[m] for (a, _), m in zip(pairs, masks, strict=True)],
                [b.correct[m] for (_, b), m in zip(pairs, masks, strict=True)],
                confidence,
            )
    return differences


def compare_local(
    reference: Sequence[Mapping[str, Any]],
    arm: Sequence[Mapping[str, Any]],
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """Differences of the clients' own models on their own test splits (``local``: the task's
    first metric, ``local loss`` where scored), from two arms' summaries in the same seed order.

    Within a seed, client ``c`` of the arm is set against client ``c`` of the reference (the
    clients both evaluated). The arms give a client different examples, so this pairing
    removes no shared noise: the interval is about as wide as an unpaired one, and the
    estimate is the difference of the client means.
    """
    pairs = [
        (a["local"]["clients"], b["local"]["clients"]) for a, b in zip(reference, arm, strict=True)
    ]
    per_seed = [(a, b, sorted(set(a) & set(b), key=int)) for a, b in pairs]

    def difference(key: str) -> PairedDifference:
        return paired_difference(
            [[a[c][key] for c in clients] for a, _, clients in per_seed],
            [[b[c][key] for c in clients] for _, b, clients in per_seed],
            confidence,
        )

    differences = {"local": difference("own")}
    if all("own_loss" in entry for a, b in pairs for entry in (*a.values(), *b.values())):
        differences["local loss"] = difference("own_loss")
    return differences


def _predictions(folder: Path) -> Predictions:
    return read_predictions(folder / PREDICTIONS_FILE)
