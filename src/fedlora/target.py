"""When a run reached its target, robustly: on loss, and on a running mean of noisy scores.

The first evaluation whose accuracy crosses a target is biased early when the evaluation set is
small (a lucky draw of noise counts), and more so for a policy evaluated more often. A loss is
smoother, and a running mean of the last few evaluations damps the noise. A metric whose name
ends in ``loss`` or ``perplexity`` is reached from above (lower is better), any other from below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "perplexity"))


def meets(metrics: Mapping[str, float], metric: str, value: float) -> bool:
    """Whether one evaluation's ``metric`` reached ``value`` (a missing metric never does)."""
    if metric not in metrics:
        return False
    score = metrics[metric]
    return score <= value if lower_is_better(metric) else score >= value


def first_reaching(
    series: Sequence[Mapping[str, float]], metric: str, value: float, smooth: int = 1
) -> int | None:
    """Index of the first evaluation whose mean of ``metric`` over the last ``smooth``
    evaluations (a full window) reaches ``value``; None if none does."""
    if smooth < 1:
        raise ValueError(f"smooth must be at least 1, got {smooth}")
    scores = [m.get(metric, math.nan) for m in series]
    for end in range(smooth - 1, len(scores)):
        mean = sum(scores[end - smooth + 1 : end + 1]) / smooth
        if meets({metric: mean}, metric, value):
            return end
    return None
