"""Each policy reads its own typed options, built from the flat ``server`` keys; a key the
chosen policy never reads, set away from its default, is refused with the key and the policy."""

from __future__ import annotations

import pytest

from fedlora import policies
from fedlora.config import ServerConfig
from fedlora.policies.base import SHARED_KEYS, ClientInfo, PolicyOptions, registry
from fedlora.policies.fedbuff import FedBuffOptions
from fedlora.policies.fedfa import FedFaOptions
from fedlora.policies.semiasync import SemiAsyncOptions


def options(name: str, window: int) -> PolicyOptions:
    clients = [ClientInfo(c, 5) for c in range(4)]
    config = ServerConfig(policy=name, concurrency=4, window=window)
    return policies.create(name, config, clients, 0).options


def test_window_means_each_policy_s_own_k() -> None:
    fedbuff, fedfa, semiasync = (options(name, 3) for name in ("fedbuff", "fedfa", "semiasync"))
    assert isinstance(fedbuff, FedBuffOptions) and fedbuff.buffer == 3
    assert isinstance(fedfa, FedFaOptions) and fedfa.window == 3
    assert isinstance(semiasync, SemiAsyncOptions) and semiasync.minimum == 3


def test_each_policy_reads_only_its_keys() -> None:
    read = {name: set(registry.get(name).Options.server_keys()) for name in policies.available()}
    every = {"weights", "update", "server_lr", "staleness", "staleness_unit"}
    asynchronous = every | {"concurrency", "staleness_bound"}
    assert read == {
        "fedavg": every | {"per_round"},
        "fedasync": asynchronous | {"mixing"},
        "fedbuff": asynchronous | {"window"},
        "fedfa": asynchronous | {"window"},
        "semiasync": asynchronous | {"window"},
    }


@pytest.mark.parametrize(
    ("policy", "key", "value", "readers"),
    [
        ("fedfa", "mixing", 0.3, "fedasync"),
        ("fedavg", "staleness_bound", 2, "fedasync, fedbuff, fedfa, semiasync"),
    ],
)
def test_an_unread_key_is_refused(policy: str, key: str, value: object, readers: str) -> None:
    server = ServerConfig(policy=policy, **{key: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^server\.{key}: policy {policy} does not read it"):
        policies.check_setup(server, 10)
    with pytest.raises(ValueError, match=rf"\(read by {readers}\)"):
        policies.check_setup(server, 10)


@pytest.mark.parametrize("policy", ["fedavg", "fedasync", "fedfa"])
def test_the_shared_shape_keys_pass_unread(policy: str) -> None:
    """A study's base sets per_round, concurrency and window once for arms of every policy."""
    assert SHARED_KEYS == ("per_round", "concurrency", "window")
    policies.check_setup(ServerConfig(policy=policy, per_round=4, concurrency=4, window=3), 10)


def test_an_unread_key_at_its_default_passes() -> None:
    policies.check_setup(ServerConfig(policy="fedfa", mixing=0.6), 10)
