"""One hostile client of four, on a tiny random BERT: through the simulator and through the real
ServerApp loop with the real ClientApp over the in-process Grid. Whatever it sends, the run
finishes, its updates are rejected or clipped and counted, and the global stays finite; with
the median on, the global stays near the honest-only run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import wall_clock
from flwr.app import Context, Message
from local_grid import ClientCall, LocalGrid

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.client.protocol import LocalResult
from fedlora.config import build_config
from fedlora.experiment import prepare
from fedlora.flower.client_app import app as client_app
from fedlora.flower.records import get_state, put_state
from fedlora.flower.server_app import run_federation
from fedlora.outcome import Outcome
from fedlora.results.events import EventLog
from fedlora.sim.engine import build_simulation
from fedlora.sim.jobs import InProcess, Job

HOSTILE = 1
Attack = Callable[[AdapterState, AdapterState], AdapterState | bytes]


def huge_entry(state: AdapterState, sent: AdapterState) -> AdapterState:
    """One finite entry of 3e38 in a lora_B: below float32's overflow, above any training."""
    module, factors = next(iter(state.lora.items()))
    b = factors.B.clone()
    b[0, 0] = 3e38
    return replace(state, lora={**state.lora, module: replace(factors, B=b)})


def huge_alphas(state: AdapterState, sent: AdapterState) -> AdapterState:
    """The tensors unchanged, every alpha ×1e30: the product, not the tensors, is huge."""
    lora = {m: replace(f, alpha=f.alpha * 1e30) for m, f in state.lora.items()}
    return replace(state, lora=lora)


def nested_alphas(state: AdapterState, sent: AdapterState) -> bytes:
    """The alphas' JSON nested 100,000 deep."""
    data = state.to_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["fedlora.alphas"] = "[" * 100_000 + "]" * 100_000
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + header_len :]


