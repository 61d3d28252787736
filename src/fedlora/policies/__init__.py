"""Server policies, registered by name: ``available()`` lists what ``server.policy`` accepts."""

from fedlora.policies import fedasync as _fedasync  # noqa: F401  (registers "fedasync")
from fedlora.policies import fedavg as _fedavg  # noqa: F401  (registers "fedavg")
from fedlora.policies import fedbuff as _fedbuff  # noqa: F401  (registers "fedbuff")
from fedlora.policies import fedfa as _fedfa  # noqa: F401  (registers "fedfa")
from fedlora.policies import semiasync as _semiasync  # noqa: F401  (registers "semiasync")
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
    check_setup,
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
    "check_setup",
    "create",
]
