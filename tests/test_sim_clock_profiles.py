"""Virtual clock ordering and client profile draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.config import ClientsConfig, build_config
from fedlora.profiles import ClientProfile, draw_slowness
from fedlora.sim.clock import EventClock
from fedlora.sim.cost import job_seconds


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_clock_pops_in_finish_then_sequence_order(durations: list[float]) -> None:
    clock: EventClock[int] = EventClock()
    for i, d in enumerate(durations):
        clock.schedule(d, i)
    popped = [clock.pop() for _ in durations]
    assert popped == sorted(range(len(durations)), key=lambda i: (durations[i], i))


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=30))
def test_virtual_time_never_runs_backwards(durations: list[float]) -> None:
    clock: EventClock[int] = EventClock()
    seen = []
    for i, d in enumerate(durations):
        clock.schedule(d, i)
        if i % 3 == 2:  # interleave pops with new work, as a server does
            clock.pop()
            seen.append(clock.now)
    while len(clock):
        clock.pop()
        seen.append(clock.now)
    assert seen == sorted(seen)


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        EventClock().schedule(-1.0, 0)


def clients(speed: dict) -> ClientsConfig:
    return build_config({"clients": {"num": 400, "speed": speed}}).clients


@pytest.mark.parametrize(
    "speed",
    [
        {"distribution": "constant", "value": 2.0},
        {"distribution": "uniform", "low": 1.0, "high": 3.0},
        {"distribution": "normal", "mean": 5.0, "std": 1.0},
        {"distribution": "lognormal", "mean": 0.0, "sigma": 0.5},
        {"distribution": "pareto", "alpha": 1.0, "cap": 60},
        {"distribution": "zipf", "alpha": 2.0, "cap": 10},
    ],
)
def test_slowness_is_seeded_positive_and_capped(speed: dict) -> None:
    cfg = clients(speed)
    a, b = draw_slowness(cfg, seed=3), draw_slowness(cfg, seed=3)
    assert np.array_equal(a, b) and len(a) == 400 and (a > 0).all()
    if "cap" in speed:
        assert a.max() <= speed["cap"]
    if speed["distribution"] != "constant":
        assert not np.array_equal(a, draw_slowness(cfg, seed=4))


def test_pareto_is_heavy_tailed_with_minimum_one() -> None:
    s = draw_slowness(clients({"distribution": "pareto", "alpha": 1.0, "cap": 60}), seed=0)
    assert s.min() >= 1.0
    assert np.median(s) == pytest.approx(2.0, rel=0.25)  # Pareto(1): median 2
    assert (s == 60).any()  # the cap binds on a heavy tail


def test_job_seconds_is_compute_plus_transfer() -> None:
    profile = ClientProfile(client=0, slowness=3.0, bandwidth_mbps=8.0, rank=4)
    # 1000 tokens × 0.002 s × 3 = 6 s; (1e6 + 1e6) bytes × 8 bit / 8e6 bit/s = 2 s
    assert job_seconds(profile, 1000, 0.002, 1_000_000, 1_000_000) == pytest.approx(8.0)


def test_rank_tiers_are_dealt_by_share() -> None:
    from fedlora.profiles import draw_profiles

    cfg = build_config({"clients": {"num": 10, "ranks": {2: 0.25, 4: 0.25, 8: 0.25, 16: 0.25}}})
    ranks = [p.rank for p in draw_profiles(cfg.clients, 8, seed=0)]
    # 2.5 clients per tier: two each, and the two leftover go to the first tiers on a tie
    assert sorted(ranks) == [2, 2, 2, 4, 4, 4, 8, 8, 16, 16]
    assert ranks == [p.rank for p in draw_profiles(cfg.clients, 8, seed=0)]


def test_fastest_clients_get_the_largest_ranks() -> None:
    from fedlora.profiles import draw_profiles

    cfg = build_config(
        {"clients": {"num": 8, "ranks": {2: 0.5, 16: 0.5}, "rank_by": "speed",
                     "speed": {"distribution": "uniform", "low": 1, "high": 9}}}
    )  # fmt: skip
    profiles = draw_profiles(cfg.clients, 8, seed=1)
    fast = sorted(profiles, key=lambda p: p.slowness)
    assert [p.rank for p in fast] == [16] * 4 + [2] * 4


def test_rank_config_errors() -> None:
    from fedlora.config import ConfigError

    with pytest.raises(ConfigError, match=r"clients\.ranks: 2 ranks listed for 3 clients"):
        build_config({"clients": {"num": 3, "ranks": [2, 4]}})
    with pytest.raises(ConfigError, match=r"clients\.ranks: tier shares sum to 0\.9"):
        build_config({"clients": {"ranks": {2: 0.5, 4: 0.4}}})
    with pytest.raises(
        ConfigError, match=r"server\.global_rank: 4 is below the largest client rank 8"
    ):
        build_config({"clients": {"num": 2, "ranks": [8, 2]}, "server": {"global_rank": 4}})
    assert build_config({"clients": {"num": 2, "ranks": [8, 2]}}).global_rank == 8


def test_clock_advances_only_forward_and_never_past_a_pending_completion() -> None:
    clock: EventClock[str] = EventClock()
    clock.schedule(5.0, "a")
    clock.advance(3.0)
    assert clock.now == 3.0 and clock.next_finish == 5.0
    with pytest.raises(ValueError, match="cannot move the clock"):
        clock.advance(2.0)
    with pytest.raises(ValueError, match="cannot move the clock"):
        clock.advance(6.0)
    assert clock.pop() == "a" and clock.now == 5.0
