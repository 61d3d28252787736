"""The simulator's event logs, pinned: a refactor of the server core or the simulator must
reproduce these logs (wall times aside): exactly what is exact (event order, jobs, clients,
versions, times, counts), within a derived tolerance what floating point measures.
Regenerate only for an intended change of behaviour:
``FEDLORA_REGEN_GOLDEN=1 pytest tests/test_golden_event_logs.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeLearner, config, deterministic, simulate

GOLDEN = Path(__file__).parent / "golden"

# name -> (config sections, FakeLearner options)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fedavg-failures-timeout-rejects": (
        {
            "clients": {"num": 5, "availability": {"failure_prob": 0.3}},
            "server": {"per_round": 3, "rounds": 4, "job_timeout": 400.0},
        },
        {"poison": {1}},
    ),
    "fedbuff-hlora-delta-offline": (
        {
            "clients": {
                "num": 5,
                "availability": {"mean_online_s": 2000.0, "mean_offline_s": 300.0},
            },
            "server": {
                "staleness_unit": "merges",  # the unit these logs were pinned in
                "policy": "fedbuff",
                "aggregator": "hlora",
                "update": "delta",
                "server_lr": 0.5,
                "concurrency": 3,
                "window": 2,
                "rounds": 4,
            },
        },
        {},
    ),
    "fedfa-zeropad-polynomial-local": (
        {
            "clients": {"num": 4},
            "server": {
                "staleness_unit": "merges",
                "policy": "fedfa",
                "aggregator": "zeropad",
                "concurrency": 3,
                "window": 2,
                "rounds": 4,
                "staleness": {"function": "polynomial", "a": 0.5},
            },
            "eval": {"every": 2},
        },
        {"local": True},
    ),
    "fedasync-hetlora-bound": (
        {
            "clients": {"num": 4, "availability": {"failure_prob": 0.1}},
            "server": {
                "staleness_unit": "merges",
                "policy": "fedasync",
                "aggregator": "hetlora",
                "concurrency": 4,
                "staleness_bound": 1,
                "rounds": 3,
            },
            "eval": {"every_seconds": 200.0},
        },
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_event_log_matches_the_pinned_log(name: str) -> None:
    sections, options = CASES[name]
    learner = FakeLearner([3, 4, 5, 6, 7][: sections["clients"]["num"]], **options)
    events = deterministic(simulate(config(**sections), learner)[1])
    path = GOLDEN / f"{name}.jsonl"
    if os.environ.get("FEDLORA_REGEN_GOLDEN"):
        path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    pinned = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    logged = json.loads(json.dumps(events))
    assert [_exact(e) for e in logged] == [_exact(e) for e in pinned]
    logged_numbers, pinned_numbers = _measured(logged), _measured(pinned)
    assert logged_numbers.keys() == pinned_numbers.keys()
    assert logged_numbers == pytest.approx(pinned_numbers, rel=0, abs=MEASURED_TOLERANCE)


# What the fake adapters' tensors feed: scores of the global (the fake metric is the mean of
# A), the clients' scores and the merge diagnostics. They pass through float32 BLAS and
# LAPACK (QR, SVD, vectorised axpy with or without FMA), whose last bits differ between
# processors: each of the ~10 float32 operations per merge may be off by a few ε₃₂ ≈ 1.2e-7 on
# values of order 1, over at most 4 chained merges: 100·ε₃₂ ≈ 1e-5 bounds them with room.
# Virtual times, counts, ids, versions, weights and losses are Python arithmetic: exact.
MEASURED = ("metrics", "own", "dev", "diagnostics")
MEASURED_TOLERANCE = 1e-5


def _exact(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in MEASURED}


def _measured(events: list[dict[str, Any]]) -> dict[str, float]:
    """Every measured number, by event index and path."""
    flat: dict[str, float] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}")
        else:
            flat[path] = value

    for i, event in enumerate(events):
        for key in MEASURED:
            if key in event:
                walk(event[key], f"{i}.{key}")
    return flat
