"""Local training and evaluation on the resident model.

A job's batches are planned when it is dispatched (:func:`plan_batches`), so the simulator can
charge its cost in tokens before it runs, and the job trains the same whenever it runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fedlora.adapters import AdapterState
from fedlora.aggregation.selfprune import SelfPrune, active_rank
from fedlora.client.model import ResidentModel
from fedlora.client.protocol import LocalResult
from fedlora.config import TrainConfig
from fedlora.data.encoding import EncodedSplit, collate
from fedlora.metrics import compute_metrics


def plan_batches(
    indices: np.ndarray,
    train: TrainConfig,
    rng: np.random.Generator,
    lengths: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The job's batches: passes over the client's shuffled examples, cut into batch_size.

    Given the examples' ``lengths`` (tokens), the batches are grouped by length: the job's
    examples are sorted by length (ties in their shuffled order), cut into batches, and the
    batches shuffled, so a batch pads its rows to a similar length, not to the job's longest.
    """
    if len(indices) == 0:
        raise ValueError("a client without examples cannot train")
    batch_size = min(train.batch_size, len(indices))  # a small client trains on all it has
    if train.local_steps is not None:
        total = train.local_steps * batch_size
    else:
        assert train.local_epochs is not None
        total = max(1, round(train.local_epochs * len(indices)))
    passes = math.ceil(total / len(indices))
    stream = np.concatenate([rng.permutation(indices) for _ in range(passes)])[:total]
    if lengths is not None:
        stream = stream[np.argsort(lengths[stream], kind="stable")]
    batches = [stream[i : i + batch_size] for i in range(0, total, batch_size)]
    if lengths is None:
        return batches
    return [batches[i] for i in rng.permutation(len(batches))]


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager[object]:
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_local(
    model: ResidentModel,
    start: AdapterState,
    batches: Sequence[np.ndarray],
    data: EncodedSplit,
    train: TrainConfig,
    seed: int,
    bf16: bool,
    pad_token_id: int,
    penalty: SelfPrune | None = None,
) -> LocalResult:
    """Fresh AdamW from ``start`` over ``batches``; the trained adapter and the mean loss (the
    model's own: a classifier's over examples, a causal LM's over the batch's response
    tokens). With ``penalty`` (HetLoRA's self-pruning) each step also minimises λ times the
    norm of the trailing components of the rank ``start`` is active at; the reported loss
    leaves it out."""
    model.load(start)
    torch.manual_seed(seed)  # LoRA dropout
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    model.model.train()
    pairs = model.lora_pairs() if penalty is not None and penalty.penalty > 0 else []
    rank = active_rank(pairs)  # 0 without a penalty to add
    losses = []
    for batch_indices in batches:
        batch = collate(data, batch_indices, pad_token_id)
        with autocast(bf16, model.device):
            loss = model.forward(batch).loss
        if penalty is not None and rank > 0:
            (loss + penalty.loss(pairs, rank)).backward()
        else:
            loss.backward()
        if train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return LocalResult(
        state=model.state(),
        loss=float(np.mean(losses)),
        examples=sum(len(b) for b in batches),
        steps=len(batches),
    )


def length_sorted_batches(
    indices: np.ndarray, lengths: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches of similar lengths, so dynamic padding wastes little compute: each
    batch's positions in ``indices`` and its example indices."""
    order = np.argsort(lengths[indices], kind="stable")
    for i in range(0, len(order), batch_size):
        positions = order[i : i + batch_size]
        yield positions, indices[positions]


@torch.no_grad()
def predict(
    model: ResidentModel,
    state: AdapterState,
    data: EncodedSplit,
    indices: np.ndarray,
    batch_size: int,
    bf16: bool,
    pad_token_id: int,
) -> tuple[np.ndarray, float]:
    """Logits for the examples ``indices`` (in that order) and their mean cross-entropy loss."""
    model.load(state)
    model.model.eval()
    logits = torch.empty(len(indices), model.model.config.num_labels)
    loss_sum = 0.0
    for positions, batch_indices in length_sorted_batches(indices, data.lengths, batch_size):
        batch = collate(data, batch_indices, pad_token_id)
        with autocast(bf16, model.device):
            out = model.forward(batch)
        logits[torch.as_tensor(positions)] = out.logits.float().cpu()
        loss_sum += float(out.loss) * len(batch_indices)
    return logits.numpy(), loss_sum / len(indices)


def evaluate(
    model: ResidentModel,
    state: AdapterState,
    data: EncodedSplit,
    metrics: Sequence[str],
    batch_size: int,
    bf16: bool,
    pad_token_id: int,
    indices: np.ndarray | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """The task's metrics (e.g. accuracy and F1) and the loss of ``state`` on ``data`` (only
    its examples ``indices`` when given: a client's local test split), with the logits scored."""
    chosen = np.arange(len(data)) if indices is None else np.asarray(indices)
    if len(chosen) == 0:
        raise ValueError("evaluate: no examples to evaluate")
    logits, loss = predict(model, state, data, chosen, batch_size, bf16, pad_token_id)
    labels = data.labels.numpy()[chosen]
    return {**compute_metrics(metrics, logits.argmax(axis=1), labels), "loss": loss}, logits
