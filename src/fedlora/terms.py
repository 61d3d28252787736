"""The merge vocabulary that policies and aggregators share: what a merge term is made of.

A policy names the terms of a merge (which adapter, with what weight); an aggregator combines
them. Both import this module and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Source(Enum):
    """A merge term's role: where its adapter comes from."""

    UPDATE = "update"  # the adapter a job sent back
    SENT = "sent"  # the adapter that job was given at dispatch (for delta-based policies)
    GLOBAL = "global"  # the current global adapter


@dataclass(frozen=True)
class Term:
    source: Source
    weight: float
    job: int | None = None
