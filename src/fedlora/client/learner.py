"""The model side of a simulation: plans, trains and evaluates jobs on the resident backbone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlora.adapters import AdapterState
from fedlora.client.model import ResidentModel
from fedlora.client.protocol import ClientEvaluation, LocalResult
from fedlora.client.trainer import evaluate, plan_batches, train_local
from fedlora.config import ExperimentConfig
from fedlora.data.encoding import EncodedSplit
from fedlora.results.predictions import Predictions


class ModelLearner:
    """Every client's training runs here, one job at a time, on one backbone."""

    def __init__(
        self,
        model: ResidentModel,
        train_data: EncodedSplit,
        eval_data: EncodedSplit,
        client_indices: Sequence[np.ndarray],
        metrics: Sequence[str],
        config: ExperimentConfig,
        pad_token_id: int,
        local_test: Sequence[np.ndarray] | None = None,
    ) -> None:
        """``client_indices`` are what each client trains on; ``local_test`` (indices into
        ``train_data`` too) what it holds out to test its own model, if anything."""
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.client_indices = list(client_indices)
        self.local_test = None if local_test is None else list(local_test)
        self.metrics = list(metrics)
        self.config = config
        self.pad_token_id = pad_token_id
        self._initial = model.state()
        self.global_predictions: Predictions | None = None

    def initial_state(self) -> AdapterState:
        return self._initial

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]:
        return plan_batches(self.client_indices[client], self.config.train, rng)

    def tokens(self, batches: Sequence[np.ndarray]) -> int:
        lengths = self.train_data.lengths
        return int(sum(lengths[b].sum() for b in batches))

    def train(self, start: AdapterState, batches: Sequence[np.ndarray], seed: int) -> LocalResult:
        return train_local(
            self.model,
            start,
            batches,
            self.train_data,
            self.config.train,
            seed,
            self.config.model.bf16,
            self.pad_token_id,
        )

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """The global model on the eval split; its per-example outputs are kept in
        ``global_predictions`` (the latest global evaluation's: the run's final one at the end)."""
        metrics, logits = self._scored(state, self.eval_data)
        self.global_predictions = Predictions.from_logits(
            logits, self.eval_data.labels.numpy(), self.eval_data.scores.get("length")
        )
        return metrics

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None:
        """A client's trained model on its own local test split and on the global eval
        split; None when clients hold no local test split."""
        if self.local_test is None:
            return None
        own = self._evaluate(state, self.train_data, self.local_test[client])
        dev = self._evaluate(state, self.eval_data) if self.config.eval.local_dev else {}
        return ClientEvaluation(own=own, dev=dev)

    def _evaluate(
        self, state: AdapterState, data: EncodedSplit, indices: np.ndarray | None = None
    ) -> dict[str, float]:
        return self._scored(state, data, indices)[0]

    def _scored(
        self, state: AdapterState, data: EncodedSplit, indices: np.ndarray | None = None
    ) -> tuple[dict[str, float], np.ndarray]:
        return evaluate(
            self.model,
            state,
            data,
            self.metrics,
            self.config.eval.batch_size,
            self.config.model.bf16,
            self.pad_token_id,
            indices,
        )
