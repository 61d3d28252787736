"""The wire path under attack: whatever bytes a client sends, the server rejects and counts
what is not a well-formed update, never crashes, and merges nothing it rejected."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from fakes import FakeLearner, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from fedlora import aggregation, policies
from fedlora.adapters import AdapterSpec, AdapterState, InvalidUpdate, LoraFactors
from fedlora.results.events import EventLog
from fedlora.server import ServerCore
from fedlora.server.screening import screen, update_distance


def _state(scale: float = 1.0, rank: int = 2) -> AdapterState:
    g = torch.Generator().manual_seed(rank)
    lora = {
        m: LoraFactors(torch.randn(rank, 3, generator=g), torch.randn(4, rank, generator=g), 4.0)
        for m in ("layer.0.query", "layer.0.value")
    }
    return AdapterState(lora=lora, extra={"head.weight": torch.randn(2, 4, generator=g) * scale})


SENT = _state()
SPEC = AdapterSpec.of(SENT)
VALID = _state(1.1).to_bytes()


def _header(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _lying_header(data: st.DataObject) -> bytes:
    """A valid payload whose header lies: about a dtype, a shape, offsets or the metadata."""
    header, payload = _header(VALID)
    key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    lie = data.draw(st.sampled_from(["dtype", "shape", "offsets", "alphas", "length"]))
    if lie == "dtype":
        header[key]["dtype"] = data.draw(st.sampled_from(["I64", "BOOL", "BF16", "F16", "U8"]))
    elif lie == "shape":
        header[key]["shape"] = data.draw(st.lists(st.integers(0, 10**6), max_size=3))
    elif lie == "offsets":
        header[key]["data_offsets"] = data.draw(st.lists(st.integers(0, 2**40), max_size=3))
    elif lie == "alphas":
        header["__metadata__"]["fedlora.alphas"] = data.draw(
            st.sampled_from(["[1, 2]", '{"x": "4"}', "not json", '{"layer.0.query": true}'])
        )
    else:
        return struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + VALID[8:]
    return _with_header(header, payload)


def _bad_tensors(data: st.DataObject) -> bytes:
    """Well-formed bytes of an ill-formed update: a key extra or missing, wrong dtype, shape or
    rank, NaN/Inf."""
    tensors = dict(_state(1.1).to_peft_state_dict())
    header, _ = _header(VALID)
    key = data.draw(st.sampled_from(sorted(tensors)))
    fault = data.draw(st.sampled_from(["extra", "missing", "dtype", "shape", "nan", "inf"]))
    if fault == "extra":
        tensors["base_model.model.layer.9.key.lora_A.weight"] = torch.zeros(2, 3)
        tensors["base_model.model.layer.9.key.lora_B.weight"] = torch.zeros(4, 2)
    elif fault == "missing":
        del tensors[key]
    elif fault == "dtype":
        tensors[key] = tensors[key].to(data.draw(st.sampled_from([torch.float16, torch.int64])))
    elif fault == "shape":
        tensors[key] = torch.zeros(*[d + 1 for d in tensors[key].shape])
    else:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float(fault)
    return save_safetensors(tensors, metadata=header["__metadata__"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_malformed_payload_is_an_invalid_update(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["random", "truncated", "lying", "tensors"]))
    if kind == "random":
        payload = data.draw(st.binary(max_size=600))
    elif kind == "truncated":
        payload = VALID[: data.draw(st.integers(0, len(VALID) - 1))]
    elif kind == "lying":
        payload = _lying_header(data)
    else:
        payload = _bad_tensors(data)
    with pytest.raises(InvalidUpdate):
        screen(payload, SPEC, SENT)


def test_a_valid_payload_round_trips_exactly() -> None:
    screened = screen(VALID, SPEC, SENT)
    assert screened.state.to_bytes() == VALID and screened.clipped_from is None


def test_a_huge_finite_update_is_rejected_or_clipped_to_the_bound() -> None:
    overflowing = AdapterState(lora=SENT.lora, extra={"head.weight": torch.full((2, 4), 3e38)})
    with pytest.raises(InvalidUpdate, match="beyond any training"):
        screen(overflowing, SPEC, SENT)  # finite in float32, and far beyond any training
    huge = _state(1e3)
    with pytest.raises(InvalidUpdate, match=r"exceeds server\.max_update_norm 10"):
        screen(huge, SPEC, SENT, max_norm=10.0)
    clipped = screen(huge, SPEC, SENT, max_norm=10.0, action="clip")
    assert clipped.clipped_from == pytest.approx(update_distance(huge, SENT))  # same float64 sum
    # the clip is found in float64 and stored in float32 (½ε₃₂ of head entries ≲ 10): the
    # distance of 10 moves by ≲ ε₃₂·‖head‖ ≈ 2e-6, 2e-7 of it
    assert update_distance(clipped.state, SENT) == pytest.approx(10.0, rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_the_server_core_counts_every_bad_update_and_merges_nothing(
    payloads: list[bytes],
) -> None:
    cfg = config(server={"policy": "fedfa", "concurrency": 4, "window": 1, "rounds": 50})
    learner = FakeLearner([3, 3, 3, 3])
    clients = [policies.ClientInfo(c, 3) for c in range(4)]
    core = ServerCore(
        cfg,
        aggregation.create("fedavg", cfg.lora, cfg.global_rank),
        policies.create("fedfa", cfg.server, clients, cfg.seed),
        learner.initial_state(),
        [2] * 4,
        learner,
        EventLog(),
    )
    before = core.outcome.global_state.to_bytes()
    sends = core.start(0.0)
    for t, payload in enumerate(payloads, start=1):
        send = sends.pop(0)
        core.sent(send, 0.0)
        sends += core.arrival(send.job, payload, 2, 0.5, float(t))
    assert core.outcome.rejected == len(payloads) and core.outcome.accepted == 0
    assert core.outcome.steps == 0 and core.outcome.global_state.to_bytes() == before
    assert core.arrival(10_000, VALID, 2, 0.5, 99.0) == []  # no such job: rejected, counted
    assert core.outcome.rejected == len(payloads) + 1
