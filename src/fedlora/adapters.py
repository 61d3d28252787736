"""AdapterState: what travels between server and clients.

Per target module the LoRA factors (A: r×in, B: out×r) and the LoRA alpha (PEFT applies
ΔW = (alpha/r)·B·A), plus the extra trainable tensors (the classification head, PEFT's
``modules_to_save``), plus optionally ``frozen`` factors: an update already merged into the
base weights that the client trains on top of (FLoRA), never trained itself. Converts to and
from PEFT state dicts (the keys PEFT saves in ``adapter_model.safetensors``) and to and from
safetensors bytes for the wire, and validates what a client sends before the server touches
it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

if TYPE_CHECKING:
    from peft import LoraConfig as PeftLoraConfig

PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"
_ALPHAS_KEY = "fedlora.alphas"
_FROZEN_PREFIX = "frozen."
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


class InvalidUpdate(ValueError):
    """A client update the server must not merge; the message is the reason it was rejected."""


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA update ΔW = (alpha / rank) · B @ A."""

    A: torch.Tensor  # rank × in
    B: torch.Tensor  # out × rank
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The dense out×in update; for tests and small modules only."""
        return self.scaling * (self.B @ self.A)


@dataclass(frozen=True)
class AdapterState:
    """LoRA factors per target module (keyed by module path) and head tensors (by name)."""

    lora: Mapping[str, LoraFactors]
    extra: Mapping[str, torch.Tensor]
    frozen: Mapping[str, LoraFactors] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The common rank of all modules; states loaded into a model have one."""
        return int(_only_value("ranks", {f.rank for f in self.lora.values()}))

    @property
    def alpha(self) -> float:
        return float(_only_value("alphas", {f.alpha for f in self.lora.values()}))

    def tensors(self) -> list[torch.Tensor]:
        factors = [*self.lora.values(), *self.frozen.values()]
        return [t for f in factors for t in (f.A, f.B)] + list(self.extra.values())

    def num_bytes(self) -> int:
        """Bytes on the wire: every tensor's payload (headers are negligible)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to_peft_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys exactly as PEFT's ``get_peft_model_state_dict`` produces them."""
        state: dict[str, torch.Tensor] = {}
        for module, factors in self.lora.items():
            state[f"{PEFT_PREFIX}{module}{_A_SUFFIX}"] = factors.A
            state[f"{PEFT_PREFIX}{module}{_B_SUFFIX}"] = factors.B
        for name, tensor in self.extra.items():
            state[f"{PEFT_PREFIX}{name}"] = tensor
        return state

    @classmethod
    def from_peft_state_dict(
        cls, state: Mapping[str, torch.Tensor], alpha: float | Mapping[str, float]
    ) -> AdapterState:
        """Split a PEFT adapter state dict into LoRA factors and extra (head) tensors."""
        factors: dict[str, dict[str, torch.Tensor]] = {}
        extra: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            name = key.removeprefix(PEFT_PREFIX)
            if name.endswith(_A_SUFFIX):
                factors.setdefault(name.removesuffix(_A_SUFFIX), {})["A"] = tensor
            elif name.endswith(_B_SUFFIX):
                factors.setdefault(name.removesuffix(_B_SUFFIX), {})["B"] = tensor
            elif ".lora_" in name:
                raise ValueError(f"unsupported LoRA tensor {key!r} (only plain LoRA A/B)")
            else:
                extra[name] = tensor
        lora = {}
        for module, pair in factors.items():
            if set(pair) != {"A", "B"}:
                raise ValueError(f"module {module!r} has lora_{next(iter(pair))} only")
            module_alpha = alpha if isinstance(alpha, int | float) else alpha[module]
            lora[module] = LoraFactors(A=pair["A"], B=pair["B"], alpha=float(module_alpha))
        return cls(lora=lora, extra=extra)

    def to_bytes(self) -> bytes:
        """safetensors bytes with the PEFT keys (frozen factors under ``frozen.``); alphas
        travel in the metadata."""
        frozen = AdapterState(lora=self.frozen, extra={}).to_peft_state_dict()
        tensors = {
            **self.to_peft_state_dict(),
            **{f"{_FROZEN_PREFIX}{key}": value for key, value in frozen.items()},
        }
        alphas = {
            **{module: f.alpha for module, f in self.lora.items()},
            **{f"{_FROZEN_PREFIX}{module}": f.alpha for module, f in self.frozen.items()},
        }
        return save_safetensors(
            {k: v.contiguous() for k, v in tensors.items()},
            metadata={_ALPHAS_KEY: json.dumps(alphas, sort_keys=True)},  # canonical bytes
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AdapterState:
        """The state in safetensors bytes; bytes from anywhere else than :meth:`to_bytes`
        (a client, a file) raise :class:`InvalidUpdate` saying why, and nothing else."""
        try:
            return cls._from_bytes(data)
        except InvalidUpdate:
            raise
        except (
            SafetensorError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
        ) as error:  # RecursionError: metadata JSON nested beyond the parser's depth
            raise InvalidUpdate(f"unreadable adapter bytes: {error}") from None

    @classmethod
    def _from_bytes(cls, data: bytes) -> AdapterState:
        tensors = load_safetensors(data)  # checks the header against the payload
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        alphas = json.loads(metadata[_ALPHAS_KEY])
        if not isinstance(alphas, dict) or not all(
            isinstance(a, int | float) and not isinstance(a, bool) for a in alphas.values()
        ):
            raise InvalidUpdate(f"{_ALPHAS_KEY} metadata is not a map of numbers")
        frozen = {
            k.removeprefix(_FROZEN_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(_FROZEN_PREFIX)
        }
        trained = {k: v for k, v in tensors.items() if not k.startswith(_FROZEN_PREFIX)}
        frozen_alphas = {
            k.removeprefix(_FROZEN_PREFIX): a
            for k, a in alphas.items()
            if k.startswith(_FROZEN_PREFIX)
        }
        state = cls.from_peft_state_dict(trained, alphas)
        return replace(state, frozen=cls.from_peft_state_dict(frozen, frozen_alphas).lora)

    def save_peft_folder(self, folder: Path, peft_config: PeftLoraConfig) -> None:
        """Write a folder that ``PeftModel.from_pretrained(base, folder)`` loads."""
        folder.mkdir(parents=True, exist_ok=True)
        peft_config.save_pretrained(str(folder))
        tensors = {k: v.detach().contiguous() for k, v in self.to_peft_state_dict().items()}
        save_file(tensors, str(folder / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})


@dataclass(frozen=True)
class AdapterSpec:
    """The shapes a well-formed update must have: (out, in) per module, shape per head tensor."""

    modules: Mapping[str, tuple[int, int]]
    extra: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)  # by PEFT key

    @classmethod
    def of(cls, state: AdapterState) -> AdapterSpec:
        return cls(
            modules={m: (int(f.B.shape[0]), int(f.A.shape[1])) for m, f in state.lora.items()},
            extra={name: tuple(t.shape) for name, t in state.extra.items()},
            dtypes={k: t.dtype for k, t in state.to_peft_state_dict().items()},
        )

    @property
    def largest_value(self) -> float:
        """The largest number every tensor of a well-formed update can hold."""
        return min((torch.finfo(d).max for d in self.dtypes.values()), default=math.inf)

    def validate(self, state: AdapterState, rank: int) -> None:
        """Raise :class:`InvalidUpdate` naming the first problem that makes ``state`` unusable."""
        _same_names("module", set(self.modules), set(state.lora))
        _same_names("head tensor", set(self.extra), set(state.extra))
        for module, (out_features, in_features) in self.modules.items():
            factors = state.lora[module]
            if tuple(factors.A.shape) != (rank, in_features):
                raise InvalidUpdate(
                    f"{module}: lora_A has shape {tuple(factors.A.shape)},"
                    f" expected ({rank}, {in_features})"
                )
            if tuple(factors.B.shape) != (out_features, rank):
                raise InvalidUpdate(
                    f"{module}: lora_B has shape {tuple(factors.B.shape)},"
                    f" expected ({out_features}, {rank})"
                )
            if not (math.isfinite(factors.alpha) and factors.alpha > 0):
                raise InvalidUpdate(f"{module}: alpha {factors.alpha} is not a positive number")
        for name, shape in self.extra.items():
            if tuple(state.extra[name].shape) != shape:
                raise InvalidUpdate(
                    f"{name}: shape {tuple(state.extra[name].shape)}, expected {shape}"
                )
        for name, tensor in state.to_peft_state_dict().items():
            expected = self.dtypes.get(name, tensor.dtype)
            if tensor.dtype != expected or not tensor.is_floating_point():
                raise InvalidUpdate(f"{name}: dtype {tensor.dtype}, expected {expected}")
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidUpdate(f"{name}: contains NaN or Inf")


def _only_value(what: str, values: set[float]) -> float:
    if len(values) != 1:
        raise ValueError(f"adapter has modules of {what} {sorted(values)}, expected one")
    return values.pop()


def _same_names(what: str, expected: set[str], got: set[str]) -> None:
    if unknown := sorted(got - expected):
        raise InvalidUpdate(f"unknown {what} {unknown[0]!r}")
    if missing := sorted(expected - got):
        raise InvalidUpdate(f"missing {what} {missing[0]!r}")
