"""The policy contract: *when* the server merges and *whom* it sends work to.

A policy is a sans-IO state machine (in the style of h11): it never touches tensors, files or
clocks. The runtime tells it what happened (a job's result arrived, a job was lost) and it
answers with decisions. The runtime carries them out: it owns the adapters, the event log and
the (virtual or real) time, so the same policy runs in the simulator and on Flower.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

from fedlora.config import ServerConfig, StalenessConfig
from fedlora.policies.staleness import staleness_factor
from fedlora.registry import Registry
from fedlora.terms import Source, Term


@dataclass(frozen=True)
class ClientInfo:
    client: int
    num_examples: int


@dataclass(frozen=True)
class Arrival:
    """A job's result reached the server (already validated)."""

    job: int
    client: int
    dispatched_version: int
    time: float

    def to_json(self) -> list[Any]:
        return list(astuple(self))

    @classmethod
    def from_json(cls, data: list[Any]) -> Arrival:
        return cls(*data)


@dataclass(frozen=True)
class Dispatch:
    """Send ``client`` a new job projected from the current global version."""

    client: int


@dataclass(frozen=True)
class Merge:
    """Global version v+1 = Σ term.weight · term's adapter; ``release`` frees those results."""

    terms: tuple[Term, ...]
    release: tuple[int, ...]


@dataclass(frozen=True)
class Drop:
    """A result the policy will never use (e.g. too stale); it is logged and counted."""

    job: int
    reason: str


Decision = Dispatch | Merge | Drop


class PolicyOptions(BaseModel):
    """The ``server`` keys a policy reads, typed; every policy reads these.

    A config keeps its flat ``server`` keys (config names are user interface); each policy's
    options are built from them once the config is parsed (:meth:`from_server`). A field
    whose alias differs from its name reads the flat key of that alias: ``server.window`` is
    FedBuff's ``buffer``, FedFa's ``window`` and semiasync's ``minimum``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: the policy's own default (``Policy.default_weights``)
    weights: Literal["samples", "uniform"] | None = None
    update: Literal["model", "delta"] = "model"
    server_lr: float = 1.0
    staleness: StalenessConfig = StalenessConfig()
    staleness_unit: Literal["updates", "merges"] = "updates"

    @classmethod
    def server_keys(cls) -> list[str]:
        """The flat ``server`` keys these options read."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def from_server(cls, server: ServerConfig) -> Self:
        return cls.model_validate({key: getattr(server, key) for key in cls.server_keys()})

    def check(self, policy: str, rounds: int, num_clients: int) -> None:
        """Raise ``ValueError`` naming the key if ``policy`` with these options cannot serve
        ``num_clients`` clients for ``server.rounds`` rounds."""


