"""Aggregators, registered by name: ``available()`` lists what ``server.aggregator`` accepts.

Importing this package does not import torch: ``available()`` answers from
:mod:`~fedlora.aggregation.catalog`, and ``Aggregator`` and ``create`` load the tensor code the
first time they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlora.aggregation.catalog import available, describe

if TYPE_CHECKING:
    from fedlora.aggregation.base import Aggregator, WeightedState, client_results, create

__all__ = ["Aggregator", "WeightedState", "available", "client_results", "create", "describe"]
_LAZY = ("Aggregator", "WeightedState", "client_results", "create")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fedlora.aggregation import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
