"""A logistic-regression learner behind the simulator's learner protocol.

Comparing server policies needs many draws of client speeds (the speedup of an asynchronous
policy over FedAvg is mostly the draw), and a language model costs minutes per run. This
learner costs milliseconds per job, so twenty draws of a policy comparison take seconds, while
the simulator, the policies and the aggregators run unchanged.

The model is w ∈ R^(features+1) (the last entry a bias), kept in the adapter's head tensor
``weights``, so every aggregator averages it exactly; a LoRA module of zeros rides along
untouched because an adapter has at least one. Each client holds synthetic examples from one
logistic model, either IID or label-skewed (each client's share of positives drawn from
Beta(skew, skew), the two-label Dirichlet). Local training is plain SGD over the batches
planned at dispatch, with the experiment's ``train`` settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.client.protocol import ClientEvaluation, LocalResult
from fedlora.client.trainer import plan_batches
from fedlora.config import ExperimentConfig

WEIGHTS = "weights"


@dataclass(frozen=True)
class FastTask:
    """The synthetic data: sizes, how separable it is, and how skewed its labels are."""

    features: int = 20
    examples_per_client: int = 200
    dev_examples: int = 4000
    signal: float = 2.0  # norm of the true weights: higher is more separable
    skew: float | None = None  # Beta(skew, skew) share of positives per client; None: IID
    tokens_per_example: int = 128  # what a job is charged in the cost model
    seed: int = 0


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _log_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ w
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


class FastLearner:
    """Per-client synthetic examples and SGD on a logistic model, in numpy."""

    def __init__(self, config: ExperimentConfig, task: FastTask) -> None:
        self.config = config
        self.task = task
        rng = np.random.default_rng(task.seed)
        direction = rng.standard_normal(task.features)
        self.true_weights = task.signal * direction / np.linalg.norm(direction)
        xs, ys, self.indices = [], [], []
        start = 0
        for _ in range(config.clients.num):
            x, y = self._client_examples(rng)
            self.indices.append(np.arange(start, start + len(y)))
            start += len(y)
            xs.append(x)
            ys.append(y)
        self.x = _with_bias(np.concatenate(xs))
        self.y = np.concatenate(ys)
        dev_x, self.dev_y = self._draw(rng, task.dev_examples)
        self.dev_x = _with_bias(dev_x)

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, self.task.features))
        p = 1.0 / (1.0 + np.exp(-x @ self.true_weights))
        return x, (rng.random(n) < p).astype(np.float64)

    def _client_examples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = self.task.examples_per_client
        x, y = self._draw(rng, 6 * n)  # enough of each label for any share
        if self.task.skew is None:
            return x[:n], y[:n]
        positives = round(n * rng.beta(self.task.skew, self.task.skew))
        chosen = np.concatenate(
            [np.flatnonzero(y == 1)[:positives], np.flatnonzero(y == 0)[: n - positives]]
        )
        return x[chosen], y[chosen]

    def initial_state(self) -> AdapterState:
        rank = self.config.global_rank
        lora = LoraFactors(
            torch.zeros(rank, 1), torch.zeros(1, rank), self.config.lora.alpha_at(rank)
        )
        weights = torch.zeros(self.task.features + 1, dtype=torch.float64)
        return AdapterState({"unused": lora}, {WEIGHTS: weights})

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]:
        return plan_batches(self.indices[client], self.config.train, rng)

    def tokens(self, batches: Sequence[np.ndarray]) -> int:
        return sum(len(b) for b in batches) * self.task.tokens_per_example

    def train(self, start: AdapterState, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        w = start.extra[WEIGHTS].numpy().copy()
        losses = []
        for batch in batches:
            x, y = self.x[batch], self.y[batch]
            losses.append(_log_loss(w, x, y))
            w -= self.config.train.lr * x.T @ (1.0 / (1.0 + np.exp(-x @ w)) - y) / len(batch)
        state = AdapterState(start.lora, {WEIGHTS: torch.from_numpy(w)})
        examples = sum(len(b) for b in batches)
        return LocalResult(
            state=state, loss=float(np.mean(losses)), examples=examples, steps=len(batches)
        )

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        w = state.extra[WEIGHTS].numpy()
        accuracy = float(np.mean((self.dev_x @ w > 0) == (self.dev_y == 1)))
        return {"accuracy": accuracy, "loss": _log_loss(w, self.dev_x, self.dev_y)}

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None:
        return None

    def reference(self, steps: int = 500, lr: float = 1.0) -> dict[str, float]:
        """The dev scores of full-batch gradient descent on every client's examples pooled:
        what a federation can at best approach."""
        w = np.zeros(self.x.shape[1])
        for _ in range(steps):
            w -= lr * self.x.T @ (1.0 / (1.0 + np.exp(-self.x @ w)) - self.y) / len(self.y)
        return self.evaluate(AdapterState({}, {WEIGHTS: torch.from_numpy(w)}))
