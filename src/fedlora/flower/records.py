"""AdapterState ⇄ Flower records: LoRA factors and head tensors as arrays, alphas and job
fields as config values. Nothing is pickled: arrays travel as NumPy buffers, float32 or
float16 (Flower rejects bf16), and the receiver gets float32 back.

Torch is imported by the two functions that convert tensors, not by this module: the ClientApp
reads and writes the job and result fields without it (:mod:`fedlora.flower.client_app`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.app.typing import ConfigRecordValues

if TYPE_CHECKING:
    from fedlora.adapters import AdapterState

_TRAINED, _FROZEN = "adapter", "frozen"  # array records: trained and frozen factors


def _alphas_key(record: str) -> str:
    return f"{record}.alphas"


def put_state(content: RecordDict, state: AdapterState, wire_dtype: str = "float32") -> None:
    """Store ``state`` in ``content`` (the trained factors and head, the frozen factors)."""
    import torch

    from fedlora.adapters import AdapterState

    dtype = {"float32": torch.float32, "float16": torch.float16}[wire_dtype]
    parts = {_TRAINED: state, _FROZEN: AdapterState(lora=state.frozen, extra={})}
    for name, part in parts.items():
        arrays = {
            key: Array(tensor.detach().to(dtype).contiguous().numpy())
            for key, tensor in part.to_peft_state_dict().items()
        }
        content.array_records[name] = ArrayRecord(arrays)
        content.config_records[_alphas_key(name)] = ConfigRecord(
            {module: float(f.alpha) for module, f in part.lora.items()}
        )


def get_state(content: RecordDict) -> AdapterState:
    """The state :func:`put_state` stored, in float32; :class:`InvalidUpdate` if malformed."""
    import torch

    from fedlora.adapters import AdapterState, InvalidUpdate

    try:
        parts = [
            AdapterState.from_peft_state_dict(
                {
                    key: torch.from_numpy(array.numpy().astype("float32"))
                    for key, array in content.array_records[name].items()
                },
                dict(content.config_records[_alphas_key(name)]),  # type: ignore[arg-type]
            )
            for name in (_TRAINED, _FROZEN)
        ]
    except (KeyError, ValueError, TypeError) as error:
        raise InvalidUpdate(f"unreadable adapter records: {error}") from None
    trained, frozen = parts
    return AdapterState(lora=trained.lora, extra=trained.extra, frozen=frozen.lora)


def payload_bytes(content: RecordDict) -> int:
    """Bytes of array data the message carries (what the wire charges, headers aside)."""
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())


@dataclass(frozen=True)
class JobFields:
    """What a train message says besides the adapter: which job, for which client."""

    job: int
    client: int
    version: int
    rank: int

    def put(self, content: RecordDict) -> None:
        content.config_records["job"] = ConfigRecord(
            {"job": self.job, "client": self.client, "version": self.version, "rank": self.rank}
        )

    @classmethod
    def get(cls, content: RecordDict) -> JobFields:
        fields = content.config_records["job"]
        return cls(
            int(fields["job"]),  # type: ignore[arg-type]
            int(fields["client"]),  # type: ignore[arg-type]
            int(fields["version"]),  # type: ignore[arg-type]
            int(fields["rank"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ResultFields:
    """What a reply says besides the trained adapter; and where and how it was trained, when
    the node says: ``served`` ``"resident"`` (by the node's resident trainer,
    :mod:`fedlora.flower.resident`) or ``"in-app"`` (in the ClientApp's own process), that
    process's ``pid``, how many times it has loaded the model (``loads``, this job's load
    included), and the seconds the training itself took there (``train_s``: no model load, no
    message passing)."""

    job: int
    examples: int
    loss: float
    served: str | None = None
    pid: int | None = None
    loads: int | None = None
    train_s: float | None = None

    def put(self, content: RecordDict) -> None:
        fields: dict[str, ConfigRecordValues] = {
            "job": self.job,
            "examples": self.examples,
            "loss": self.loss,
        }
        content.config_records["result"] = ConfigRecord(fields | self.where())

    @classmethod
    def get(cls, content: RecordDict) -> ResultFields:
        fields = content.config_records["result"]
        served, pid, loads, train_s = (fields.get(k) for k in ("served", "pid", "loads", "train_s"))
        return cls(
            int(fields["job"]),  # type: ignore[arg-type]
            int(fields["examples"]),  # type: ignore[arg-type]
            float(fields["loss"]),  # type: ignore[arg-type]
            None if served is None else str(served),
            None if pid is None else int(pid),  # type: ignore[arg-type]
            None if loads is None else int(loads),  # type: ignore[arg-type]
            None if train_s is None else float(train_s),  # type: ignore[arg-type]
        )

    def where(self) -> dict[str, str | int | float]:
        """Where and how the job was trained, as far as the reply says: the arrival event's
        details."""
        said = {
            "served": self.served,
            "pid": self.pid,
            "loads": self.loads,
            "train_s": self.train_s,
        }
        return {key: value for key, value in said.items() if value is not None}
