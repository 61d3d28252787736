"""The model side of a simulation: plans, trains and evaluates jobs on the resident backbone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlora.adapters import AdapterState
from fedlora.client.model import ResidentModel
from fedlora.client.trainer import LocalResult, evaluate, plan_batches, train_local
from fedlora.config import ExperimentConfig
from fedlora.data.encoding import EncodedSplit


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
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.client_indices = list(client_indices)
        self.metrics = list(metrics)
        self.config = config
        self.pad_token_id = pad_token_id
        self._initial = model.state()

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
        return evaluate(
            self.model,
            state,
            self.eval_data,
            self.metrics,
            self.config.eval.batch_size,
            self.config.model.bf16,
            self.pad_token_id,
        )
