"""Per-client view of the CLLoRA study's skewed cells: does a client's context score predict
how its own trained model does?

For every finished cell of a skewed arm, rebuilds the cell's partition from its stored config
(no training), takes each client's mean score over the examples it holds, and sets it against
the client's latest local evaluation in ``summary.json``. Prints a markdown table.

    FEDLORA_DATA=../shared/data/glue python docs/results/cllora/per_client.py [STUDY_RUNS]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedlora.client.model import load_tokenizer
from fedlora.data.describe import client_examples
from fedlora.data.federated import prepare_data
from fedlora.results.store import read_config, read_summary

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/studies/cllora")
ARMS = {
    "length-a0.1": "length",
    "quality-a0.1": "sentences",
    "degraded": None,
    "degraded-heavy": None,
}


def main() -> None:
    print(
        "| task | arm | seed | score | r(score, own acc) | r(score, dev acc)"
        " | own acc, low / high half | majority share of own split, low / high half |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in sorted(ROOT.glob("*/*/seed*")):
        task, arm, seed = cell.parts[-3], cell.parts[-2], cell.parts[-1]
        if arm not in ARMS or not (cell / "summary.json").is_file():
            continue
        config = read_config(cell)
        data = prepare_data(config, load_tokenizer(config.model))
        summary = read_summary(cell).local
        assert summary is not None, f"{cell}: no local section in its summary"
        local = summary.clients
        clients = sorted(int(c) for c in local)
        own = np.array([local[str(c)].own for c in clients], dtype=float)
        dev = np.array([local[str(c)].dev for c in clients], dtype=float)
        assert data.client_test is not None, f"{cell}: no local test splits"
        labels = data.train.labels.numpy()
        majority = np.array(
            [np.bincount(labels[data.client_test[c]]).max() / len(data.client_test[c])
             for c in clients]
        )  # fmt: skip
        score = ARMS[arm]
        if score is None:  # degraded: the split is by degradation, not by a score
            flags = np.array([c in data.degraded_clients for c in clients])
            print(
                f"| {task} | {arm} | {seed[4:]} | degraded? | — | — |"
                f" clean {own[~flags].mean():.3f} / degraded {own[flags].mean():.3f}"
                f" (dev {dev[~flags].mean():.3f} / {dev[flags].mean():.3f}) |"
                f" {majority[~flags].mean():.3f} / {majority[flags].mean():.3f} |"
            )
            continue
        held = client_examples(data)
        means = np.array([data.train.scores[score][held[c]].mean() for c in clients])
        order = np.argsort(means)
        low, high = order[: len(order) // 2], order[len(order) // 2 :]
        print(
            f"| {task} | {arm} | {seed[4:]} | {score} |"
            f" {np.corrcoef(means, own)[0, 1]:+.2f} | {np.corrcoef(means, dev)[0, 1]:+.2f} |"
            f" {own[low].mean():.3f} / {own[high].mean():.3f} |"
            f" {majority[low].mean():.3f} / {majority[high].mean():.3f} |"
        )


if __name__ == "__main__":
    main()
