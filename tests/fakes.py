"""A fake learner and helpers for simulator tests: cheap, deterministic, checkable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.aggregation import WeightedState
from fedlora.cli import app
from fedlora.client.protocol import ClientEvaluation, LocalResult
from fedlora.config import ExperimentConfig, build_config
from fedlora.data.encoding import EncodedSplit
from fedlora.outcome import Outcome
from fedlora.policies import Policy, Source
from fedlora.profiles import ClientProfile
from fedlora.results.events import EventLog, read_events
from fedlora.sim.engine import build_simulation


class FakeLearner:
    """Each job adds its seed-derived value to A: cheap, deterministic, checkable."""

    def __init__(
        self,
        sizes: Sequence[int],
        poison: set[int] = frozenset(),  # type: ignore[assignment]
        local: bool = False,
    ) -> None:
        self.local = local
        self.indices = []
        start = 0
        for n in sizes:
            self.indices.append(np.arange(start, start + n))
            start += n
        self.poison = poison
        self.trained: list[int] = []

    def initial_state(self) -> AdapterState:
        return AdapterState(
            {"m": LoraFactors(torch.zeros(2, 3), torch.ones(4, 2), 4.0)}, {"h": torch.zeros(2)}
        )

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [rng.permutation(self.indices[client])[:2]]

    def tokens(self, batches: Sequence[np.ndarray]) -> int:
        return int(sum(10 * (b + 1).sum() for b in batches))

    def train(self, start: AdapterState, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        client = next(c for c, idx in enumerate(self.indices) if batches[0][0] in idx)
        self.trained.append(client)
        bump = float(seed % 97) / 97 if client not in self.poison else float("nan")
        f = start.lora["m"]
        state = AdapterState(
            {"m": LoraFactors(f.A + bump, f.B, f.alpha)}, {"h": start.extra["h"] + 1}
        )
        return LocalResult(state=state, loss=bump, examples=2, steps=1)

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        return {"accuracy": float(state.lora["m"].A.mean()), "loss": 0.0}

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None:
        """With ``local`` set: the client's own score is its id, its dev score the global's."""
        if not self.local:
            return None
        return ClientEvaluation(own={"accuracy": float(client)}, dev=self.evaluate(state))


def config(**sections: Any) -> ExperimentConfig:
    raw: dict[str, Any] = {
        "lora": {"r": 2, "alpha": 4.0},
        "clients": {"num": 4, "speed": {"distribution": "pareto", "alpha": 1.0, "cap": 20}},
        "server": {"rounds": 3},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return build_config(raw)


def simulate(
    cfg: ExperimentConfig,
    learner: FakeLearner,
    policy: Policy | None = None,
    profiles: Sequence[ClientProfile] | None = None,
) -> tuple[Outcome, list[dict]]:
    log = EventLog()
    simulation = build_simulation(
        cfg, learner, [len(i) for i in learner.indices], log, profiles=profiles, policy=policy
    )
    return simulation.run(), log.records


def deterministic(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall"} for e in events]


def run_cli(tmp_path: Path, raw: dict, out: Path, *extra: str) -> None:
    """``fedlora run`` on ``raw`` written as a YAML file, into ``out``; it must succeed."""
    config_file = tmp_path / f"{out.name}.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app, ["run", str(config_file), "--out", str(out), "--quiet", *extra]
    )
    assert result.exit_code == 0, result.output


def wall_clock(raw: dict) -> dict:
    """``raw`` less the simulator's speed draw, which the wall-clock Flower runtime refuses
    (real nodes train at their own speed)."""
    raw["clients"].pop("speed", None)
    return raw


def delta_terms(
    global_state: AdapterState, jobs: Sequence[tuple[AdapterState, AdapterState, float]]
) -> list[WeightedState]:
    """The terms of a delta-update merge: G + Σ_k w_k (U_k − S_k), each pair tagged by job."""
    terms = [WeightedState(global_state, 1.0, Source.GLOBAL)]
    for job, (update, sent, weight) in enumerate(jobs):
        terms += [
            WeightedState(update, weight, Source.UPDATE, job),
            WeightedState(sent, -weight, Source.SENT, job),
        ]
    return terms


def stock_peft_accuracy(adapter: Path, raw: dict) -> float:
    """Dev accuracy of ``adapter`` loaded with stock PEFT onto the tiny random base a user
    rebuilds from the config (same seed, same sizes), as a user of the exported folder would."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from fedlora.client.model import model_path

    torch.manual_seed(raw["seed"])
    base_config = AutoConfig.from_pretrained(
        model_path(None),
        num_labels=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    base = AutoModelForSequenceClassification.from_config(base_config)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path(None))
    dev_lines = Path(raw["data"]["files"]["dev"]).read_text().splitlines()[1:]
    dev = [line.split(",") for line in dev_lines]
    batch = tokenizer(
        [a for a, _, _ in dev], [b for _, b, _ in dev], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1).numpy()
    labels = np.array([1 if label == "same" else 0 for _, _, label in dev])
    return float((predictions == labels).mean())


def merged_jobs(run: Path) -> list[list[int]]:
    """The jobs each merge of a run folder took, in order."""
    return [sorted(e["jobs"]) for e in read_events(run / "events.jsonl") if e["type"] == "merge"]


# Two runs of the same jobs whose float32 arithmetic differs in the last bits (another
# process, thread count or summation order) do not train bit for bit alike: Adam turns a
# gradient coordinate within rounding of zero into a full step of either sign, so a single
# entry of ΔW can differ by percents (seen: 2.6 % at one entry of 1,024, 1.1e-5 absolute).
# The model as a whole moves by ε₃₂-level noise plus those few coordinates (seen: at most
# 6.4e-5 of ‖ΔW‖, under Ray against in-process); a merge that misses or doubles one of a
# window's updates moves it by a sizeable fraction of ‖ΔW‖. 1e-3 separates the two.
SAME_MODEL_TOLERANCE = 1e-3


def assert_same_global(run: Path, other: Path) -> None:
    """Two runs' global adapters are the same model: per module ‖ΔW − ΔW'‖ ≤ 1e-3·‖ΔW'‖
    (compared as products: the factors of an HLoRA merge follow the floats that made them),
    and the same for the head tensors."""
    ours, theirs = (
        AdapterState.from_bytes((folder / "global.safetensors").read_bytes())
        for folder in (run, other)
    )
    assert ours.lora.keys() == theirs.lora.keys()
    assert ours.extra.keys() == theirs.extra.keys()
    pairs = [(f.delta(), theirs.lora[m].delta(), m) for m, f in ours.lora.items()]
    pairs += [(t, theirs.extra[name], name) for name, t in ours.extra.items()]
    for mine, reference, name in pairs:
        distance = float(torch.linalg.norm(mine.double() - reference.double()))
        size = float(torch.linalg.norm(reference.double()))
        assert distance <= SAME_MODEL_TOLERANCE * size, f"{name}: {distance:.3g} of {size:.3g}"


def tiny_data(n: int = 24) -> EncodedSplit:
    """``n`` encoded examples of 4 to 11 random token ids, labels alternating."""
    g = torch.Generator().manual_seed(0)
    ids = [
        torch.randint(1000, 2000, (int(k),), generator=g)
        for k in torch.randint(4, 12, (n,), generator=g)
    ]
    return EncodedSplit(input_ids=ids, token_type_ids=None, labels=torch.arange(n) % 2)
