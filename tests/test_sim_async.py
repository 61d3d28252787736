"""Asynchronous policies in the simulator: determinism, no idling, no stalls, exact merges."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeLearner, config, deterministic, simulate
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.config import AvailabilityConfig
from fedlora.profiles import ClientProfile
from fedlora.sim.availability import Availability

ASYNC = ["fedbuff", "fedasync", "fedfa"]
# The fake global's A is a float32 sum of weighted bumps ≤ 1: each merge rounds a few times
# (≤ ε₃₂ ≈ 1.2e-7 of the running value each, which stays O(1)), and A.mean() over 6 entries a few
# more; ≤ 6 merges here: ≲ 40·ε₃₂ ≈ 5e-6 of the result. A wrong job or weight is off by ≥ 1e-3.
FLOAT32_SUMS = 1e-5


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    num=st.integers(1, 8),
    policy=st.sampled_from(ASYNC),
    update=st.sampled_from(["model", "delta"]),
    data=st.data(),
)
def test_same_seed_same_event_log(
    seed: int, num: int, policy: str, update: str, data: st.DataObject
) -> None:
    concurrency = data.draw(st.integers(1, num))
    window = data.draw(st.integers(1, min(4, 3 * concurrency)))  # merges within 3 rounds
    cfg = config(
        clients={"num": num, "availability": {"failure_prob": 0.2}},
        server={
            "policy": policy,
            "update": update,
            "concurrency": concurrency,
            "window": window,
            "rounds": 3,
        },
    ).model_copy(update={"seed": seed})
    sizes = [3 + c for c in range(num)]
    first, first_events = simulate(cfg, FakeLearner(sizes))
    second_events = simulate(cfg, FakeLearner(sizes))[1]
    assert deterministic(first_events) == deterministic(second_events)
    times = [e["t"] for e in first_events]
    assert times == sorted(times)  # virtual time never runs backwards
    assert first.rounds == 3  # three rounds' worth of finished jobs, lost ones included
    assert first.accepted + first.lost + first.in_flight == len(
        [e for e in first_events if e["type"] == "dispatch"]
    )


def test_fedfa_steps_on_every_arrival_and_never_idles_a_finished_client() -> None:
    cfg = config(
        clients={"num": 4}, server={"policy": "fedfa", "concurrency": 4, "window": 3, "rounds": 5}
    )
    outcome, events = simulate(cfg, FakeLearner([3, 4, 5, 6]))
    arrivals = [i for i, e in enumerate(events) if e["type"] == "arrival"]
    for n, index in enumerate(arrivals):
        after = [e["type"] for e in events[index + 1 :]]
        if n >= 2:  # the window (K = 3) is full from the third arrival on
            assert after[0] == "merge"
        if n == len(arrivals) - 1:
            break  # the run stops at this merge: nobody is sent new work
        redispatch = events[index + 1 + after.index("dispatch")]
        assert redispatch["client"] == events[index]["client"]
        assert redispatch["t"] == events[index]["t"]  # back at work at the same instant
    assert outcome.steps == len(arrivals) - 2
    # the global is the mean of the 3 latest results, each A = its start + its own bump
    merges = [e for e in events if e["type"] == "merge"]
    assert all(len(m["jobs"]) == 3 for m in merges)


def test_fedfa_model_global_is_the_mean_of_the_window() -> None:
    cfg = config(
        clients={"num": 3, "speed": {"distribution": "constant", "value": 1.0}},
        server={"policy": "fedfa", "concurrency": 3, "window": 3, "rounds": 1},
    )
    outcome, events = simulate(cfg, FakeLearner([2, 2, 2]))
    losses = {e["job"]: e["loss"] for e in events if e["type"] == "arrival"}
    merge = next(e for e in events if e["type"] == "merge")
    expected = sum(losses[j] for j in merge["jobs"]) / 3  # every job started from A = 0
    assert outcome.global_state.lora["m"].A.mean().item() == pytest.approx(
        expected, rel=FLOAT32_SUMS
    )


def test_fedbuff_with_k_equal_c_equal_cohort_is_one_fedavg_round() -> None:
    # Equal start: every cohort member's job takes (almost) the same time, so the cohort's
    # results all arrive before any refilled slot's can.
    clients = {"num": 6, "speed": {"distribution": "constant"}, "seconds_per_token": 1e-9}
    shared = {"rounds": 1, "weights": "samples"}
    fedavg = config(clients=clients, server={"policy": "fedavg", "per_round": 3, **shared})
    fedbuff = config(
        clients=clients, server={"policy": "fedbuff", "concurrency": 3, "window": 3, **shared}
    )
    sizes = [2, 3, 4, 5, 6, 7]
    avg, avg_events = simulate(fedavg, FakeLearner(sizes))
    buff, buff_events = simulate(fedbuff, FakeLearner(sizes))
    merge = next(e for e in avg_events if e["type"] == "merge")
    assert merge == next(e for e in buff_events if e["type"] == "merge") | {"wall": merge["wall"]}
    assert avg.steps == buff.steps == 1
    for module, factors in avg.global_state.lora.items():
        assert torch.equal(factors.A, buff.global_state.lora[module].A)
        assert torch.equal(factors.B, buff.global_state.lora[module].B)
    assert torch.equal(avg.global_state.extra["h"], buff.global_state.extra["h"])


def test_fedasync_mixes_each_result_into_the_global() -> None:
    cfg = config(
        clients={"num": 2, "speed": {"distribution": "constant", "value": 1.0}},
        server={"policy": "fedasync", "concurrency": 2, "mixing": 0.5, "rounds": 2},
    )
    outcome, events = simulate(cfg, FakeLearner([2, 2]))
    value = 0.0  # x ← ½x + ½x_k, with x_k = (A it was sent) + its bump
    sent: dict[int, float] = {}
    for event in events:
        if event["type"] == "dispatch":
            sent[event["job"]] = value
        elif event["type"] == "arrival":
            assert event["staleness"] >= 0
            value = 0.5 * value + 0.5 * (sent[event["job"]] + event["loss"])
    assert outcome.global_state.lora["m"].A.mean().item() == pytest.approx(value, rel=FLOAT32_SUMS)


@pytest.mark.parametrize("policy", ["fedavg", *ASYNC])
def test_a_client_that_never_returns_stalls_no_policy(policy: str) -> None:
    cfg = config(
        clients={"num": 3},
        server={"policy": policy, "concurrency": 3, "per_round": 3, "window": 2, "rounds": 4,
                "job_timeout": 0.2},
    )  # fmt: skip
    profiles = [
        ClientProfile(0, 1.0, 100.0, 2),
        ClientProfile(1, 1.0, 100.0, 2),
        ClientProfile(2, 1e12, 100.0, 2),  # would take ages: the deadline declares it lost
    ]
    outcome, events = simulate(cfg, FakeLearner([3, 3, 3]), profiles=profiles)
    assert outcome.stop_reason == "4 rounds reached"
    lost = [e for e in events if e["type"] == "lost"]
    assert lost and all(e["client"] == 2 for e in lost)
    assert all("job_timeout 0.2s" in e["reason"] for e in lost)
    assert outcome.lost == len(lost) and outcome.steps > 0
    assert not any(e["type"] == "arrival" and e["client"] == 2 for e in events)


@pytest.mark.parametrize("policy", ["fedavg", *ASYNC])
def test_every_job_failing_ends_the_run_without_a_merge(policy: str) -> None:
    cfg = config(
        clients={"num": 3, "availability": {"failure_prob": 1.0}},
        server={"policy": policy, "concurrency": 2, "rounds": 3},
    )
    learner = FakeLearner([3, 3, 3])
    outcome, events = simulate(cfg, learner)
    assert outcome.stop_reason == "3 rounds reached" and outcome.steps == 0
    assert learner.trained == []  # a lost job is never trained
    assert {e["reason"] for e in events if e["type"] == "lost"} == {"client failed"}


def test_stale_results_beyond_the_bound_are_dropped_and_counted() -> None:
    cfg = config(
        clients={"num": 4},
        server={"policy": "fedasync", "concurrency": 4, "staleness_bound": 0, "rounds": 4},
    )
    outcome, events = simulate(cfg, FakeLearner([3, 3, 3, 3]))
    drops = [e for e in events if e["type"] == "drop"]
    arrivals = {e["job"]: e for e in events if e["type"] == "arrival"}
    assert drops and outcome.dropped == len(drops)
    assert all(arrivals[d["job"]]["staleness"] > 0 for d in drops)
    assert "exceeds staleness_bound 0" in drops[0]["reason"]
    merged = {j for e in events if e["type"] == "merge" for j in e["jobs"]}
    assert not merged & {d["job"] for d in drops}
    assert outcome.applied == len(merged) == outcome.accepted - outcome.dropped
    assert sum(outcome.staleness.values()) == outcome.accepted


def test_offline_stretches_are_seeded_and_independent_of_query_order() -> None:
    config_ = AvailabilityConfig(mean_online_s=10.0, mean_offline_s=30.0)
    one, two = Availability(config_, 2, seed=7), Availability(config_, 2, seed=7)
    points = [float(t) for t in range(0, 2000, 3)]
    forward = [one.online_throughout(1, t, t) for t in points]
    backward = [two.online_throughout(1, t, t) for t in reversed(points)][::-1]
    assert forward == backward
    assert 0.15 < sum(forward) / len(forward) < 0.35  # online a quarter of the time
    assert not one.online_throughout(1, 0.0, 2000.0)  # nobody stays online that long here
    always = Availability(AvailabilityConfig(), 1, seed=0)
    assert always.online_throughout(0, 0.0, 1e9) and always.failure(0, 0.0, 1e9) is None


def test_idle_time_is_the_time_without_a_job() -> None:
    cfg = config(
        clients={"num": 2, "speed": {"distribution": "uniform", "low": 1.0, "high": 5.0}},
        server={"policy": "fedavg", "rounds": 3},
    )
    outcome, events = simulate(cfg, FakeLearner([3, 3]))
    for client in (0, 1):
        busy = sum(
            e["duration"] for e in events if e["type"] == "dispatch" and e["client"] == client
        )
        assert outcome.busy_time[client] == pytest.approx(busy)
    assert min(outcome.busy_time.values()) < outcome.virtual_time  # the faster one waited
