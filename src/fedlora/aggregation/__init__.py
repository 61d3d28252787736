"""Aggregators, registered by name: ``available()`` lists what ``server.aggregator`` accepts."""

from fedlora.aggregation import fedavg as _fedavg  # noqa: F401  (fedavg, zeropad, hetlora, fedsa)
from fedlora.aggregation import flora as _flora  # noqa: F401  (flora)
from fedlora.aggregation import hlora as _hlora  # noqa: F401  (hlora, flexlora)
from fedlora.aggregation.base import (
    Aggregator,
    WeightedState,
    available,
    client_results,
    create,
)

__all__ = ["Aggregator", "WeightedState", "available", "client_results", "create"]
