"""The logistic-regression learner that makes many policy comparisons cheap."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.client.fastlearner import WEIGHTS, FastLearner, FastTask
from fedlora.config import build_config
from fedlora.results.events import EventLog
from fedlora.sim.engine import build_simulation

CONFIG = build_config(
    {
        "clients": {"num": 8},
        "lora": {"r": 1},
        "train": {"local_steps": 5, "batch_size": 8, "lr": 0.5},
        "server": {"rounds": 6, "per_round": 4},
    }
)


def test_same_task_same_examples_and_every_client_its_own() -> None:
    a, b = FastLearner(CONFIG, FastTask()), FastLearner(CONFIG, FastTask())
    assert np.array_equal(a.x, b.x) and np.array_equal(a.dev_y, b.dev_y)
    assert [len(i) for i in a.indices] == [200] * 8
    assert np.array_equal(np.concatenate(a.indices), np.arange(1600))
    assert a.x.shape == (1600, 21) and np.all(a.x[:, -1] == 1.0)  # the bias column


def test_label_skew_spreads_the_share_of_positives() -> None:
    def shares(task: FastTask) -> np.ndarray:
        learner = FastLearner(CONFIG, task)
        return np.array([learner.y[i].mean() for i in learner.indices])

    iid, skewed = shares(FastTask()), shares(FastTask(skew=0.3))
    assert np.all(np.abs(iid - 0.5) < 0.15)
    assert skewed.std() > 3 * iid.std() and np.min(skewed) < 0.1 and np.max(skewed) > 0.9


def test_one_sgd_step_from_zero_is_the_hand_computed_gradient() -> None:
    learner = FastLearner(CONFIG, FastTask())
    batch = np.array([3, 5, 8])
    result = learner.train(learner.initial_state(), [batch], seed=0)
    x, y = learner.x[batch], learner.y[batch]
    # at w = 0 every sigmoid is 1/2: w₁ = −lr · Xᵀ(1/2 − y) / 3, and the loss is log 2
    expected = -0.5 * x.T @ (0.5 - y) / 3
    assert result.state.extra[WEIGHTS].numpy() == pytest.approx(expected, abs=1e-12)
    assert result.loss == pytest.approx(np.log(2)) and result.examples == 3 and result.steps == 1
    assert learner.tokens([batch, batch]) == 6 * 128


def test_fedavg_over_fast_clients_approaches_the_pooled_reference() -> None:
    learner = FastLearner(CONFIG, FastTask())
    sizes = [len(i) for i in learner.indices]
    outcome = build_simulation(CONFIG, learner, sizes, EventLog()).run()
    losses = [e.metrics["loss"] for e in outcome.evaluations]
    reference = learner.reference()
    assert outcome.rejected == 0 and losses[0] == pytest.approx(np.log(2))
    assert losses[-1] < losses[0] - 0.1 and losses[-1] > reference["loss"]
    assert reference["accuracy"] > 0.7
