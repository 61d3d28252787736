"""Plato's semi-asynchronous server, and staleness counted in absorbed client updates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora import policies
from fedlora.config import ConfigError, ServerConfig, build_config
from fedlora.policies import Arrival, ClientInfo, Decision, Dispatch, Merge, Policy, Source
from fedlora.preflight import check_setup
from tests.fakes import FakeLearner, config, simulate


def make(name: str, clients: int, **server: object) -> Policy:
    infos = [ClientInfo(c, 5) for c in range(clients)]
    return policies.create(name, ServerConfig(policy=name, **server), infos, 0)  # type: ignore[arg-type]


class Runtime:
    """Plays the runtime: numbers jobs, remembers their versions, feeds chosen results back."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.jobs: dict[int, tuple[int, int]] = {}  # in flight: job → (client, version)
        self.next_job = 0
        self.merges: list[Merge] = []
        self.staleness: list[int] = []  # per arrival, in the policy's unit
        self.apply(policy.start())

    def apply(self, decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            if isinstance(d, Dispatch):
                self.jobs[self.next_job] = (d.client, self.policy.version)
                self.next_job += 1
            elif isinstance(d, Merge):
                self.merges.append(d)
        return decisions

    def job_of(self, client: int) -> int:
        return next(j for j, (c, _) in self.jobs.items() if c == client)

    def arrive(self, client: int) -> list[Decision]:
        job = self.job_of(client)
        _, version = self.jobs.pop(job)
        self.staleness.append(self.policy.staleness_of(version))
        return self.apply(self.policy.on_arrival(Arrival(job, client, version, 0.0)))

    def lose(self, client: int) -> list[Decision]:
        job = self.job_of(client)
        self.jobs.pop(job)
        return self.apply(self.policy.on_lost(job, client))

    def training(self) -> list[int]:
        return sorted(c for c, _ in self.jobs.values())


def dispatched(decisions: list[Decision]) -> list[int]:
    return [d.client for d in decisions if isinstance(d, Dispatch)]


def test_registered_and_window_above_concurrency_names_the_key() -> None:
    assert "semiasync" in policies.available()
    with pytest.raises(ConfigError, match=r"server\.window: semiasync waits for 4 reports"):
        check_setup(
            build_config(
                {
                    "clients": {"num": 6},
                    "server": {"policy": "semiasync", "concurrency": 3, "window": 4},
                }
            )
        )


def test_reporters_wait_and_k_results_merge() -> None:
    run = Runtime(make("semiasync", 5, concurrency=3, window=2))
    first, second, third = run.training()
    assert run.arrive(first) == []  # one report: no merge, and its slot stays empty
    assert run.training() == [second, third]
    decisions = run.arrive(second)
    merge = decisions[0]
    assert isinstance(merge, Merge) and run.policy.version == 1
    assert [(t.job, t.weight) for t in merge.terms] == [(0, 0.5), (1, 0.5)]
    assert merge.release == (0, 1)
    refilled = dispatched(decisions[1:])
    assert len(refilled) == 2 and third not in refilled  # two slots back, never a busy client
    assert len(run.training()) == 3


@pytest.mark.parametrize(("unit", "bound"), [("merges", 1), ("updates", 2), ("updates", 3)])
def test_waits_for_a_client_beyond_the_staleness_bound(unit: str, bound: int) -> None:
    # 3 at work, K = 2; client `slow` keeps its version-0 job while two merges of 2 go by
    run = Runtime(
        make("semiasync", 6, concurrency=3, window=2, staleness_bound=bound, staleness_unit=unit)
    )
    slow = run.training()[-1]
    for _ in range(2):  # merge 1 leaves `slow` 1 merge (2 updates) behind: within every bound
        fast = [c for c in run.training() if c != slow]
        assert run.arrive(fast[0]) == []
        assert isinstance(run.arrive(fast[1])[0], Merge)
    assert run.policy.version == 2  # `slow` is now 2 merges (4 updates) behind: beyond the bound
    assert run.policy.waiting_for() == [slow]  # type: ignore[attr-defined]
    fast = [c for c in run.training() if c != slow]
    assert run.arrive(fast[0]) == [] and run.arrive(fast[1]) == []  # K in, still waiting
    decisions = run.arrive(slow)
    merge = decisions[0]
    assert isinstance(merge, Merge) and len(merge.release) == 3  # every report, the straggler too
    assert run.staleness[-1] == (2 if unit == "merges" else 4)
    assert len(dispatched(decisions)) == 3 and len(run.training()) == 3


def test_a_lost_straggler_releases_the_wait() -> None:
    run = Runtime(
        make("semiasync", 6, concurrency=3, window=2, staleness_bound=0, staleness_unit="merges")
    )
    slow = run.training()[-1]
    fast = [c for c in run.training() if c != slow]
    run.arrive(fast[0])
    assert isinstance(run.arrive(fast[1])[0], Merge)  # `slow` was 0 behind: no wait yet
    fast = [c for c in run.training() if c != slow]
    assert run.arrive(fast[0]) == [] and run.arrive(fast[1]) == []  # `slow` is 1 behind
    decisions = run.lose(slow)
    merge = decisions[0]
    assert isinstance(merge, Merge) and len(merge.release) == 2
    assert len(dispatched(decisions)) == 3  # two reporters' slots and the lost one
    assert len(run.training()) == 3


@settings(max_examples=60, deadline=None)
@given(
    bound=st.one_of(st.none(), st.integers(0, 6)),
    events=st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=60),
)
def test_never_waits_without_cause(bound: int | None, events: list[tuple[int, bool]]) -> None:
    """On any schedule of arrivals and losses: the slots stay full, someone is always
    training, and K or more reports are held only while a client beyond the bound trains."""
    policy = make("semiasync", 8, concurrency=4, window=3, staleness_bound=bound)
    run = Runtime(policy)
    held = 0
    for pick, lost in events:
        training = run.training()
        assert training, "nobody at work: the server would wait forever"
        client = training[pick % len(training)]
        decisions = run.lose(client) if lost else run.arrive(client)
        held = 0 if any(isinstance(d, Merge) for d in decisions) else held + (not lost)
        assert len(run.training()) + held == 4
        if held >= 3:
            assert policy.waiting_for()  # type: ignore[attr-defined]


