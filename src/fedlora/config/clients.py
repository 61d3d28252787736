"""``clients``: how many, their LoRA ranks, speeds, bandwidth and availability."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, Strict, model_validator

from fedlora.config.section import Section


class ConstantSpeed(Section):
    distribution: Literal["constant"]
    value: Annotated[float, Field(gt=0)] = 1.0


class UniformSpeed(Section):
    distribution: Literal["uniform"]
    low: Annotated[float, Field(gt=0)] = 1.0
    high: Annotated[float, Field(gt=0)] = 10.0
    cap: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _ordered(self) -> UniformSpeed:
        if self.low > self.high:
            raise ValueError(f"clients.speed: low {self.low} is above high {self.high}")
        return self


class NormalSpeed(Section):
    distribution: Literal["normal"]
    mean: Annotated[float, Field(gt=0)] = 5.0
    std: Annotated[float, Field(ge=0)] = 2.0
    cap: Annotated[float | None, Field(gt=0)] = None


class LognormalSpeed(Section):
    distribution: Literal["lognormal"]
    mean: float = 0.0
    sigma: Annotated[float, Field(ge=0)] = 1.0
    cap: Annotated[float | None, Field(gt=0)] = None


class ParetoSpeed(Section):
    distribution: Literal["pareto"]
    alpha: Annotated[float, Field(gt=0)] = 1.0
    cap: Annotated[float | None, Field(gt=0)] = None


class ZipfSpeed(Section):
    distribution: Literal["zipf"]
    alpha: Annotated[float, Field(gt=1)] = 2.0
    cap: Annotated[float | None, Field(gt=0)] = None


_SPEEDS = (ConstantSpeed, UniformSpeed, NormalSpeed, LognormalSpeed, ParetoSpeed, ZipfSpeed)
SpeedConfig = Annotated[
    ConstantSpeed | UniformSpeed | NormalSpeed | LognormalSpeed | ParetoSpeed | ZipfSpeed,
    Field(discriminator="distribution"),
]
# pydantic puts the union's tag into an error's location; users never wrote it, so drop it.
UNION_TAGS = {get_args(cls.model_fields["distribution"].annotation)[0] for cls in _SPEEDS}


# Tier ranks are mapping keys, which a JSON-mode dump (a run's config.yaml) writes as text.
Rank = Annotated[int, Strict(False), Field(ge=1)]
Share = Annotated[float, Field(gt=0)]


class AvailabilityConfig(Section):
    """When a client's job never delivers: it fails, or the client is offline during it.

    A client alternates online and offline stretches of exponentially distributed lengths
    (means in virtual seconds; both null: always online). A job fails when its client is
    offline at any moment of it, or with probability ``failure_prob``.
    """

    failure_prob: Annotated[float, Field(ge=0, le=1)] = 0.0
    mean_online_s: Annotated[float | None, Field(gt=0)] = None
    mean_offline_s: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> AvailabilityConfig:
        if (self.mean_online_s is None) != (self.mean_offline_s is None):
            raise ValueError(
                "clients.availability: set both mean_online_s and mean_offline_s, or neither"
            )
        return self


class ClientsConfig(Section):
    num: Annotated[int, Field(ge=1)] = 10
    # LoRA rank per client: one per client, tiers with shares ({2: 0.5, 8: 0.5}), or null for
    # lora.r everywhere. Tiers go to clients at random, or by speed (fastest get the largest);
    # rank_by node: each client's rank is the one its Flower node reports (--node-config
    # 'partition-id=K rank=R'), at most lora.r, under --runtime flower only.
    ranks: list[Rank] | dict[Rank, Share] | None = None
    rank_by: Literal["random", "speed", "node"] = "random"
    speed: SpeedConfig = ConstantSpeed(distribution="constant")
    bandwidth_mbps: Annotated[float, Field(gt=0)] = 100.0
    # Virtual seconds one token costs a client of slowness 1 (forward + backward).
    seconds_per_token: Annotated[float, Field(gt=0)] = 1.0e-3
    availability: AvailabilityConfig = AvailabilityConfig()

    @model_validator(mode="after")
    def _ranks_fit(self) -> ClientsConfig:
        if self.rank_by == "node" and self.ranks is not None:
            raise ValueError(
                "clients.ranks: under clients.rank_by: node the nodes report their ranks;"
                " remove clients.ranks"
            )
        if isinstance(self.ranks, list) and len(self.ranks) != self.num:
            raise ValueError(
                f"clients.ranks: {len(self.ranks)} ranks listed for {self.num} clients"
                " (clients.num)"
            )
        if isinstance(self.ranks, dict) and abs(sum(self.ranks.values()) - 1) > 1e-6:
            raise ValueError(
                f"clients.ranks: tier shares sum to {sum(self.ranks.values()):g}, expected 1"
            )
        return self
