"""Server policies, registered by name: ``available()`` lists what ``server.policy`` accepts."""

from fedlora.policies import fedavg as _fedavg  # noqa: F401  (registers "fedavg")
from fedlora.policies.base import (
    Arrival,
    ClientInfo,
    Decision,
    Dispatch,
    Drop,
    Merge,
    Policy,
    Source,
    Term,
    available,
    create,
)

__all__ = [
    "Arrival",
    "ClientInfo",
    "Decision",
    "Dispatch",
    "Drop",
    "Merge",
    "Policy",
    "Source",
    "Term",
    "available",
    "create",
]
