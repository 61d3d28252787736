"""The simulator's cost model: the virtual seconds a job takes a client of a given profile."""

from __future__ import annotations

from fedlora.profiles import ClientProfile


def job_seconds(
    profile: ClientProfile, tokens: int, seconds_per_token: float, bytes_down: int, bytes_up: int
) -> float:
    """Virtual duration: compute (tokens × s/token × slowness) plus adapter transfer both ways."""
    compute = tokens * seconds_per_token * profile.slowness
    transfer = (bytes_down + bytes_up) * 8 / (profile.bandwidth_mbps * 1e6)
    return compute + transfer
