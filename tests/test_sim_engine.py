"""The simulator with a fake learner: event order, determinism, stopping, bad updates."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeLearner, config, deterministic, simulate
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora import policies
from fedlora.policies import Arrival, Decision, Dispatch, Policy, Source, Term

# The fake global's A is a float32 sum of weighted bumps ≤ 1: each merge rounds a few times
# (≤ ε₃₂ ≈ 1.2e-7 of the running value each, which stays O(1)), and A.mean() over 6 entries a few
# more; ≤ 6 merges here: ≲ 40·ε₃₂ ≈ 5e-6 of the result. A wrong job or weight is off by ≥ 1e-3.
FLOAT32_SUMS = 1e-5


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), num=st.integers(1, 8), data=st.data())
def test_same_seed_same_event_log(seed: int, num: int, data: st.DataObject) -> None:
    per_round = data.draw(st.integers(1, num))
    cfg = config(clients={"num": num}, server={"per_round": per_round, "rounds": 3})
    cfg = cfg.model_copy(update={"seed": seed})
    sizes = [3 + c for c in range(num)]
    first = deterministic(simulate(cfg, FakeLearner(sizes))[1])
    second = deterministic(simulate(cfg, FakeLearner(sizes))[1])
    assert first == second
    times = [e["t"] for e in first]
    assert times == sorted(times)  # virtual time never runs backwards in the log


def test_event_log_tells_the_whole_story() -> None:
    outcome, events = simulate(
        config(server={"per_round": 2, "rounds": 2}), FakeLearner([3, 4, 5, 6])
    )
    kinds = [e["type"] for e in events]
    assert kinds == ["eval", "dispatch", "dispatch", "arrival", "arrival", "merge", "eval",
                     "dispatch", "dispatch", "arrival", "arrival", "merge", "eval"]  # fmt: skip
    assert outcome.steps == 2 and outcome.rounds == 2 and outcome.stop_reason == "2 rounds reached"
    arrivals = [e for e in events if e["type"] == "arrival"]
    dispatches = {e["job"]: e for e in events if e["type"] == "dispatch"}
    for a in arrivals:  # each job arrives exactly its dispatched duration later
        assert a["t"] == pytest.approx(dispatches[a["job"]]["t"] + dispatches[a["job"]]["duration"])
    assert outcome.bytes_down == sum(e["bytes"] for e in dispatches.values())
    assert outcome.bytes_up == sum(e["bytes"] for e in arrivals)
    assert outcome.virtual_time == events[-1]["t"]


def test_merge_is_the_size_weighted_mean_of_the_cohort() -> None:
    learner = FakeLearner([2, 6])
    outcome, events = simulate(config(clients={"num": 2}, server={"rounds": 1}), learner)
    merge = next(e for e in events if e["type"] == "merge")
    assert merge["weights"] == [0.25, 0.75] or merge["weights"] == [0.75, 0.25]
    arrivals = {e["job"]: e["loss"] for e in events if e["type"] == "arrival"}
    expected = sum(w * arrivals[j] for j, w in zip(merge["jobs"], merge["weights"], strict=True))
    assert outcome.global_state.lora["m"].A.mean().item() == pytest.approx(
        expected, rel=FLOAT32_SUMS
    )


def test_nan_update_is_rejected_counted_and_never_merged() -> None:
    learner = FakeLearner([3, 3, 3], poison={1})
    outcome, events = simulate(config(clients={"num": 3}, server={"rounds": 2}), learner)
    rejects = [e for e in events if e["type"] == "reject"]
    assert len(rejects) == 2 and all(e["client"] == 1 for e in rejects)
    assert "NaN" in rejects[0]["reason"]
    assert outcome.rejected == 2 and outcome.accepted == 4 and outcome.rounds == 2
    assert torch.isfinite(outcome.global_state.lora["m"].A).all()
    for merge in (e for e in events if e["type"] == "merge"):
        assert len(merge["jobs"]) == 2


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ({"rounds": 50, "max_steps": 3}, "3 server steps reached"),
        ({"rounds": 50, "max_virtual_time": 5.0}, "virtual time 5s reached"),
    ],
)
def test_stop_conditions(server: dict, reason: str) -> None:
    outcome, events = simulate(config(server=server), FakeLearner([3, 3, 3, 3]))
    assert outcome.stop_reason == reason
    if "max_virtual_time" in server:
        assert outcome.virtual_time == 5.0 and all(e["t"] <= 5.0 for e in events)
        assert outcome.in_flight > 0
    assert outcome.evaluations[-1].step == outcome.steps  # the final model is always evaluated


def test_stop_at_target() -> None:
    cfg = config(
        server={"rounds": 50}, eval={"target": {"metric": "accuracy", "value": 0.5, "stop": True}}
    )
    outcome, _ = simulate(cfg, FakeLearner([3, 3, 3, 3]))
    assert outcome.target is not None and outcome.target.metrics["accuracy"] >= 0.5
    assert outcome.stop_reason == "target accuracy ≥ 0.5 reached"
    assert outcome.rounds < 50


def test_eval_schedule() -> None:
    outcome, _ = simulate(
        config(server={"rounds": 5, "per_round": 1}, eval={"every": 2}), FakeLearner([3] * 4)
    )
    assert [e.step for e in outcome.evaluations] == [0, 2, 4, 5]


class MixingPolicy(Policy):
    """An asynchronous policy written in a test: every arrival mixes into the global at 1/2,
    as delta x + ½(update − sent); proves async policies need no engine changes."""

    name = "test-mixing"

    def start(self) -> list[Decision]:
        return [Dispatch(c.client) for c in self.clients]

    def on_arrival(self, arrival: Arrival) -> list[Decision]:
        self.rounds += 1
        terms = [
            Term(Source.GLOBAL, 1.0),
            Term(Source.UPDATE, 0.5, arrival.job),
            Term(Source.SENT, -0.5, arrival.job),
        ]
        return [self.merge(terms, release=[arrival.job]), Dispatch(arrival.client)]

    def on_lost(self, job: int, client: int) -> list[Decision]:
        return [Dispatch(client)]


def test_an_async_policy_plugs_in_unchanged() -> None:
    cfg = config(server={"rounds": 6})
    learner = FakeLearner([3, 3, 3, 3])
    clients = [policies.ClientInfo(c, 3) for c in range(4)]
    outcome, events = simulate(cfg, learner, MixingPolicy(cfg.server, clients, 0))
    assert outcome.steps == 6
    merges = [e for e in events if e["type"] == "merge"]
    assert [m["version"] for m in merges] == list(range(1, 7))
    arrivals = [e for e in events if e["type"] == "arrival"]
    # each arrival moves the global by half of that job's own bump (update − sent)
    assert outcome.global_state.lora["m"].A.mean().item() == pytest.approx(
        0.5 * sum(a["loss"] for a in arrivals), rel=FLOAT32_SUMS
    )
    assert any(a["staleness"] > 0 for a in arrivals)
