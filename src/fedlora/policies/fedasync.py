"""FedAsync (Xie et al., 2019): every result is mixed into the global as it arrives.

x ← (1 − α_t)·x + α_t·x_client with α_t = α·s(τ) (``server.mixing`` and ``server.staleness``);
with ``server.update: delta``, x ← x + α_t·η·(x_client − what that client was sent).
"""

from __future__ import annotations

from typing import ClassVar

from fedlora.policies.asynchronous import AsyncOptions, AsyncPolicy
from fedlora.policies.base import Arrival, Decision, PolicyOptions, registry


class FedAsyncOptions(AsyncOptions):
    mixing: float = 0.6  # α: how far one fresh result moves the global


@registry.register("fedasync")
class FedAsyncPolicy(AsyncPolicy):
    name = "fedasync"
    Options: ClassVar[type[PolicyOptions]] = FedAsyncOptions
    options: FedAsyncOptions

    def accept(self, arrival: Arrival, staleness: int) -> list[Decision]:
        result = [(arrival, staleness)]
        return [self.step_towards(result, release=[arrival.job], rate=self.options.mixing)]
