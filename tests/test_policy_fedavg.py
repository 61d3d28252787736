"""The synchronous FedAvg policy as a pure state machine."""

from __future__ import annotations

import pytest

from fedlora import policies
from fedlora.config import ServerConfig
from fedlora.policies import Arrival, ClientInfo, Dispatch, Merge, Source


def make(per_round: int, sizes: list[int], seed: int = 0) -> policies.Policy:
    clients = [ClientInfo(c, n) for c, n in enumerate(sizes)]
    return policies.create("fedavg", ServerConfig(per_round=per_round), clients, seed)


def test_registry_lists_fedavg() -> None:
    assert "fedavg" in policies.available()


def test_round_waits_for_whole_cohort_then_merges_by_size() -> None:
    policy = make(per_round=2, sizes=[10, 30, 60])
    first = policy.start()
    assert all(isinstance(d, Dispatch) for d in first) and len(first) == 2
    cohort = [d.client for d in first if isinstance(d, Dispatch)]
    assert policy.on_arrival(Arrival(0, cohort[0], 0, 1.0)) == []
    decisions = policy.on_arrival(Arrival(1, cohort[1], 0, 2.0))
    merge = decisions[0]
    assert isinstance(merge, Merge) and policy.version == 1 and policy.rounds == 1
    sizes = {0: 10, 1: 30, 2: 60}
    total = sizes[cohort[0]] + sizes[cohort[1]]
    assert [t.weight for t in merge.terms] == pytest.approx([sizes[c] / total for c in cohort])
    assert all(t.source is Source.UPDATE for t in merge.terms)
    assert merge.release == (0, 1)
    assert [type(d) for d in decisions[1:]] == [Dispatch, Dispatch]


def test_lost_job_does_not_stall_the_round() -> None:
    policy = make(per_round=2, sizes=[5, 5])
    policy.start()
    assert policy.on_lost(0, 0) == []
    decisions = policy.on_arrival(Arrival(1, 1, 0, 1.0))
    merge = decisions[0]
    assert isinstance(merge, Merge) and [t.job for t in merge.terms] == [1]
    assert merge.terms[0].weight == 1.0


def test_round_with_every_job_lost_moves_on_without_a_merge() -> None:
    policy = make(per_round=1, sizes=[5, 5])
    policy.start()
    decisions = policy.on_lost(0, 0)
    assert policy.rounds == 1 and policy.version == 0
    assert [type(d) for d in decisions] == [Dispatch]


def test_cohorts_are_seeded() -> None:
    def cohorts(seed: int) -> list[list[int]]:
        policy = make(per_round=3, sizes=[1] * 10, seed=seed)
        out, job = [], 0
        decisions = policy.start()
        for _ in range(5):
            cohort = [d.client for d in decisions if isinstance(d, Dispatch)]
            out.append(cohort)
            decisions = []
            for client in cohort:
                decisions += policy.on_arrival(Arrival(job, client, policy.version, 0.0))
                job += 1
        return out

    assert cohorts(1) == cohorts(1)
    assert cohorts(1) != cohorts(2)


def test_delta_update_moves_the_global_by_the_mean_delta() -> None:
    clients = [ClientInfo(0, 10), ClientInfo(1, 30)]
    server = ServerConfig(update="delta", server_lr=0.5)
    policy = policies.create("fedavg", server, clients, 0)
    policy.start()
    policy.on_arrival(Arrival(0, 0, 0, 1.0))
    merge = policy.on_arrival(Arrival(1, 1, 0, 1.0))[0]
    assert isinstance(merge, Merge)
    assert [(t.source, t.job, t.weight) for t in merge.terms] == [
        (Source.GLOBAL, None, 1.0),
        (Source.UPDATE, 0, 0.125),
        (Source.SENT, 0, -0.125),
        (Source.UPDATE, 1, 0.375),
        (Source.SENT, 1, -0.375),
    ]


def test_server_lr_only_with_delta() -> None:
    from fedlora.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"server\.server_lr: applies to update: delta only"):
        build_config({"server": {"server_lr": 0.5}})