def along(factor: float) -> Attack:
    """sent + factor·(update − sent), tensor by tensor: −1 flips the update, 100 scales it."""

    def attack(state: AdapterState, sent: AdapterState) -> AdapterState:
        def moved(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return old + factor * (new - old)

        lora = {
            m: LoraFactors(moved(f.A, sent.lora[m].A), moved(f.B, sent.lora[m].B), f.alpha)
            for m, f in state.lora.items()
        }
        extra = {n: moved(t, sent.extra[n]) for n, t in state.extra.items()}
        return replace(state, lora=lora, extra=extra)

    return attack


REJECTED = {"huge-entry": huge_entry, "huge-alphas": huge_alphas}
ATTACKS: dict[str, Attack] = {
    **REJECTED,
    "nested-alphas": nested_alphas,
    "sign-flip": along(-1.0),
    "scaled-x100": along(100.0),
}


class Hostile(InProcess):
    """The in-process job runner, with client ``HOSTILE``'s results tampered by ``attack``."""

    def __init__(self, learner: object, attack: Attack | None) -> None:
        super().__init__(learner)  # type: ignore[arg-type]
        self.attack = attack

    def result(self, job: Job, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        result = super().result(job, batches, seed)
        if job.client != HOSTILE or self.attack is None:
            return result
        return replace(result, state=self.attack(result.state, job.sent))  # type: ignore[arg-type]


@pytest.fixture
def hostile_config(tiny_config: dict) -> dict:
    tiny_config["server"] |= {"per_round": 4}  # every client, every round
    return tiny_config


def simulate(raw: dict, attack: Attack | None, seed: int = 0) -> Outcome:
    config = build_config(raw | {"seed": seed})
    prepared = prepare(config)
    sizes = [len(c) for c in prepared.data.client_train]
    runner = Hostile(prepared.learner, attack)
    return build_simulation(config, prepared.learner, sizes, EventLog(), runner=runner).run()


def finite(state: AdapterState) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.tensors())


def distance(state: AdapterState, other: AdapterState) -> float:
    """‖ΔW − ΔW'‖ over every module and head tensor."""
    pairs = [(f.delta(), other.lora[m].delta()) for m, f in state.lora.items()]
    pairs += [(t, other.extra[n]) for n, t in state.extra.items()]
    return math.sqrt(sum(float(((a.double() - b.double()) ** 2).sum()) for a, b in pairs))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_simulated_run_finishes_and_counts_the_hostile_updates(
    hostile_config: dict, name: str
) -> None:
    hostile_config["server"] |= {"max_update_norm": 1.0, "norm_action": "clip"}
    outcome = simulate(hostile_config, ATTACKS[name])
    assert outcome.rounds == 3 and finite(outcome.global_state)
    assert math.isfinite(outcome.evaluations[-1].metrics["loss"])
    if name == "scaled-x100":
        assert outcome.clipped == 3  # the hostile client's, every round
    elif name == "sign-flip":  # as large as an honest update: within the bound, accepted
        assert outcome.accepted == 12 and outcome.clipped == 0
    else:
        assert outcome.rejected == 3  # the hostile client's, every round
        assert outcome.accepted == 9


@pytest.mark.slow
def test_the_median_keeps_the_global_nearer_the_honest_run_than_another_seed(
    hostile_config: dict,
) -> None:
    """Clipping bounds a sign flip or a scaled update, it does not remove them; the median of
    four results, one hostile, does."""
    hostile_config["server"] |= {"defence": {"centre": "median"}}
    honest = simulate(hostile_config, None).global_state
    other_seed = simulate(hostile_config, None, seed=1).global_state
    for attack in (along(-1.0), along(100.0)):
        attacked = simulate(hostile_config, attack).global_state
        assert distance(attacked, honest) < distance(other_seed, honest)
    undefended = dict(hostile_config, server=hostile_config["server"] | {"defence": {}})
    scaled = simulate(undefended, along(100.0)).global_state
    assert distance(scaled, honest) > distance(other_seed, honest)  # the attack is real


def tampering(attack: Attack) -> ClientCall:
    """The real ClientApp, with its reply's adapter tampered by ``attack``."""

    def call(message: Message, context: Context) -> Message | None:
        reply = client_app(message, context)
        if message.metadata.message_type == "query" or reply is None:
            return reply
        state = attack(get_state(reply.content), get_state(message.content))
        if isinstance(state, bytes):  # records carry alphas as config values: nest them there
            alphas = reply.content.config_records["adapter.alphas"]
            alphas[next(iter(alphas))] = "[" * 100_000 + "]" * 100_000
            return reply
        put_state(reply.content, state)
        return reply

    return call


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_server_app_finishes_and_counts_the_hostile_updates(
    tmp_path: Path, hostile_config: dict, name: str
) -> None:
    hostile_config["server"] |= {"max_update_norm": 1.0, "norm_action": "clip"}
    config = build_config(wall_clock(hostile_config))
    calls: dict[int, ClientCall] = {k: client_app for k in range(4)}
    grid = LocalGrid(calls | {HOSTILE: tampering(ATTACKS[name])})
    summary = run_federation(grid, config, tmp_path / "run", wait_s=1.0)
    assert summary.rounds == 3 and math.isfinite(summary.final.metrics["loss"])
    global_state = AdapterState.from_bytes((tmp_path / "run" / "global.safetensors").read_bytes())
    assert finite(global_state)
    if name == "scaled-x100":
        assert summary.updates_clipped == 3
    elif name == "sign-flip":
        assert summary.updates_rejected == summary.updates_clipped == 0
    elif name == "nested-alphas":  # unreadable records: a malformed reply, its job lost
        assert summary.jobs_lost == 3
    else:
        assert summary.updates_rejected == 3


def test_a_merge_that_goes_non_finite_keeps_the_last_finite_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last line behind the screen: should a merge ever raise or give NaN, the global
    stays the last finite one, the merge's results count as rejected, and the run goes on."""
    from fakes import FakeLearner
    from fakes import config as fake_config
    from fakes import simulate as fake_simulate

    from fedlora.aggregation.fedavg import FedAvg

    merges = 0
    combine = FedAvg.combine

    def second_merge_fails(self: FedAvg, terms: Sequence) -> AdapterState:
        nonlocal merges
        merges += 1
        merged = combine(self, terms)
        if merges == 2:
            return replace(merged, extra={n: t * math.nan for n, t in merged.extra.items()})
        if merges == 3:
            raise torch.linalg.LinAlgError("the algorithm failed to converge")
        return merged

    monkeypatch.setattr(FedAvg, "combine", second_merge_fails)
    outcome, events = fake_simulate(
        fake_config(server={"per_round": 2, "rounds": 4}), FakeLearner([3, 4, 5, 6])
    )
    refused = [e for e in events if e["type"] == "merge_refused"]
    assert [e["version"] for e in refused] == [2, 3]
    assert "non-finite" in refused[0]["reason"] and "LinAlgError" in refused[1]["reason"]
    assert outcome.rejected == 4 and outcome.rounds == 4 and finite(outcome.global_state)