def fedfa_and_fedbuff_staleness(order: list[int], unit: str) -> tuple[list[int], list[int]]:
    """The same arrival schedule (clients in ``order``; every client always at work, so each
    finished client gets the next job) under FedFa and under FedBuff, K = 2."""
    found = []
    for name in ("fedfa", "fedbuff"):
        run = Runtime(make(name, 4, concurrency=4, window=2, staleness_unit=unit))
        for client in order:
            run.arrive(client)
        found.append(run.staleness)
    return found[0], found[1]


def test_staleness_in_updates_matches_across_fedfa_and_fedbuff() -> None:
    # clients return in turn 0 1 2 3 0 1 ...: each job sees the other three results come in
    # (from the second lap on, once the first window has filled)
    order = [0, 1, 2, 3] * 4
    fedfa, fedbuff = fedfa_and_fedbuff_staleness(order, "updates")
    # FedFa absorbs those three at once; FedBuff's global absorbs them two by two, so its
    # results alternate between a buffer ahead (4) and a buffer behind (2): the same age on
    # average, exactly
    assert fedfa[6:] == [3] * 10 and fedbuff[6:] == [4, 2] * 5
    merges_fa, merges_fb = fedfa_and_fedbuff_staleness(order, "merges")
    assert merges_fa[6:] == [3] * 10 and merges_fb[6:] == [2, 1] * 5  # K = 2 times apart


@pytest.mark.parametrize("name", ["fedfa", "fedbuff"])
def test_s_of_tau_weighs_by_the_staleness_in_updates(name: str) -> None:
    """s(τ) reads the figure ``staleness_of`` reports (absorbed updates) under both policies:
    in every merge, each result's weight times (τ + 1) is the same (s = (τ + 1)^−1)."""
    policy = make(name, 4, concurrency=4, window=2, staleness={"function": "polynomial", "a": 1})
    run = Runtime(policy)
    tau: dict[int, int] = {}
    stale_merges = 0
    for client in [0, 1, 2, 3] * 4:
        job = run.job_of(client)
        decisions = run.arrive(client)
        tau[job] = run.staleness[-1]
        for merge in (d for d in decisions if isinstance(d, Merge)):
            updates = [t for t in merge.terms if t.source is Source.UPDATE]
            taus = [tau[t.job] for t in updates if t.job is not None]
            scaled = {round(t.weight * (age + 1), 12) for t, age in zip(updates, taus, strict=True)}
            assert len(scaled) == 1, (name, taus, [t.weight for t in updates])
            stale_merges += len(set(taus)) > 1
    assert stale_merges > 3  # the weights were put to the test


@settings(max_examples=60, deadline=None)
@given(order=st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_staleness_in_updates_differs_by_less_than_one_buffer(order: list[int]) -> None:
    """FedBuff's global lags by the results still in its buffer, so on any schedule a result's
    age in updates differs from FedFa's by less than K = 2; in merges FedFa's is about K times
    FedBuff's."""
    fedfa, fedbuff = fedfa_and_fedbuff_staleness(order, "updates")
    assert all(abs(a - b) < 2 for a, b in zip(fedfa, fedbuff, strict=True))


def test_semiasync_runs_in_the_simulator_and_logs_both_staleness_figures() -> None:
    cfg = config(
        clients={"num": 6},
        server={"policy": "semiasync", "concurrency": 4, "window": 2, "staleness_bound": 3},
    )
    outcome, events = simulate(cfg, FakeLearner([3] * 6))
    merges = [e for e in events if e["type"] == "merge"]
    assert merges and all(len(m["jobs"]) >= 2 for m in merges)
    arrivals = [e for e in events if e["type"] == "arrival"]
    assert all(a["staleness_merges"] == a["version"] - a["dispatched_version"] for a in arrivals)
    assert sum(outcome.staleness.values()) == outcome.accepted
    assert any(a["staleness"] > a["staleness_merges"] for a in arrivals)  # K = 2 per merge
