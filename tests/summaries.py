"""Whole run summaries for the tests of their readers, from the few entries a test is about."""

from __future__ import annotations

from typing import Any

from fedlora.results.run_summary import RunSummary

ROW = {"step": 3, "round": 3, "virtual_time_s": 30.0, "wall_time_s": 1.0}
HEADLINE: dict[str, Any] = {
    "name": "try1", "task": "mrpc", "labels": ["no", "yes"], "policy": "fedfa",
    "aggregator": "hlora", "clients": 4, "seed": 0, "stop_reason": "rounds done",
    "final": ROW | {"accuracy": 0.5}, "best": ROW | {"accuracy": 0.5}, "virtual_time_s": 30.0,
    "wall_time_s": 1.0, "server_steps": 3, "rounds": 3, "bytes_down": 10, "bytes_up": 10,
    "updates_accepted": 3, "updates_applied": 3, "updates_rejected": 0, "updates_dropped": 0,
    "jobs_lost": 0, "jobs_in_flight": 0,
    "staleness": {"unit": "updates", "histogram": {"0": 3}, "mean": 0.0, "max": 0},
    "client_idle_fraction": [0.5] * 4,
}  # fmt: skip


def a_summary(**entries: Any) -> RunSummary:
    """:data:`HEADLINE` with ``entries`` (summary.json's keys and layout) over it."""
    return RunSummary.model_validate(HEADLINE | entries)


def spread(mean: float) -> dict[str, float]:
    """A ``local`` score whose clients all had ``mean``."""
    return {"mean": mean, "std": 0.0, "min": mean, "max": mean}


def local(metric: str = "accuracy", **scores: Any) -> dict[str, Any]:
    """A ``local`` section with these scores (``own=spread(0.8)``...) and no clients."""
    return {"metric": metric, "evaluations": 4, **scores, "global_dev": 0.5, "clients": {}}


def reaching(seconds: float | None, **entries: Any) -> RunSummary:
    """A summary whose run first reached its target at ``seconds`` (None: never)."""
    crossing = {} if seconds is None else ROW | {"virtual_time_s": seconds}
    target = {"metric": "accuracy", "value": 0.8, "reached": seconds is not None, **crossing}
    return a_summary(target=target, **entries)
