"""AdapterState ⇄ Flower records: exact round trips, float16 on request, bf16 never on the wire,
malformed records rejected with a reason."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.adapters import AdapterState, InvalidUpdate, LoraFactors
from fedlora.flower.records import (
    JobFields,
    ResultFields,
    get_state,
    payload_bytes,
    put_state,
)


def make_state(ranks: list[int], dtype: torch.dtype = torch.float32, seed: int = 0) -> AdapterState:
    g = torch.Generator().manual_seed(seed)
    lora = {
        f"layer.{i}.query": LoraFactors(
            torch.randn(r, 6, generator=g).to(dtype),
            torch.randn(5, r, generator=g).to(dtype),
            2.0 * r,
        )
        for i, r in enumerate(ranks)
    }
    frozen = {"layer.0.value": LoraFactors(torch.randn(3, 6, generator=g), torch.zeros(5, 3), 6.0)}
    head = {"classifier.weight": torch.randn(2, 6, generator=g).to(dtype)}
    return AdapterState(lora=lora, extra=head, frozen=frozen)


def round_trip(state: AdapterState, wire_dtype: str = "float32") -> AdapterState:
    content = RecordDict()
    put_state(content, state, wire_dtype)
    return get_state(content)


def assert_same(a: AdapterState, b: AdapterState) -> None:
    assert a.lora.keys() == b.lora.keys() and a.frozen.keys() == b.frozen.keys()
    for mine, theirs in [(a.lora, b.lora), (a.frozen, b.frozen)]:
        for module, f in mine.items():
            assert torch.equal(f.A, theirs[module].A) and torch.equal(f.B, theirs[module].B)
            assert f.alpha == theirs[module].alpha
    assert a.extra.keys() == b.extra.keys()
    assert all(torch.equal(t, b.extra[k]) for k, t in a.extra.items())


@settings(max_examples=25, deadline=None)
@given(ranks=st.lists(st.integers(1, 8), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_float32_round_trip_is_exact_for_any_ranks(ranks: list[int], seed: int) -> None:
    state = make_state(ranks, seed=seed)
    back = round_trip(state)
    assert_same(back, state)
    assert all(t.dtype == torch.float32 for t in back.tensors())


def test_float16_on_the_wire_is_the_float16_rounding() -> None:
    state = make_state([2, 4])
    back = round_trip(state, "float16")
    rounded = AdapterState(
        lora={
            m: LoraFactors(f.A.half().float(), f.B.half().float(), f.alpha)
            for m, f in state.lora.items()
        },
        extra={k: t.half().float() for k, t in state.extra.items()},
        frozen={
            m: LoraFactors(f.A.half().float(), f.B.half().float(), f.alpha)
            for m, f in state.frozen.items()
        },
    )
    assert_same(back, rounded)
    assert not torch.equal(back.lora["layer.0.query"].A, state.lora["layer.0.query"].A)


def test_bf16_state_travels_as_float32() -> None:
    state = make_state([4], dtype=torch.bfloat16)
    content = RecordDict()
    put_state(content, state)
    assert {a.dtype for r in content.array_records.values() for a in r.values()} == {"float32"}
    assert torch.equal(
        get_state(content).lora["layer.0.query"].A, state.lora["layer.0.query"].A.float()
    )


def test_payload_bytes_count_every_array_at_its_wire_width() -> None:
    state = make_state([2, 8])
    wide, narrow = RecordDict(), RecordDict()
    put_state(wide, state, "float32")
    put_state(narrow, state, "float16")
    headers = payload_bytes(wide) - state.num_bytes()  # NumPy headers, one per array
    assert 0 < headers < 200 * len(state.tensors())
    assert payload_bytes(narrow) - headers == state.num_bytes() // 2


def test_malformed_records_are_an_invalid_update_with_a_reason() -> None:
    content = RecordDict()
    put_state(content, make_state([2]))
    del content.config_records["adapter.alphas"]
    with pytest.raises(InvalidUpdate, match="unreadable adapter records"):
        get_state(content)
    lonely = RecordDict()
    put_state(lonely, make_state([2]))
    del lonely.array_records["adapter"]["base_model.model.layer.0.query.lora_B.weight"]
    with pytest.raises(InvalidUpdate, match="lora_A only"):
        get_state(lonely)


def test_job_and_result_fields_round_trip() -> None:
    content = RecordDict()
    JobFields(job=7, client=3, version=2, rank=8).put(content)
    ResultFields(job=7, examples=32, loss=0.625).put(content)
    assert JobFields.get(content) == JobFields(7, 3, 2, 8)
    assert ResultFields.get(content) == ResultFields(7, 32, 0.625)
