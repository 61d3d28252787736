"""Time to target: losses reached from above, a running mean against the first noisy crossing."""

from __future__ import annotations

import pytest

from fedlora.data.tasks import generic_task
from fedlora.outcome import Evaluation, Outcome
from fedlora.results.summary import summarize
from fedlora.target import first_reaching, meets
from tests.fakes import FakeLearner, config, simulate


def test_meets_reads_losses_from_above_and_scores_from_below() -> None:
    assert meets({"loss": 0.5}, "loss", 0.5) and not meets({"loss": 0.51}, "loss", 0.5)
    assert meets({"accuracy": 0.8}, "accuracy", 0.8) and not meets(
        {"accuracy": 0.79}, "accuracy", 0.8
    )
    assert not meets({"loss": 0.1}, "accuracy", 0.0)  # a metric the evaluation lacks


def test_running_mean_ignores_a_lucky_evaluation() -> None:
    series = [{"accuracy": a} for a in (0.5, 0.9, 0.6, 0.7, 0.8)]
    assert first_reaching(series, "accuracy", 0.7) == 1  # the noisy first crossing
    # means of three: (0.5+0.9+0.6)/3 = 0.667, then (0.9+0.6+0.7)/3 = 0.733
    assert first_reaching(series, "accuracy", 0.7, smooth=3) == 3
    assert first_reaching(series, "accuracy", 0.95, smooth=3) is None
    assert first_reaching(series[:2], "accuracy", 0.5, smooth=3) is None  # no full window yet
    losses = [{"loss": v} for v in (1.0, 0.6, 0.5)]
    assert first_reaching(losses, "loss", 0.55) == 2
    with pytest.raises(ValueError, match="smooth must be at least 1"):
        first_reaching(series, "accuracy", 0.7, smooth=0)


def test_summary_reports_first_smoothed_and_loss_crossings() -> None:
    cfg = config(eval={"target": {"metric": "accuracy", "value": 0.7, "max_loss": 0.55}})
    scores = [(0.5, 1.0), (0.9, 0.6), (0.6, 0.5), (0.7, 0.5), (0.8, 0.4)]
    evaluations = [
        Evaluation(step=i, round=i, time=10.0 * i, wall=0.0, metrics={"accuracy": a, "loss": v})
        for i, (a, v) in enumerate(scores)
    ]
    outcome = Outcome(global_state=FakeLearner([1]).initial_state(), evaluations=evaluations)
    outcome.target = evaluations[1]  # what the engine records live: the first crossing
    target = summarize(cfg, outcome, generic_task("t", ("a", "b"), pair=False)).written()["target"]
    assert target["reached"] and target["virtual_time_s"] == 10.0
    assert target["smoothed"]["reached"] and target["smoothed"]["virtual_time_s"] == 30.0
    assert target["on_loss"]["reached"] and target["on_loss"]["virtual_time_s"] == 20.0
    assert target["smooth"] == 3 and target["max_loss"] == 0.55


def test_a_loss_target_stops_the_run() -> None:
    cfg = config(
        server={"rounds": 50}, eval={"target": {"metric": "loss", "value": 0.1, "stop": True}}
    )
    outcome, _ = simulate(cfg, FakeLearner([3, 3, 3, 3]))  # the fake's loss is always 0
    assert outcome.stop_reason == "target loss ≤ 0.1 reached" and outcome.steps == 0
