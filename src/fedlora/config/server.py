"""``server``: the policy, the aggregator and the keys they and the server core read."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from fedlora.config.section import Section


class StalenessConfig(Section):
    """s(τ): constant (1), polynomial (τ+1)^(−a), or hinge (1 if τ ≤ b, else 1/(a(τ−b)+1))."""

    function: Literal["constant", "polynomial", "hinge"] = "constant"
    a: Annotated[float, Field(ge=0)] = 0.5
    b: Annotated[float, Field(ge=0)] = 4.0


class DefenceConfig(Section):
    """A robust centre of the client results a merge takes, in place of their weighted mean:
    the coordinate-wise median, or the mean of what is left after trimming ``trim`` of the
    results at each end, of their updates (products s·B·A and head, against what each job was
    sent). Norm clipping of the product is ``server.max_update_norm`` with
    ``norm_action: clip``."""

    centre: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim: Annotated[float, Field(ge=0, lt=0.5)] = 0.1


class ServerConfig(Section):
    policy: str = "fedavg"
    aggregator: str = "fedavg"
    per_round: Annotated[int | None, Field(ge=1)] = None
    # Asynchronous policies: clients training at once, and K (FedBuff's buffer, FedFa's window,
    # semiasync's minimum). Each policy reads its own keys (``fedlora.policies``' options).
    concurrency: Annotated[int, Field(ge=1)] = 10
    window: Annotated[int, Field(ge=1)] = 5
    # How results are weighted in a merge: by sample count, or equally; null: the policy's own
    # default (samples for fedavg, uniform for the asynchronous policies).
    weights: Literal["samples", "uniform"] | None = None
    staleness: StalenessConfig = StalenessConfig()
    defence: DefenceConfig = DefenceConfig()
    # Older results are dropped (semiasync instead waits for clients still training that far
    # behind, as Plato does).
    staleness_bound: Annotated[int | None, Field(ge=0)] = None
    # The unit of staleness for staleness_bound, s(τ) and the reports: client results the global
    # absorbed since the job's dispatch (the same meaning under every policy), or merges.
    staleness_unit: Literal["updates", "merges"] = "updates"
    # An update farther than this (Frobenius norm over A, B and head) from what its job was
    # sent is rejected, or clipped back to it (norm_action); null: no bound.
    max_update_norm: Annotated[float | None, Field(gt=0)] = None
    norm_action: Literal["reject", "clip"] = "reject"
    mixing: Annotated[float, Field(gt=0, le=1)] = 0.6  # FedAsync's alpha
    # Seconds a job may take from dispatch: virtual seconds under the simulator, wall seconds
    # under the flower runtime. A later result is lost. null: no deadline.
    job_timeout: Annotated[float | None, Field(gt=0)] = None
    rounds: Annotated[int, Field(ge=1)] = 50
    max_steps: Annotated[int | None, Field(ge=1)] = None
    max_virtual_time: Annotated[float | None, Field(gt=0)] = None
    # model: the global becomes the weighted mean of client adapters; delta: the global moves
    # by server_lr × the weighted mean of (client adapter − what that client was sent).
    update: Literal["model", "delta"] = "model"
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    global_rank: Annotated[int | None, Field(ge=1)] = None  # null: the largest client rank
    aggregator_options: dict[str, Any] = {}  # noqa: RUF012 (a pydantic field)

    @model_validator(mode="after")
    def _server_lr_needs_delta(self) -> ServerConfig:
        if self.update == "model" and self.server_lr != 1.0:
            raise ValueError("server.server_lr: applies to update: delta only")
        return self
