"""The aggregator names ``server.aggregator`` accepts, known without importing torch.

Each name maps to the module that registers its class; :func:`fedlora.aggregation.create`
imports that module on first use, so ``fedlora list`` and config validation stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedlora.registry import Registry

if TYPE_CHECKING:
    from fedlora.aggregation.base import Aggregator

registry: Registry[Aggregator] = Registry(
    "server.aggregator",
    modules={
        "fedavg": "fedlora.aggregation.fedavg",
        "zeropad": "fedlora.aggregation.fedavg",
        "hetlora": "fedlora.aggregation.fedavg",
        "fedsa": "fedlora.aggregation.fedavg",
        "flora": "fedlora.aggregation.flora",
        "hlora": "fedlora.aggregation.hlora",
        "flexlora": "fedlora.aggregation.hlora",
    },
)


def available() -> list[str]:
    """The aggregator names (the values ``server.aggregator`` accepts)."""
    return registry.available()
