"""Paired differences between two arms, with a bootstrap interval for the crossed design.

Two arms run with the same seeds score the same eval examples, so their difference is taken
example by example within each seed: the example-to-example variance both arms share cancels,
which is what makes a one-point effect on 408 or 1,725 examples measurable at all.

Every seed scores the *same* examples: seeds and examples are crossed, not nested. An
example that is hard for one seed's model tends to be hard for every seed's, so the example
noise is shared across seeds and does not average away with more seeds. The interval is a
two-way percentile bootstrap (numpy's Generator): each replicate draws seeds with replacement
and *one* set of example indices, applied to every drawn seed. Resampling examples within each
seed independently (a nested bootstrap) would treat the shared example noise as if it averaged
out over seeds: at 8 seeds its 95 % interval covered the true effect only 74 % of the time in
simulation. With fewer than :data:`FEW_SEEDS` seeds a percentile interval over seeds says
little more than "every seed had the same sign", so the per-seed differences are shown beside
it instead of a verdict. The clients' own test splits are the exception: each seed's partition
draws them anew, so they are nested in the seeds (:func:`nested_difference`). So are the eval
examples of a study that scores a seeded subset of its eval split in each seed
(``data.max_eval_examples``); :func:`compare_runs` tells the designs apart by the examples' ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats

from fedlora.predictions import Predictions
from fedlora.results.errors import RunFolderError
from fedlora.results.readouts import FINAL, read_readout
from fedlora.results.run_summary import LocalClient, LocalSummary
from fedlora.studies.kept import read_cell_predictions, read_step_predictions
from fedlora.terciles import TERCILES, tercile_ids

_CHUNK = 256  # bootstrap draws materialised at once: bounds memory at seeds x examples x chunk


FEW_SEEDS = 5  # below this, the per-seed differences stand beside the interval, not a star


@dataclass(frozen=True)
class PairedDifference:
    """``arm`` minus ``reference``: the mean per-example difference over seeds, its interval,
    each seed's own difference, the bootstrap's two-sided p-value for "no difference", and
    ``real`` when the interval excludes 0 (one comparison alone: a table of many corrects
    for multiplicity with :func:`holm`)."""

    estimate: float
    low: float
    high: float
    per_seed: tuple[float, ...] = ()
    p_value: float = 1.0

    @property
    def real(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def few_seeds(self) -> bool:
        return len(self.per_seed) < FEW_SEEDS

    def __str__(self) -> str:
        return self.shown(self.real)

    def shown(self, significant: bool) -> str:
        """The interval, then a star when ``significant`` or, with few seeds, each seed's
        difference and how many were positive instead."""
        interval = f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"
        if not self.few_seeds:
            return interval + (" *" if significant else "")
        shown = ", ".join(f"{d:+.3f}" for d in self.per_seed)
        above = sum(d > 0 for d in self.per_seed)
        return f"{interval} (seeds {shown}: {above}/{len(self.per_seed)} > 0)"


def holm(differences: Sequence[PairedDifference], level: float = 0.05) -> list[bool]:
    """Which of ``differences`` are significant with the family-wise error rate held at
    ``level`` over all of them (Holm's step-down: the k-th smallest p-value of m is tested at
    level/(m−k+1), stopping at the first that fails)."""
    order = sorted(range(len(differences)), key=lambda i: differences[i].p_value)
    significant = [False] * len(differences)
    for rank, index in enumerate(order):
        if differences[index].p_value > level / (len(differences) - rank):
            break
        significant[index] = True
    return significant


def _seed_differences(
    reference: Sequence[npt.ArrayLike], arm: Sequence[npt.ArrayLike]
) -> list[np.ndarray]:
    """Each seed's per-unit differences, arm minus reference; the seeds must match."""
    if len(reference) != len(arm) or not reference:
        raise ValueError(f"paired: {len(reference)} reference seeds against {len(arm)} arm seeds")
    return [
        np.asarray(b, float) - np.asarray(a, float) for a, b in zip(reference, arm, strict=True)
    ]


