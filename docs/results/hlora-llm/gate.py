"""The rank gate of the HLoRA study on a causal LM: does LoRA's rank matter here at all?

    python docs/results/hlora-llm/gate.py docs/results/hlora-llm/gate

Reads the cells that ``fedlora study configs/hlora-llm/gate.yaml --docs
docs/results/hlora-llm/gate`` keeps (``cells/instruct/r<rank>-lr<rate>/seed<k>``: centralized
LoRA, one arm per rank and learning rate) and splits the dev rows in two halves by a seeded
permutation of their ids. Each rank's learning rate is picked on the tuning half (seed 0, the
lowest token-weighted response loss); the ranks are then compared at their picked rates on
the reporting half, paired example by example over every seed both ran (the crossed bootstrap
of :mod:`fedlora.studies.paired`), so the pick does not flatter the comparison. Writes
``gate.md`` beside the cells.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedlora.predictions import Predictions
from fedlora.studies.kept import read_cell_predictions
from fedlora.studies.paired import paired_difference, weighted_losses

_ARM = re.compile(r"r(?P<rank>\d+)-lr(?P<lr>[0-9.e+-]+)")
_SPLIT_SEED = 2027  # the permutation that halves the dev rows: fixed before any cell ran


def halves(ids: npt.NDArray[np.int64]) -> tuple[set[int], set[int]]:
    """The tuning and the reporting half of the dev ids."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(np.sort(ids))
    middle = len(order) // 2
    return set(order[:middle].tolist()), set(order[middle:].tolist())


def half_losses(predictions: Predictions, half: set[int]) -> npt.NDArray[np.float64]:
    """Per-row losses on ``half`` whose plain mean is its token-weighted response loss."""
    return weighted_losses(predictions, np.isin(predictions.ids, list(half)))


def main(docs: Path) -> None:
    cells = docs / "cells" / "instruct"
    runs: dict[tuple[int, float], dict[int, Path]] = {}
    for folder in sorted(cells.glob("*/seed*")):
        match = _ARM.fullmatch(folder.parent.name)
        if match and (folder / "summary.json").is_file():
            key = (int(match["rank"]), float(match["lr"]))
            runs.setdefault(key, {})[int(folder.name.removeprefix("seed"))] = folder
    tune, report = halves(read_cell_predictions(next(iter(runs.values()))[0]).ids)
    lines = [
        "| rank | lr | tuning half, seed 0 | reporting half, seed 0 | change from the base"
        " model, all dev rows, seed 0 | seeds run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    picked: dict[int, tuple[float, float]] = {}
    for (rank, lr), seeds in sorted(runs.items()):
        predictions = read_cell_predictions(seeds[0])
        tuned = float(half_losses(predictions, tune).mean())
        if rank not in picked or tuned < picked[rank][1]:
            picked[rank] = (lr, tuned)
        change = json.loads((seeds[0] / "summary.json").read_text())["from_start"]["change"]
        interval = change["loss"]
        reported = float(half_losses(predictions, report).mean())
        lines.append(
            f"| {rank} | {lr:g} | {tuned:.4f} | {reported:.4f}"
            f" | {interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"
            f" | {len(seeds)} |"
        )
    low, high = min(picked), max(picked)
    low_runs, high_runs = runs[(low, picked[low][0])], runs[(high, picked[high][0])]
    common = sorted(set(low_runs) & set(high_runs))
    difference = paired_difference(
        [half_losses(read_cell_predictions(low_runs[s]), report) for s in common],
        [half_losses(read_cell_predictions(high_runs[s]), report) for s in common],
    )
    lines += [
        "",
        f"Picked on the tuning half ({len(tune)} dev rows): "
        + ", ".join(f"rank {r} at lr {picked[r][0]:g}" for r in sorted(picked))
        + ".",
        "",
        f"Rank {high} − rank {low} at their picked rates, token-weighted dev response loss on"
        f" the reporting half ({len(report)} rows), paired over seeds {common}: {difference}.",
    ]
    (docs / "gate.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
