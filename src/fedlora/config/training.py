"""``model``, ``lora`` and ``train``: what each client trains and how."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedlora.config.section import Section


class RandomInitConfig(Section):
    """Sizes of a randomly initialised model built from the named model's config (tests)."""

    hidden_size: Annotated[int, Field(ge=2)] = 32
    num_hidden_layers: Annotated[int, Field(ge=1)] = 2
    num_attention_heads: Annotated[int, Field(ge=1)] = 2
    intermediate_size: Annotated[int, Field(ge=2)] = 64


class ModelConfig(Section):
    name: str | None = None
    gguf_file: str | None = None  # a GGUF checkpoint inside ``name`` (a folder or hub id)
    # bf16 autocast; auto: where the device computes bf16 natively (AMX or AVX512-BF16 on a
    # CPU, a GPU that supports it), else float32.
    bf16: bool | Literal["auto"] = False
    init: Literal["pretrained", "random"] = "pretrained"
    random: RandomInitConfig = RandomInitConfig()


class LoraConfig(Section):
    r: Annotated[int, Field(ge=1)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    target_modules: Annotated[list[str], Field(min_length=1)] = ["query", "value"]  # noqa: RUF012
    # rsLoRA (PEFT's use_rslora): scale α/√r instead of α/r, so that at one alpha every rank
    # trains at a comparable step size (under α/r a rank-2 update moves 8× a rank-16 one).
    rslora: bool = False

    def alpha_at(self, rank: int) -> float:
        """The alpha that gives ``rank`` this config's scaling in the standard form α/r, which
        fedlora keeps everywhere inside (α·√r under rsLoRA); exports convert back."""
        return self.alpha * math.sqrt(rank) if self.rslora else self.alpha


class TrainConfig(Section):
    local_steps: Annotated[int | None, Field(ge=1)] = 20
    local_epochs: Annotated[float | None, Field(gt=0)] = None
    batch_size: Annotated[int, Field(ge=1)] = 16
    # AdamW moves every weight by up to lr per step: above 1 it is a typo, never a schedule
    # (and past float32's range its step overflows inside torch).
    lr: Annotated[float, Field(gt=0, le=1)] = 5.0e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float | None, Field(gt=0)] = 1.0

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("train: set exactly one of local_steps and local_epochs")
        return self
