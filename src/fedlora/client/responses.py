"""An instruction task's evaluation: the loss of each example's response tokens.

Only response tokens count (the collated labels are -100 on the prompt and the padding), as in
training. A batch's logits are scored one example at a time in float32, so the memory for a
vocabulary of 49k stays one example's, and an example's loss never depends on its batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedlora.adapters import AdapterState
from fedlora.client.model import ResidentModel
from fedlora.client.trainer import autocast, length_sorted_batches
from fedlora.data.encoding import IGNORE, EncodedSplit, collate


@torch.no_grad()
def response_losses(
    model: ResidentModel,
    state: AdapterState,
    data: EncodedSplit,
    indices: np.ndarray,
    batch_size: int,
    bf16: bool,
    pad_token_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example of ``indices`` (in that order): the summed cross-entropy of its response
    tokens (each predicted from the tokens before it) and how many there are."""
    model.load(state)
    model.model.eval()
    sums = np.zeros(len(indices), dtype=np.float64)
    tokens = np.zeros(len(indices), dtype=np.int64)
    for positions, batch_indices in length_sorted_batches(indices, data.lengths, batch_size):
        batch = collate(data, batch_indices, pad_token_id)
        targets = batch.pop("labels")[:, 1:].to(model.device)
        with autocast(bf16, model.device):
            logits = model.forward(batch).logits
        for row, position in enumerate(positions):
            sums[position] = float(
                F.cross_entropy(
                    logits[row, :-1].float(), targets[row], ignore_index=IGNORE, reduction="sum"
                )
            )
            tokens[position] = int((targets[row] != IGNORE).sum())
    return sums, tokens