def paired_difference(
    reference: Sequence[npt.ArrayLike],
    arm: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> PairedDifference:
    """``reference[s]`` and ``arm[s]`` are one per-example value (1/0 correct, or a loss) per
    eval example for seed ``s``; every seed must score the same examples in both arms."""
    diffs = _seed_differences(reference, arm)
    sizes = {len(d) for d in diffs}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"paired: seeds score different numbers of examples {sorted(sizes)}")
    matrix = np.stack(diffs)  # seeds x examples
    seeds, examples = matrix.shape
    per_seed = matrix.mean(axis=1)
    if seeds > 1:
        matrix = (
            matrix + (_expansion(seeds, confidence) - 1) * (per_seed - per_seed.mean())[:, None]
        )
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        chosen_seeds = rng.integers(0, seeds, size=(count, seeds, 1))
        chosen_examples = rng.integers(0, examples, size=(count, 1, examples))  # one set
        draws.append(matrix[chosen_seeds, chosen_examples].mean(axis=(1, 2)))
    return _from_replicates(per_seed, np.concatenate(draws), confidence, resamples)


def _from_replicates(
    per_seed: np.ndarray, replicates: np.ndarray, confidence: float, resamples: int
) -> PairedDifference:
    """The estimate (the mean of the seeds' differences) with the bootstrap's percentile
    interval and two-sided p-value."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    # the share of replicates on the far side of 0, both tails; never below 1/resamples
    beyond = min(float(np.mean(replicates <= 0)), float(np.mean(replicates >= 0)))
    return PairedDifference(
        float(per_seed.mean()),
        float(low),
        float(high),
        tuple(float(d) for d in per_seed),
        float(min(1.0, max(2 * beyond, 1 / resamples))),
    )


def nested_difference(
    reference: Sequence[npt.ArrayLike],
    arm: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> PairedDifference:
    """:func:`paired_difference` where the units are nested in the seeds, not crossed: the
    clients' own test splits, drawn anew by each seed's partition, or a seeded subset of the
    eval examples, drawn anew by each seed; seeds may score different numbers of them. A
    seed's mean then carries all of its units' noise, so the replicates resample the seeds'
    means alone (widened as there); resampling the units within each seed as well would count
    their noise twice (95 % intervals covered 97 % in simulation, and every time where the
    seeds differed by their units' noise alone; this way, 3 seeds of 500 rows that differ by
    the rows' noise alone: 0.943, 2 seeds 0.932). One seed: its units are resampled."""
    diffs = _seed_differences(reference, arm)
    if any(len(d) == 0 for d in diffs):
        raise ValueError("paired: a seed scores no units")
    per_seed = np.array([d.mean() for d in diffs])
    rng = np.random.default_rng(seed)
    if len(diffs) == 1:
        units = diffs[0]
        replicates = units[rng.integers(0, len(units), size=(resamples, len(units)))].mean(axis=1)
    else:
        seeds = len(per_seed)
        widened = per_seed + (_expansion(seeds, confidence) - 1) * (per_seed - per_seed.mean())
        replicates = widened[rng.integers(0, seeds, size=(resamples, seeds))].mean(axis=1)
    return _from_replicates(per_seed, replicates, confidence, resamples)


def _expansion(seeds: int, confidence: float) -> float:
    """How much the seeds' spread is widened before they are resampled: √(S/(S−1))·t/z.

    Resampling S seeds gives their mean a variance (S−1)/S of the unbiased one, and its
    percentiles are normal ones where a mean of S draws has Student's t with S−1 degrees of
    freedom; both undercover when seeds dominate the noise (8 seeds: 0.91 instead of 0.95 in
    simulation). This is Hesterberg's expanded percentile interval, applied to the seed level
    only: where examples dominate, the seeds' spread is small and widening it changes little.
    """
    tail = (1 + confidence) / 2
    return float(np.sqrt(seeds / (seeds - 1)) * stats.t.ppf(tail, seeds - 1) / stats.norm.ppf(tail))


def compare_runs(
    reference: Sequence[Path], arm: Sequence[Path], confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """Differences of ``arm`` against ``reference`` from their run folders' predictions, paired
    seed by seed (the folders in the same seed order) and example by example (the same ids,
    labels and response tokens, or a RunFolderError naming the arm's folder): the mean loss
    (an instruction task's weighted by response tokens, as its reported loss is) and a
    classifier's accuracy. Where the predictions carry context lengths, also within each
    length tercile of the eval split: a classifier's accuracy (``"accuracy, short"``, …), an
    instruction task's loss (``"loss, short"``, …)."""
    pairs = _read_pairs(reference, arm, read_cell_predictions)
    return _compare(pairs, confidence, by_tercile=True)


def compare_at_step(
    reference: Sequence[Path], arm: Sequence[Path], step: int, confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """As :func:`compare_runs`, but of the global models evaluated at ``step`` (the same
    version in both arms: under FedAvg, the same round) rather than the final ones, and on
    the whole eval split only (``"accuracy"`` and ``"loss"``)."""
    pairs = _read_pairs(reference, arm, lambda folder: read_step_predictions(folder, step))
    return _compare(pairs, confidence, by_tercile=False)


def compare_by_category(
    reference: Sequence[Path], arm: Sequence[Path], confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """:func:`compare_runs`'s loss difference within each category of an instruction task's
    eval examples (does a skew cost the global model some kinds of instruction more than
    others?), by category name; a category missing from a seed's examples is left out, and a
    task without categories gives none."""
    pairs = _read_pairs(reference, arm, read_cell_predictions)
    categories = [a.categories for a, _ in pairs]
    if any(c is None for c in categories):
        return {}
    names = sorted({name for of_seed in categories for name in of_seed or ()})
    masks = {name: [np.asarray(of_seed) == name for of_seed in categories] for name in names}
    crossed = _crossed(pairs)
    return {
        name: _difference(pairs, masks[name], weighted_losses, confidence, crossed)
        for name in names
        if all(mask.any() for mask in masks[name])
    }


def _read_pairs(
    reference: Sequence[Path], arm: Sequence[Path], read: Callable[[Path], Predictions]
) -> list[tuple[Predictions, Predictions]]:
    """Each seed's (reference, arm) predictions, or a RunFolderError naming the arm's folder
    where its eval examples are not the reference's."""
    pairs = [(read(a), read(b)) for a, b in zip(reference, arm, strict=True)]
    for (a, b), folder in zip(pairs, arm, strict=True):
        if not _same_examples(a, b):
            raise RunFolderError(f"{folder}: its eval examples differ from the reference's")
    return pairs


def _crossed(pairs: Sequence[tuple[Predictions, Predictions]]) -> bool:
    """Whether every seed scored the same eval examples (else each its own seeded subset)."""
    return all(np.array_equal(a.ids, pairs[0][0].ids) for a, _ in pairs)


def _compare(
    pairs: Sequence[tuple[Predictions, Predictions]], confidence: float, by_tercile: bool
) -> dict[str, PairedDifference]:
    """:func:`compare_runs` of predictions read."""
    classified = all(a.classified and b.classified for a, b in pairs)
    crossed = _crossed(pairs)
    everything = [np.ones(len(a.ids), dtype=bool) for a, _ in pairs]
    differences = {}
    if classified:
        differences["accuracy"] = _difference(pairs, everything, _correct, confidence, crossed)
    differences["loss"] = _difference(pairs, everything, weighted_losses, confidence, crossed)
    if not by_tercile or any(a.lengths is None or b.lengths is None for a, b in pairs):
        return differences
    ids = [tercile_ids(a.lengths) for a, _ in pairs]  # type: ignore[arg-type]
    for tercile, name in enumerate(TERCILES):
        masks = [of_seed == tercile for of_seed in ids]
        if all(mask.any() for mask in masks):
            values = _correct if classified else weighted_losses
            differences[f"{'accuracy' if classified else 'loss'}, {name}"] = _difference(
                pairs, masks, values, confidence, crossed
            )
    return differences


def _same_examples(a: Predictions, b: Predictions) -> bool:
    """Whether two runs' predictions are of the same examples (ids, labels, and where both
    carry them, lengths and response tokens)."""
    return (
        np.array_equal(a.ids, b.ids)
        and np.array_equal(a.labels, b.labels)
        and all(
            x is None or y is None or np.array_equal(x, y)
            for x, y in ((a.lengths, b.lengths), (a.tokens, b.tokens))
        )
    )


def _correct(predictions: Predictions, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    return predictions.correct[mask]


def weighted_losses(
    predictions: Predictions, mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Per-example losses whose plain mean is the loss as the run reports it: an instruction
    row's scaled by its share of the response tokens (w / mean w), a classifier's as they are."""
    losses = predictions.losses[mask]
    if predictions.tokens is None:
        return losses
    weights = predictions.tokens[mask].astype(np.float64)
    return losses * weights / weights.mean()


def _difference(
    pairs: Sequence[tuple[Predictions, Predictions]],
    masks: Sequence[npt.NDArray[np.bool_]],
    values: Callable[[Predictions, npt.NDArray[np.bool_]], npt.NDArray[np.float64]],
    confidence: float,
    crossed: bool,
) -> PairedDifference:
    """The difference of ``values`` over the examples each seed's mask selects: crossed
    (:func:`paired_difference`) where every seed scores the same examples, else nested in the
    seeds (:func:`nested_difference`; a tercile then holds a different number in each seed)."""
    difference = paired_difference if crossed else nested_difference
    return difference(
        [values(a, m) for (a, _), m in zip(pairs, masks, strict=True)],
        [values(b, m) for (_, b), m in zip(pairs, masks, strict=True)],
        confidence,
    )


def compare_local(
    reference: Sequence[LocalSummary],
    arm: Sequence[LocalSummary],
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """Differences of the clients' own models on their own test splits (``local``: the task's
    first metric, ``local loss`` where scored; a task whose metric is the loss has only
    ``local loss``), from two arms' summaries in the same seed order.

    Within a seed, client ``c`` of the arm is set against client ``c`` of the reference (the
    clients both evaluated). The arms give a client different examples, so this pairing
    removes no shared noise: the interval is about as wide as an unpaired one, and the
    estimate is the difference of the client means. Clients are nested in seeds (each seed's
    partition draws their splits anew, and seeds may score different clients), so the
    interval is :func:`nested_difference`'s.
    """
    pairs = [(a.clients, b.clients) for a, b in zip(reference, arm, strict=True)]
    per_seed = [(a, b, sorted(set(a) & set(b), key=int)) for a, b in pairs]

    def difference(key: str) -> PairedDifference:
        def scores(clients: Mapping[str, LocalClient], ids: list[str]) -> list[float]:
            values = [getattr(clients[c], key) for c in ids]
            if any(v is None for v in values):
                raise ValueError(f"a client's {key} is missing from its local section")
            return values

        return nested_difference(
            [scores(a, clients) for a, _, clients in per_seed],
            [scores(b, clients) for _, b, clients in per_seed],
            confidence,
        )

    if all(s.metric == "loss" for s in (*reference, *arm)):
        return {"local loss": difference("own")}  # a loss metric (an instruction task's): once
    differences = {"local": difference("own")}
    entries = [entry for a, b in pairs for entry in (*a.values(), *b.values())]
    if all(entry.own_loss is not None for entry in entries):
        differences["local loss"] = difference("own_loss")
    return differences


def compare_choices(
    reference: Sequence[Path], arm: Sequence[Path], confidence: float = 0.95
) -> dict[str, PairedDifference]:
    """The multiple-choice accuracy difference of the final models (``"mc accuracy"``), paired
    seed by seed and question by question, where every folder has a final readout that scored
    choices; empty otherwise."""
    readouts = [[read_readout(f, FINAL) for f in folders] for folders in (reference, arm)]
    before, after = (
        [r["choices"]["correct"] for r in side if r and r["choices"]] for side in readouts
    )
    if len(before) != len(reference) or len(after) != len(arm):
        return {}
    return {"mc accuracy": paired_difference(before, after, confidence)}
