"""The resident backbone: adapters of any rank swapped in and out, deterministic local training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import tiny_data
from peft import PeftModel

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.client.model import (
    ResidentModel,
    build_resident_model,
    load_backbone,
    model_path,
    write_adapter_folder,
)
from fedlora.client.trainer import plan_batches, train_local
from fedlora.config import LoraConfig, ModelConfig, TrainConfig
from fedlora.data.encoding import collate

# Two float32 routes through the same 2-layer, 32-wide model that round differently (ΔW folded
# into the base weights or applied beside them; stock PEFT's forward or ours): a dozen matmuls
# of width ≤ 64, each off by ~√64·ε₃₂ ≈ 1e-6 of activations LayerNorm keeps O(1) (seen: 7e-7).
# 1e-5 + 1e-5·|logit| is ~100·ε₃₂ of O(1) logits; what these tests detect moves them by O(1).
SAME_LOGITS = 1e-5


@pytest.fixture(scope="module")
def resident() -> ResidentModel:
    model, _ = build_resident_model(ModelConfig(init="random"), LoraConfig(r=4), 2, seed=0)
    return model


def random_state(like: AdapterState, rank: int, alpha: float, seed: int) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {
        m: LoraFactors(
            torch.randn(rank, f.A.shape[1], generator=g),
            torch.randn(f.B.shape[0], rank, generator=g),
            alpha,
        )
        for m, f in like.lora.items()
    }
    return AdapterState(lora, {n: torch.randn(t.shape, generator=g) for n, t in like.extra.items()})


def test_initial_state_matches_the_config(resident: ResidentModel) -> None:
    state = resident.state()
    assert state.rank == 4 and state.alpha == 16.0
    assert len(state.lora) == 2 * 2  # query and value in each of 2 layers
    assert set(state.extra) == {"classifier.weight", "classifier.bias"}


def test_any_rank_loads_and_reads_back_exactly(resident: ResidentModel) -> None:
    like = resident.state()
    for rank, alpha in [(2, 4.0), (8, 16.0), (2, 4.0), (4, 16.0)]:
        state = random_state(like, rank, alpha, seed=rank)
        resident.load(state)
        back = resident.state()
        assert back.rank == rank and back.alpha == alpha
        for m in state.lora:
            assert torch.equal(back.lora[m].A, state.lora[m].A)
            assert torch.equal(back.lora[m].B, state.lora[m].B)
        # only the active slot (and its head copy) trains
        trainable = sum(p.numel() for p in resident.trainable_parameters())
        head = sum(t.numel() for t in state.extra.values())
        assert trainable == sum(f.A.numel() + f.B.numel() for f in state.lora.values()) + head


def test_local_training_is_deterministic_and_moves_the_adapter(resident: ResidentModel) -> None:
    data = tiny_data()
    train = TrainConfig(local_steps=3, batch_size=4, lr=1e-2)
    batches = plan_batches(np.arange(12), train, np.random.default_rng(0))
    start = resident.state()
    first = train_local(resident, start, batches, data, train, seed=7, bf16=False, pad_token_id=0)
    second = train_local(resident, start, batches, data, train, seed=7, bf16=False, pad_token_id=0)
    assert first.steps == 3 and first.examples == 12
    for m in start.lora:
        assert torch.equal(first.state.lora[m].A, second.state.lora[m].A)
        assert not torch.equal(first.state.lora[m].A, start.lora[m].A)
    assert first.loss == second.loss


def test_plan_batches_steps_and_epochs() -> None:
    rng = np.random.default_rng(0)
    steps = plan_batches(np.arange(10), TrainConfig(local_steps=4, batch_size=4), rng)
    assert [len(b) for b in steps] == [4, 4, 4, 4]
    flat = np.concatenate(steps)
    assert set(flat[:8]) <= set(range(10)) and len(set(flat[:10])) == 10  # a full pass first
    epochs = plan_batches(
        np.arange(10), TrainConfig(local_steps=None, local_epochs=1.5, batch_size=4), rng
    )
    assert [len(b) for b in epochs] == [4, 4, 4, 3]
    small = plan_batches(np.arange(3), TrainConfig(local_steps=2, batch_size=8), rng)
    assert [len(b) for b in small] == [3, 3]  # a client smaller than a batch trains on all it has
    with pytest.raises(ValueError, match="without examples"):
        plan_batches(np.arange(0), TrainConfig(), rng)


def test_frozen_update_is_merged_into_the_base_and_taken_out_again(
    resident: ResidentModel,
) -> None:
    """A frozen update under a zero LoRA predicts like the same update as a trained LoRA."""
    like = resident.state()
    update = random_state(like, rank=3, alpha=6.0, seed=11)
    zero = AdapterState(
        {m: LoraFactors(f.A, torch.zeros_like(f.B), f.alpha) for m, f in like.lora.items()},
        update.extra,
        frozen=update.lora,
    )
    batch = {
        "input_ids": torch.tensor([[101, 2000, 2001, 102]]),
        "attention_mask": torch.ones(1, 4),
    }
    resident.model.eval()
    with torch.no_grad():
        resident.load(update)
        as_lora = resident.model(**batch).logits
        resident.load(zero)
        as_frozen = resident.model(**batch).logits
        resident.load(like)
        plain = resident.model(**batch).logits
        resident.load(AdapterState(like.lora, like.extra))
        assert torch.equal(resident.model(**batch).logits, plain)  # base restored exactly
    assert torch.allclose(as_lora, as_frozen, rtol=SAME_LOGITS, atol=SAME_LOGITS)
    assert not torch.allclose(as_frozen, plain, atol=1e-3)  # the update moves them by ~1


def test_old_slots_are_evicted(resident: ResidentModel) -> None:
    like = resident.state()
    for rank in range(1, 12):
        resident.load(random_state(like, rank, 16.0, seed=rank))
    assert len(resident.model.peft_config) <= ResidentModel.max_slots
    assert resident.state().rank == 11


def test_rslora_adapter_trains_at_alpha_over_root_rank_and_loads_in_stock_peft(
    tmp_path: Path,
) -> None:
    """Inside, a rank-r rsLoRA slot is standard LoRA at alpha α·√r; the exported folder says
    ``use_rslora`` with α itself, and stock PEFT computes the very same outputs from it."""
    lora, model = LoraConfig(r=4, alpha=6.0, rslora=True), ModelConfig(init="random")
    resident, _ = build_resident_model(model, lora, 2, seed=3)
    initial = resident.state()
    assert initial.alpha == 12.0 and {f.scaling for f in initial.lora.values()} == {3.0}
    state = random_state(resident.state(), 4, 12.0, seed=1)
    resident.load(state)
    write_adapter_folder(state, tmp_path, lora, model_path(None))
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["use_rslora"] is True and written["lora_alpha"] == 6.0 and written["r"] == 4

    torch.manual_seed(3)
    base = load_backbone(model, 2, pad_token_id=0)
    stock = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    resident.model.eval()
    batch = collate(tiny_data(4), np.arange(4), pad_token_id=0)
    with torch.no_grad():
        expected = resident.forward(batch).logits
        assert torch.allclose(stock(**batch).logits, expected, rtol=SAME_LOGITS, atol=SAME_LOGITS)
