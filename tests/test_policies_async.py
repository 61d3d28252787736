"""FedBuff, FedAsync and FedFa as pure state machines, and the staleness functions."""

from __future__ import annotations

import pytest

from fedlora import policies
from fedlora.config import ConfigError, ServerConfig, StalenessConfig, build_config
from fedlora.policies import Arrival, ClientInfo, Dispatch, Drop, Merge, Source
from fedlora.policies.staleness import staleness_factor
from fedlora.preflight import check_setup


def make(name: str, sizes: list[int], seed: int = 0, **server: object) -> policies.Policy:
    clients = [ClientInfo(c, n) for c, n in enumerate(sizes)]
    return policies.create(name, ServerConfig(policy=name, **server), clients, seed)  # type: ignore[arg-type]


def test_registry_lists_the_asynchronous_policies() -> None:
    assert policies.available() == ["fedasync", "fedavg", "fedbuff", "fedfa", "semiasync"]


@pytest.mark.parametrize(
    ("function", "a", "b", "expected"),
    [
        ("constant", 0.5, 4, [1.0, 1.0, 1.0, 1.0]),
        # (τ + 1)^(-a): 1, 2^-0.5, 3^-0.5, 9^-0.5 = 1/3
        ("polynomial", 0.5, 4, [1.0, 0.5**0.5, 3**-0.5, 1 / 3]),
        # 1 for τ ≤ b = 4, then 1 / (a(τ − b) + 1) with a = 10: τ = 5 → 1/11, τ = 8 → 1/41
        ("hinge", 10, 4, [1.0, 1.0, 1.0, 1 / 41]),
    ],
)
def test_staleness_functions_on_hand_checked_values(
    function: str, a: float, b: float, expected: list[float]
) -> None:
    config = StalenessConfig(function=function, a=a, b=b)  # type: ignore[arg-type]
    got = [staleness_factor(tau, config) for tau in (0, 1, 2, 8)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert staleness_factor(5, StalenessConfig(function="hinge", a=10, b=4)) == 1 / 11
    with pytest.raises(ValueError, match="non-negative"):
        staleness_factor(-1, config)


def test_fedasync_mixes_each_arrival_at_alpha_times_s() -> None:
    policy = make(
        "fedasync", [5, 5, 5], concurrency=3, mixing=0.6, staleness={"function": "polynomial"}
    )
    assert [type(d) for d in policy.start()] == [Dispatch] * 3
    first = policy.on_arrival(Arrival(0, 1, 0, 1.0))
    merge = first[0]
    assert isinstance(merge, Merge) and merge.release == (0,)
    assert [(t.source, t.weight) for t in merge.terms] == [
        (Source.GLOBAL, pytest.approx(0.4)),
        (Source.UPDATE, pytest.approx(0.6)),
    ]
    assert first[1:] == [Dispatch(1)]  # the only idle client goes back to work at once
    # a result dispatched at version 0 arriving at version 1: τ = 1, α_t = 0.6 · 2^-0.5
    stale = policy.on_arrival(Arrival(1, 0, 0, 2.0))[0]
    assert isinstance(stale, Merge)
    alpha = 0.6 * 2**-0.5
    assert [t.weight for t in stale.terms] == pytest.approx([1 - alpha, alpha])


def test_fedasync_delta_moves_by_alpha_times_the_delta() -> None:
    policy = make("fedasync", [5, 5], concurrency=2, mixing=0.5, update="delta", server_lr=2.0)
    policy.start()
    merge = policy.on_arrival(Arrival(0, 0, 0, 1.0))[0]
    assert isinstance(merge, Merge)
    assert [(t.source, t.job, t.weight) for t in merge.terms] == [
        (Source.GLOBAL, None, 1.0),
        (Source.UPDATE, 0, 1.0),
        (Source.SENT, 0, -1.0),
    ]


def test_fedbuff_applies_the_buffer_every_k_arrivals() -> None:
    policy = make("fedbuff", [10, 30, 60, 100], concurrency=3, window=2, weights="samples")
    started = [d.client for d in policy.start() if isinstance(d, Dispatch)]
    assert len(started) == 3
    first = policy.on_arrival(Arrival(0, started[0], 0, 1.0))
    assert len(first) == 1 and isinstance(first[0], Dispatch)  # buffered, slot refilled
    second = policy.on_arrival(Arrival(1, started[1], 0, 2.0))
    merge = second[0]
    assert isinstance(merge, Merge) and merge.release == (0, 1) and policy.version == 1
    sizes = [10, 30, 60, 100]
    total = sizes[started[0]] + sizes[started[1]]
    assert [t.weight for t in merge.terms] == pytest.approx(
        [sizes[started[0]] / total, sizes[started[1]] / total]
    )
    assert isinstance(second[1], Dispatch)


def test_fedbuff_stale_results_shorten_the_step() -> None:
    policy = make(
        "fedbuff",
        [5, 5],
        concurrency=2,
        window=2,
        staleness={"function": "polynomial", "a": 1},
        staleness_unit="merges",
    )
    policy.start()
    policy.on_arrival(Arrival(0, 0, 0, 1.0))
    policy.version = 3  # the second result is three merges behind: s = 1/4
    merge = policy.on_arrival(Arrival(1, 1, 0, 2.0))[0]
    assert isinstance(merge, Merge)
    # weights 1 and 1/4 of a plain total of 2: the global keeps 1 − 5/8
    assert [(t.source, t.weight) for t in merge.terms] == [
        (Source.GLOBAL, pytest.approx(3 / 8)),
        (Source.UPDATE, pytest.approx(1 / 2)),
        (Source.UPDATE, pytest.approx(1 / 8)),
    ]


def test_fedfa_waits_for_the_window_then_merges_on_every_arrival() -> None:
    policy = make("fedfa", [5] * 4, concurrency=4, window=3)
    assert len(policy.start()) == 4
    for job in range(2):
        decisions = policy.on_arrival(Arrival(job, job, 0, float(job)))
        assert decisions == [Dispatch(job)]  # waiting, and the client is back at work at once
    for job in range(2, 8):
        client = job % 4
        decisions = policy.on_arrival(Arrival(job, client, 0, float(job)))
        merge = decisions[0]
        assert isinstance(merge, Merge) and policy.version == job - 1
        assert [t.job for t in merge.terms] == [job - 2, job - 1, job]  # the K latest
        assert [t.weight for t in merge.terms] == pytest.approx([1 / 3] * 3)  # uniform
        assert merge.release == (() if job == 2 else (job - 3,))  # the one leaving the window
        assert decisions[1:] == [Dispatch(client)]


def test_staleness_bound_drops_and_refills() -> None:
    policy = make("fedfa", [5, 5], concurrency=2, window=1, staleness_bound=1)
    policy.start()
    policy.on_arrival(Arrival(0, 0, 0, 1.0))
    policy.on_arrival(Arrival(1, 0, 1, 2.0))
    decisions = policy.on_arrival(Arrival(2, 1, 0, 3.0))  # dispatched at 0, global at 2
    assert decisions == [
        Drop(2, "staleness 2 exceeds staleness_bound 1"),
        Dispatch(1),
    ]
    assert policy.version == 2


@pytest.mark.parametrize("name", ["fedbuff", "fedasync", "fedfa"])
def test_lost_jobs_free_their_slot(name: str) -> None:
    policy = make(name, [5, 5, 5], concurrency=2)
    started = {d.client for d in policy.start() if isinstance(d, Dispatch)}
    decisions = policy.on_lost(0, min(started))
    assert len(decisions) == 1 and isinstance(decisions[0], Dispatch)
    assert decisions[0].client not in started - {min(started)}  # never a busy client


def test_asynchronous_slots_go_to_idle_clients_and_count_rounds() -> None:
    policy = make("fedasync", [5] * 6, concurrency=3)
    busy = {d.client for d in policy.start() if isinstance(d, Dispatch)}
    for job in range(9):
        client = sorted(busy)[job % 3]
        decisions = policy.on_arrival(Arrival(job, client, policy.version, float(job)))
        new = next(d.client for d in decisions if isinstance(d, Dispatch))
        assert new == client or new not in busy
        busy = (busy - {client}) | {new}
        assert len(busy) == 3
    assert policy.rounds == 3  # every `concurrency` finished jobs make a round


def test_concurrency_above_the_clients_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.concurrency: 10 clients training at once"):
        check_setup(
            build_config({"clients": {"num": 4}, "server": {"policy": "fedfa", "concurrency": 10}})
        )
    check_setup(build_config({"clients": {"num": 4}, "server": {"policy": "fedavg"}}))  # unread
