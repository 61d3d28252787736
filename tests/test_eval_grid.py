"""eval.grid_seconds: every policy's global is evaluated at the same virtual times."""

from __future__ import annotations

import pytest
from fakes import FakeLearner, config, simulate

from fedlora.adapters import AdapterState
from fedlora.config import ConfigError

POLICIES = ["fedavg", "fedbuff", "fedfa", "semiasync", "fedasync"]
GRID = 0.125  # virtual seconds; a fake client's job takes about half a second


def eval_times(
    policy: str, grid: float = GRID, **server: object
) -> tuple[list[float], float, list[dict]]:
    cfg = config(
        clients={"num": 5},
        server={"policy": policy, "per_round": 3, "concurrency": 3, "window": 2, **server},
        eval={"grid_seconds": grid},
    )
    outcome, events = simulate(cfg, FakeLearner([3, 4, 5, 6, 7]))
    return [e["t"] for e in events if e["type"] == "eval"], outcome.virtual_time, events


@pytest.mark.slow
def test_every_policy_is_evaluated_at_the_same_times() -> None:
    # a time limit ends every run at the same moment, on a grid point
    found = {p: eval_times(p, rounds=1000, max_virtual_time=3.0)[0] for p in POLICIES}
    grid = [GRID * k for k in range(25)]
    assert all(times == grid for times in found.values()), found


@pytest.mark.parametrize("policy", POLICIES)
def test_the_grid_stops_at_the_end_of_the_run(policy: str) -> None:
    times, end, events = eval_times(policy, rounds=4)
    on_grid = [t for t in times if t % GRID == 0]
    assert len(on_grid) > 8 and on_grid == [GRID * k for k in range(len(on_grid))]
    assert on_grid[-1] <= end < on_grid[-1] + GRID  # none after the end, none missing before
    # off the grid only a final evaluation of a global that changed since the last grid point
    assert times[len(on_grid) :] in ([], [end])
    merges = [e["t"] for e in events if e["type"] == "merge"]
    assert (times[-1] == end) == (max(merges) > on_grid[-1])


def test_the_grid_replaces_the_evaluation_after_merges() -> None:
    # FedFa merges on every arrival; on a grid coarser than the run, only its start and its
    # end are evaluated
    times, end, events = eval_times("fedfa", grid=100.0, rounds=4)
    assert sum(e["type"] == "merge" for e in events) > 5 and times == [0.0, end]


def test_grid_and_every_seconds_together_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eval\.grid_seconds"):
        config(eval={"grid_seconds": 10.0, "every_seconds": 10.0})


class CountingLearner(FakeLearner):
    def __init__(self) -> None:
        super().__init__([3, 4, 5, 6, 7])
        self.scored = 0

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        self.scored += 1
        return super().evaluate(state)


def test_a_global_unchanged_since_the_last_grid_point_is_not_scored_again() -> None:
    """A synchronous round spans several grid points: each repeats the last score of the same
    global version, and the evaluator runs once per version."""
    cfg = config(
        clients={"num": 5}, server={"policy": "fedavg", "per_round": 3}, eval={"grid_seconds": GRID}
    )
    learner = CountingLearner()
    _, events = simulate(cfg, learner)
    evals = [e for e in events if e["type"] == "eval"]
    by_version: dict[int, list[dict]] = {}
    for e in evals:
        by_version.setdefault(e["version"], []).append(e["metrics"])
    assert len(evals) > 2 * len(by_version)  # most grid points fall inside a round
    assert learner.scored == len(by_version)
    assert all(all(m == scores[0] for m in scores) for scores in by_version.values())