class Policy(ABC):
    """Template: subclasses answer :meth:`start`, :meth:`on_arrival` and :meth:`on_lost`.

    ``version`` counts merges (server steps); ``rounds`` is the policy's own progress unit,
    which the runtime compares with ``server.rounds``. ``default_weights`` is how results are
    weighted when ``server.weights`` is not set. :meth:`staleness_of` measures a job's age in
    ``server.staleness_unit``. ``Options`` are the ``server`` keys the policy reads.
    """

    name: ClassVar[str]
    default_weights: ClassVar[str] = "samples"
    Options: ClassVar[type[PolicyOptions]] = PolicyOptions
    options: PolicyOptions

    def __init__(self, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> None:
        self.options = self.Options.from_server(server)
        self.clients = list(clients)
        self.sizes = {c.client: c.num_examples for c in clients}
        self.rng = random.Random(seed)
        self.version = 0
        self.rounds = 0
        # At each version, how many distinct results the global had absorbed (entered a merge);
        # the set holds absorbed results not yet released, which may enter a merge again.
        self._absorbed_at = [0]
        self._absorbed_unreleased: set[int] = set()

    def state_dict(self) -> dict[str, Any]:
        """The policy's whole state as JSON-ready data (for checkpoints); subclasses add
        their own fields."""
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "version": self.version,
            "rounds": self.rounds,
            "absorbed_at": self._absorbed_at,
            "absorbed_unreleased": sorted(self._absorbed_unreleased),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.version = state["version"]
        self.rounds = state["rounds"]
        self._absorbed_at = list(state["absorbed_at"])
        self._absorbed_unreleased = set(state["absorbed_unreleased"])

    @abstractmethod
    def start(self) -> list[Decision]:
        """The first dispatches."""

    @abstractmethod
    def on_arrival(self, arrival: Arrival) -> list[Decision]:
        """A validated result arrived."""

    @abstractmethod
    def on_lost(self, job: int, client: int) -> list[Decision]:
        """A job will never deliver (rejected update, failed or offline client)."""

    def weight_of(self, client: int) -> float:
        """A result's weight before normalisation: its sample count, or 1 (``server.weights``)."""
        if (self.options.weights or self.default_weights) == "uniform":
            return 1.0
        return float(self.sizes[client])

    def mean_of(self, weighted_jobs: Sequence[tuple[int, float]], scale: float = 1.0) -> list[Term]:
        """Terms moving the global by ``scale`` towards the weighted mean of these jobs' results
        (weights summing to 1), per ``server.update``.

        ``model``: (1 − scale)·global + scale·the mean of the client adapters (scale 1: the
        mean alone). ``delta``: the global plus scale·``server_lr`` times the mean of (client
        adapter − the adapter it was sent), which keeps what the global holds above a client's
        rank instead of replacing it.
        """
        if self.options.update == "model":
            mixed = [Term(Source.UPDATE, scale * weight, job) for job, weight in weighted_jobs]
            return ([Term(Source.GLOBAL, 1.0 - scale)] if scale != 1.0 else []) + mixed
        step = scale * self.options.server_lr
        terms = [Term(Source.GLOBAL, 1.0)]
        for job, weight in weighted_jobs:
            terms += [
                Term(Source.UPDATE, step * weight, job),
                Term(Source.SENT, -step * weight, job),
            ]
        return terms

    def staleness_weight(self, client: int, staleness: int) -> float:
        """The result's weight before normalisation, times s(τ)."""
        return self.weight_of(client) * staleness_factor(staleness, self.options.staleness)

    def step_towards(
        self, results: Sequence[tuple[Arrival, int]], release: Sequence[int], rate: float = 1.0
    ) -> Merge:
        """A merge moving the global ``rate`` of the way to the weighted mean of ``results``
        (each with its staleness at arrival).

        The weights are normalised by the plain weights, not the staleness-scaled ones, so
        fresh results make a full step and stale ones a shorter one (the rest of the global
        stays).
        """
        plain = sum(self.weight_of(a.client) for a, _ in results)
        scaled = [(a.job, self.staleness_weight(a.client, s)) for a, s in results]
        total = sum(w for _, w in scaled)
        terms = self.mean_of([(job, w / total) for job, w in scaled], scale=rate * total / plain)
        return self.merge(terms, release)

    def merge(self, terms: Sequence[Term], release: Sequence[int]) -> Merge:
        """Emit a merge, advance the version and count the results it absorbs for the first
        time."""
        self.version += 1
        jobs = {t.job for t in terms if t.source is Source.UPDATE and t.job is not None}
        new = jobs - self._absorbed_unreleased
        self._absorbed_unreleased = (self._absorbed_unreleased | new) - set(release)
        self._absorbed_at.append(self._absorbed_at[-1] + len(new))
        return Merge(terms=tuple(terms), release=tuple(release))

    def staleness_of(self, dispatched_version: int) -> int:
        """How far the global moved since a job was projected from ``dispatched_version``.

        ``updates`` (default): client results the global absorbed since then, a unit that means
        the same under every policy (FedFa merges on every arrival, FedBuff once per K, so a
        count of merges makes the same age about K times staler under FedFa). ``merges``: server
        steps since then, the unit of the FedAsync and FedBuff papers and of Plato's rounds.
        """
        if self.options.staleness_unit == "merges":
            return self.version - dispatched_version
        return self._absorbed_at[-1] - self._absorbed_at[dispatched_version]


registry: Registry[Policy] = Registry("server.policy")


def available() -> list[str]:
    """The registered policy names (the values ``server.policy`` accepts)."""
    return registry.available()


def create(name: str, server: ServerConfig, clients: Sequence[ClientInfo], seed: int) -> Policy:
    return registry.get(name)(server, clients, seed)


# The federation's shape that a comparison of policies holds fixed across its arms: FedAvg's
# clients per round, the asynchronous policies' clients at work and their K. A study's base
# sets them once for every arm (configs/fedfa/base.yaml), so a policy that does not read one
# of them leaves it unread without complaint.
SHARED_KEYS = ("per_round", "concurrency", "window")


def check_setup(server: ServerConfig, num_clients: int) -> None:
    """Raise ``ValueError`` naming the key if ``server.policy`` cannot run this setup: a key
    set away from its default that the policy never reads (outside :data:`SHARED_KEYS`), or
    the policy's own checks."""
    policy = registry.get(server.policy)
    readers: dict[str, list[str]] = {}
    for name in registry.available():
        for key in registry.get(name).Options.server_keys():
            readers.setdefault(key, []).append(name)
    for key, names in readers.items():
        unread = key not in policy.Options.server_keys() and key not in SHARED_KEYS
        if unread and getattr(server, key) != ServerConfig.model_fields[key].default:
            raise ValueError(
                f"server.{key}: policy {policy.name} does not read it (read by"
                f" {', '.join(names)}); leave it out, or choose a policy that reads it"
            )
    policy.Options.from_server(server).check(policy.name, server.rounds, num_clients)
