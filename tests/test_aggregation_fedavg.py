"""FedAvg aggregator: exact weighted means of A, effective B and the head."""

from __future__ import annotations

import pytest
import torch

from fedlora import aggregation
from fedlora.adapters import AdapterState, LoraFactors
from fedlora.config import LoraConfig


def one_module(
    a: list[list[float]], b: list[list[float]], alpha: float, head: list[float]
) -> AdapterState:
    return AdapterState(
        lora={"q": LoraFactors(torch.tensor(a), torch.tensor(b), alpha)},
        extra={"classifier.bias": torch.tensor(head)},
    )


def test_registry_lists_fedavg() -> None:
    assert "fedavg" in aggregation.available()
    with pytest.raises(ValueError, match=r"server\.aggregator: unknown name 'nope'"):
        aggregation.create("nope", LoraConfig())


def test_weighted_average_by_hand() -> None:
    agg = aggregation.create("fedavg", LoraConfig(r=1, alpha=2.0))
    s1 = one_module([[1.0, 2.0]], [[1.0], [0.0]], 2.0, [1.0, 0.0])
    s2 = one_module([[3.0, 6.0]], [[0.0], [4.0]], 2.0, [0.0, 1.0])
    merged = agg.combine([s1, s2], [0.25, 0.75])
    assert torch.equal(merged.lora["q"].A, torch.tensor([[2.5, 5.0]]))
    assert torch.equal(merged.lora["q"].B, torch.tensor([[0.25], [3.0]]))
    assert torch.equal(merged.extra["classifier.bias"], torch.tensor([0.25, 0.75]))
    assert merged.lora["q"].alpha == 2.0


def test_alpha_is_folded_into_b() -> None:
    """A client trained with alpha 4 contributes twice the effective B of one with alpha 2."""
    agg = aggregation.create("fedavg", LoraConfig(r=1, alpha=2.0))
    s1 = one_module([[1.0]], [[1.0]], 4.0, [0.0])  # effective B = 4
    s2 = one_module([[1.0]], [[1.0]], 2.0, [0.0])  # effective B = 2
    merged = agg.combine([s1, s2], [0.5, 0.5])
    assert merged.lora["q"].scaling * merged.lora["q"].B.item() == pytest.approx(3.0)


def test_same_rank_only() -> None:
    agg = aggregation.create("fedavg", LoraConfig(r=2))
    agg.check_ranks([2, 2, 2])
    with pytest.raises(
        ValueError,
        match=r"server\.aggregator: fedavg merges same-rank LoRA only, client ranks are \[2, 4\]",
    ):
        agg.check_ranks([2, 4])
    s2 = one_module([[1.0], [1.0]], [[1.0, 1.0]], 2.0, [0.0])
    with pytest.raises(ValueError, match="rank-1 client"):
        agg.project(s2, 1)
    assert agg.project(s2, 2) is s2
