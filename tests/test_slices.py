"""Length terciles of the eval split: they cover it, and weighted by size add up to the whole."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.predictions import Predictions
from fedlora.results.predictions import read_predictions, write_predictions
from fedlora.terciles import TERCILES, length_terciles, tercile_ids


@settings(max_examples=60, deadline=None)
@given(
    examples=st.integers(1, 400),
    distinct=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_terciles_weighted_by_examples_add_up_to_the_whole(
    examples: int, distinct: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, distinct + 1, examples).astype(float)  # ties when few distinct
    logits = rng.normal(size=(examples, 2))
    predictions = Predictions.from_logits(logits, rng.integers(0, 2, examples), lengths)
    sliced = length_terciles(predictions)
    assert set(sliced) <= set(TERCILES)
    assert sum(t["examples"] for t in sliced.values()) == examples
    for metric, whole in (("accuracy", predictions.correct), ("loss", predictions.losses)):
        weighted = sum(t["examples"] * t[metric] for t in sliced.values()) / examples
        assert weighted == pytest.approx(whole.mean(), rel=1e-12, abs=1e-12)
    ranges = [sliced[name]["lengths"] for name in TERCILES if name in sliced]
    assert all(low[1] < high[0] for low, high in itertools.pairwise(ranges))


def test_distinct_lengths_make_equal_terciles_in_order() -> None:
    ids = tercile_ids(np.arange(9, 0, -1))  # 9 … 1
    assert ids.tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_one_tercile_exactly() -> None:
    logits = np.array([[1.0, 0.0]] * 6)  # always predicts 0
    labels = np.array([0, 0, 1, 1, 0, 1])
    lengths = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    sliced = length_terciles(Predictions.from_logits(logits, labels, lengths))
    assert {name: t["accuracy"] for name, t in sliced.items()} == {
        "short": 1.0,
        "middle": 0.0,
        "long": 0.5,
    }
    assert sliced["long"]["lengths"] == [5.0, 6.0]


def test_lengths_round_trip_and_old_files_read_without_them(tmp_path: Path) -> None:
    logits, labels = np.array([[0.2, 0.1], [0.0, 3.0]]), np.array([0, 1])
    with_lengths = Predictions.from_logits(logits, labels, np.array([12.0, 40.0]))
    write_predictions(tmp_path / "a.csv", with_lengths)
    assert read_predictions(tmp_path / "a.csv").lengths.tolist() == [12.0, 40.0]  # type: ignore[union-attr]
    write_predictions(tmp_path / "b.csv", Predictions.from_logits(logits, labels))
    old = read_predictions(tmp_path / "b.csv")
    assert old.lengths is None
    with pytest.raises(ValueError, match="no context lengths"):
        length_terciles(old)
