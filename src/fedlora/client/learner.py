"""The model side of a simulation: plans, trains and evaluates jobs on the resident backbone.

What an evaluation computes depends on the task: a classifier's metrics (accuracy ...) from its
logits, or an instruction task's response loss and perplexity, overall and, for the global
model, per category (``category.<name>.loss``) and per length tercile (``length.<tercile>.loss``,
prompt and response tokens, the eval split's own terciles). Either way the global evaluation
also returns per-example :class:`~fedlora.predictions.Predictions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlora import aggregation
from fedlora.adapters import AdapterState
from fedlora.client.model import ResidentModel, use_bf16
from fedlora.client.protocol import ClientEvaluation, LocalResult
from fedlora.client.responses import response_losses
from fedlora.client.trainer import evaluate, plan_batches, train_local
from fedlora.config import ExperimentConfig
from fedlora.data.encoding import EncodedSplit
from fedlora.data.tasks import TaskSpec
from fedlora.metrics import response_metrics
from fedlora.predictions import Predictions
from fedlora.terciles import TERCILES, tercile_ids


class ModelLearner:
    """Every client's training runs here, one job at a time, on one backbone."""

    def __init__(
        self,
        model: ResidentModel,
        train_data: EncodedSplit,
        eval_data: EncodedSplit,
        client_indices: Sequence[np.ndarray],
        task: TaskSpec,
        config: ExperimentConfig,
        pad_token_id: int,
        local_test: Sequence[np.ndarray] | None = None,
        eval_ids: np.ndarray | None = None,
    ) -> None:
        """``client_indices`` are what each client trains on; ``local_test`` (indices into
        ``train_data`` too) what it holds out to test its own model, if anything; ``eval_ids``
        the eval examples' rows in their file (default: their order)."""
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.client_indices = list(client_indices)
        self.local_test = None if local_test is None else list(local_test)
        self.task = task
        self.config = config
        self.pad_token_id = pad_token_id
        self.eval_ids = eval_ids
        self.bf16 = use_bf16(config.model.bf16, config.runtime.device)
        # what the run's aggregator adds to every client's local loss, if anything
        server = config.server
        self.penalty = aggregation.create(
            server.aggregator, config.lora, config.global_rank, server.aggregator_options
        ).local_penalty()
        self._initial = model.state()
        self.global_predictions: Predictions | None = None

    def initial_state(self) -> AdapterState:
        return self._initial

    def plan(self, client: int, rng: np.random.Generator) -> list[np.ndarray]:
        """A classifier's batches at random, an instruction task's grouped by length."""
        lengths = self.train_data.lengths if self.task.causal else None
        return plan_batches(self.client_indices[client], self.config.train, rng, lengths)

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
            self.bf16,
            self.pad_token_id,
            self.penalty,
        )

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """The global model on the eval split; its per-example outputs are kept in
        ``global_predictions`` (the latest global evaluation's: the run's final one at the end)."""
        metrics, self.global_predictions = self._scored(state, self.eval_data, whole=True)
        return metrics

    def evaluate_client(self, client: int, state: AdapterState) -> ClientEvaluation | None:
        """A client's trained model on its own local test split and on the global eval
        split; None when clients hold no local test split."""
        if self.local_test is None:
            return None
        own = self._evaluate(state, self.train_data, self.local_test[client])
        dev = self._evaluate(state, self.eval_data) if self.config.eval.local_dev else {}
        return ClientEvaluation(own=own, dev=dev)

    def evaluate_on_local_splits(
        self, state: AdapterState, clients: Sequence[int]
    ) -> dict[int, dict[str, float]]:
        """``state`` (the final global model) on each of ``clients``' own local test splits,
        scored exactly as :meth:`evaluate_client` scores a client's own model there (the same
        examples, batches and metrics): the control that tells a client model's gain on its
        own split from an easier split. Empty when clients hold no local test split."""
        if self.local_test is None:
            return {}
        return {c: self._evaluate(state, self.train_data, self.local_test[c]) for c in clients}

    def _evaluate(
        self, state: AdapterState, data: EncodedSplit, indices: np.ndarray | None = None
    ) -> dict[str, float]:
        return self._scored(state, data, indices)[0]

    def _scored(
        self,
        state: AdapterState,
        data: EncodedSplit,
        indices: np.ndarray | None = None,
        whole: bool = False,
    ) -> tuple[dict[str, float], Predictions]:
        """Metrics and per-example predictions of ``state`` on ``data`` (its ``indices``);
        ``whole``: the global eval split, sliced and keyed by ``eval_ids``."""
        chosen = np.arange(len(data)) if indices is None else np.asarray(indices)
        lengths = data.scores.get("length")
        lengths = None if lengths is None else lengths[chosen]
        ids = self.eval_ids if whole else None
        scoring = (self.config.eval.batch_size, self.bf16, self.pad_token_id)
        if not self.task.causal:
            metrics, logits = evaluate(self.model, state, data, self.task.metrics, *scoring, chosen)
            labels = data.labels.numpy()[chosen]
            return metrics, Predictions.from_logits(logits, labels, lengths, ids)
        sums, tokens = response_losses(self.model, state, data, chosen, *scoring)
        categories = data.labels.numpy()[chosen]
        names = tuple(self.task.label_names[c] for c in categories)
        slices: dict[str, np.ndarray] = {}
        if whole:
            slices |= {
                f"category.{name}": categories == c for c, name in enumerate(self.task.label_names)
            }
            if lengths is not None:
                terciles = tercile_ids(lengths)
                slices |= {f"length.{name}": terciles == t for t, name in enumerate(TERCILES)}
        predictions = Predictions.from_response_losses(
            sums, tokens, categories, names, lengths, ids
        )
        return response_metrics(sums, tokens, slices), predictions
