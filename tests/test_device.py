"""runtime.device: a bad device is named before anything loads, a GPU run is the CPU run up to
rounding, and a study cell finished on one device counts as done on another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import run_cli, tiny_data

from fedlora.client.model import build_resident_model
from fedlora.client.trainer import evaluate, plan_batches, train_local
from fedlora.config import ConfigError, ExperimentConfig, LoraConfig, ModelConfig, TrainConfig
from fedlora.preflight import check
from fedlora.studies.sweep import _same_experiment

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "CUDA"])
def test_an_unknown_device_is_named(device: str) -> None:
    with pytest.raises(ValueError, match=r"runtime\.device"):
        ExperimentConfig.model_validate({"runtime": {"device": device}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_fails_before_the_model_loads(tiny_config: dict) -> None:
    config = ExperimentConfig.model_validate({**tiny_config, "runtime": {"device": "cuda"}})
    with pytest.raises(ConfigError, match=r"runtime\.device: 'cuda', but torch sees no CUDA"):
        check(config)


def test_a_cell_finished_on_a_gpu_is_done_on_the_cpu(tiny_config: dict) -> None:
    on_gpu = ExperimentConfig.model_validate({**tiny_config, "runtime": {"device": "cuda"}})
    assert _same_experiment(on_gpu, ExperimentConfig.model_validate(tiny_config))


@needs_cuda
def test_cuda_starts_from_the_cpu_adapter_and_hands_states_back_on_the_cpu() -> None:
    """Adapters trained on the two devices are not compared: AdamW divides each step by the
    gradient's own size, so rounding can flip the sign of a near-zero gradient's step. Where
    whole runs end is compared below."""
    lora = LoraConfig(r=4, dropout=0.0)
    data, train = tiny_data(), TrainConfig(local_steps=3, batch_size=4, lr=1e-2)
    batches = plan_batches(np.arange(12), train, np.random.default_rng(0))
    cpu, _ = build_resident_model(ModelConfig(init="random"), lora, 2, seed=0)
    gpu, _ = build_resident_model(ModelConfig(init="random"), lora, 2, seed=0, device="cuda")
    start = cpu.state()
    for module, factors in gpu.state().lora.items():  # the same initial adapter, bit for bit
        assert torch.equal(factors.A, start.lora[module].A)
    trained = train_local(gpu, start, batches, data, train, 0, False, 0).state
    assert all(t.device.type == "cpu" for f in trained.lora.values() for t in (f.A, f.B))
    cpu_scores, cpu_logits = evaluate(cpu, trained, data, ["accuracy"], 8, False, 0)
    gpu_scores, gpu_logits = evaluate(gpu, trained, data, ["accuracy"], 8, False, 0)
    # float32 on both (PyTorch leaves TF32 matmuls off): a dozen matmuls of width ≤ 64 reduced
    # in other orders, each ~√64·ε₃₂ ≈ 1e-6 of O(1) activations, plus CUDA's own exp/erf/tanh
    # (a few ulp): 1e-4 holds that with room. A cross-entropy moves by ≤ 2·max|Δlogit|.
    assert np.allclose(gpu_logits, cpu_logits, atol=1e-4)  # one state scores the same
    assert gpu_scores["loss"] == pytest.approx(cpu_scores["loss"], abs=2e-4)


@needs_cuda
def test_a_whole_run_on_cuda_ends_where_the_cpu_run_does(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["lora"]["dropout"] = 0.0
    finals = {}
    for device in ["cpu", "cuda"]:
        out = tmp_path / device
        run_cli(tmp_path, {**tiny_config, "runtime": {"device": device}}, out)
        finals[device] = json.loads((out / "summary.json").read_text())["final"]
    # Not a rounding bound, and none can be derived: Adam's normalised step (±lr = 1e-2 per
    # coordinate) takes its sign from gradients that rounding can flip where they are near 0.
    # 1e-3 is below what one merge moves this run's loss (≈ 0.70; 1.4e-3 to 4.7e-3 on CPU).
    assert finals["cuda"]["loss"] == pytest.approx(finals["cpu"]["loss"], abs=1e-3)
