"""compute_metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.metrics import compute_metrics


def test_binary_hand_case() -> None:
    # TP=1 (first), FP=1 (second), FN=1 (third), TN=1: precision = recall = 1/2.
    scores = compute_metrics(["accuracy", "f1"], np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert scores == {"accuracy": 0.5, "f1": 0.5}


def test_binary_f1_is_of_label_one() -> None:
    # TP=2, FP=1, FN=0: F1 = 4 / 5; label 0's F1 (2/3) must not enter.
    scores = compute_metrics(["f1"], np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0]))
    assert scores["f1"] == pytest.approx(0.8)


def test_f1_without_any_positive_is_zero() -> None:
    scores = compute_metrics(["accuracy", "f1"], np.zeros(4, dtype=np.int64), np.zeros(4))
    assert scores == {"accuracy": 1.0, "f1": 0.0}


def test_macro_f1_beyond_two_labels() -> None:
    # label 0: TP=1 FP=0 FN=1 -> 2/3; label 1: TP=1 FP=1 FN=0 -> 2/3; label 2: TP=1 -> 1.
    scores = compute_metrics(["accuracy", "f1"], np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]))
    assert scores["accuracy"] == 0.75
    assert scores["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_only_the_named_metrics_in_order() -> None:
    assert list(compute_metrics(["f1", "accuracy"], [1], [1])) == ["f1", "accuracy"]
    assert compute_metrics([], [1], [0]) == {}


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown metric 'mcc'"):
        compute_metrics(["accuracy", "mcc"], [1], [1])
    with pytest.raises(ValueError, match="equal-length"):
        compute_metrics(["accuracy"], [1, 0], [1])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(["accuracy"], [], [])
