"""AdapterState: PEFT and byte round trips, validation of what clients send."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate, LoraFactors


def make_state(rank: int = 2, alpha: float = 4.0, seed: int = 0) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {
        "enc.0.query": LoraFactors(
            torch.randn(rank, 5, generator=g), torch.randn(3, rank, generator=g), alpha
        ),
        "enc.0.value": LoraFactors(
            torch.randn(rank, 5, generator=g), torch.randn(4, rank, generator=g), alpha
        ),
    }
    extra = {"classifier.weight": torch.randn(2, 5, generator=g), "classifier.bias": torch.zeros(2)}
    return AdapterState(lora=lora, extra=extra)


def assert_same(a: AdapterState, b: AdapterState) -> None:
    assert a.lora.keys() == b.lora.keys() and a.extra.keys() == b.extra.keys()
    for m in a.lora:
        assert torch.equal(a.lora[m].A, b.lora[m].A) and torch.equal(a.lora[m].B, b.lora[m].B)
        assert a.lora[m].alpha == b.lora[m].alpha
    for n in a.extra:
        assert torch.equal(a.extra[n], b.extra[n])


def test_delta_applies_peft_scaling() -> None:
    f = LoraFactors(A=torch.tensor([[1.0, 2.0]]), B=torch.tensor([[3.0], [4.0]]), alpha=2.0)
    assert f.scaling == 2.0
    assert torch.equal(f.delta(), torch.tensor([[6.0, 12.0], [8.0, 16.0]]))


def test_peft_state_dict_keys_and_round_trip() -> None:
    state = make_state()
    peft = state.to_peft_state_dict()
    assert "base_model.model.enc.0.query.lora_A.weight" in peft
    assert "base_model.model.enc.0.value.lora_B.weight" in peft
    assert "base_model.model.classifier.bias" in peft
    assert_same(AdapterState.from_peft_state_dict(peft, 4.0), state)


def test_bytes_round_trip_keeps_per_module_alphas() -> None:
    state = make_state()
    mixed = AdapterState(
        lora={
            **state.lora,
            "enc.0.value": LoraFactors(
                state.lora["enc.0.value"].A, state.lora["enc.0.value"].B, 8.0
            ),
        },
        extra=state.extra,
    )
    restored = AdapterState.from_bytes(mixed.to_bytes())
    assert_same(restored, mixed)
    assert restored.lora["enc.0.value"].alpha == 8.0


def test_num_bytes_counts_every_float() -> None:
    state = make_state(rank=2)
    floats = 2 * 5 + 3 * 2 + 2 * 5 + 4 * 2 + 2 * 5 + 2
    assert state.num_bytes() == 4 * floats


def test_garbage_bytes_are_an_invalid_update() -> None:
    with pytest.raises(InvalidUpdate, match="unreadable"):
        AdapterState.from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


def test_mixed_ranks_have_no_single_rank() -> None:
    state = make_state()
    q = state.lora["enc.0.query"]
    mixed = AdapterState(
        {**state.lora, "enc.0.query": LoraFactors(q.A[:1], q.B[:, :1], q.alpha)}, state.extra
    )
    with pytest.raises(ValueError, match="ranks"):
        _ = mixed.rank


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda s: AdapterState({**s.lora, "enc.9.key": s.lora["enc.0.query"]}, s.extra),
            "unknown module 'enc.9.key'",
        ),
        (
            lambda s: AdapterState({"enc.0.query": s.lora["enc.0.query"]}, s.extra),
            "missing module 'enc.0.value'",
        ),
        (
            lambda s: AdapterState(
                {
                    **s.lora,
                    "enc.0.query": LoraFactors(
                        s.lora["enc.0.query"].A[:1], s.lora["enc.0.query"].B[:, :1], 4.0
                    ),
                },
                s.extra,
            ),
            r"lora_A has shape \(1, 5\), expected \(2, 5\)",
        ),
        (
            lambda s: AdapterState(
                {
                    **s.lora,
                    "enc.0.query": LoraFactors(s.lora["enc.0.query"].A, torch.zeros(7, 2), 4.0),
                },
                s.extra,
            ),
            r"lora_B has shape \(7, 2\)",
        ),
        (
            lambda s: AdapterState(
                s.lora, {**s.extra, "classifier.bias": torch.tensor([math.nan, 0.0])}
            ),
            "classifier.bias: contains NaN or Inf",
        ),
        (
            lambda s: AdapterState(
                {
                    **s.lora,
                    "enc.0.value": LoraFactors(
                        s.lora["enc.0.value"].A * math.inf, s.lora["enc.0.value"].B, 4.0
                    ),
                },
                s.extra,
            ),
            "NaN or Inf",
        ),
        (
            lambda s: AdapterState(s.lora, {"classifier.weight": s.extra["classifier.weight"]}),
            "missing head tensor 'classifier.bias'",
        ),
        (
            lambda s: AdapterState(s.lora, {**s.extra, "classifier.weight": torch.zeros(3, 5)}),
            r"classifier.weight: shape \(3, 5\)",
        ),
        (
            lambda s: AdapterState(
                {
                    **s.lora,
                    "enc.0.query": LoraFactors(
                        s.lora["enc.0.query"].A, s.lora["enc.0.query"].B, -1.0
                    ),
                },
                s.extra,
            ),
            "alpha -1.0",
        ),
    ],
)
def test_validation_names_the_problem(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    state = make_state()
    spec = AdapterSpec.of(state)
    spec.validate(state, rank=2)  # the reference itself is fine
    with pytest.raises(InvalidUpdate, match=reason):
        spec.validate(mutate(state), rank=2)


def test_frozen_factors_travel_in_bytes_but_not_in_peft_keys() -> None:
    state = make_state()
    frozen = make_state(rank=5, alpha=10.0, seed=1).lora
    with_frozen = AdapterState(state.lora, state.extra, frozen=frozen)
    assert with_frozen.to_peft_state_dict() == state.to_peft_state_dict()
    assert with_frozen.num_bytes() == state.num_bytes() + sum(
        (f.A.numel() + f.B.numel()) * 4 for f in frozen.values()
    )
    restored = AdapterState.from_bytes(with_frozen.to_bytes())
    assert_same(restored, state)
    assert_same(AdapterState(restored.frozen, {}), AdapterState(frozen, {}))
