"""Lower the text quality of chosen clients' examples, to create quality skew on any dataset.

The partition is drawn on the clean data; the chosen clients' examples are then rewritten in
place (same index, same label), so every other client's data stays byte for byte the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np

from fedlora.config import DegradeConfig
from fedlora.data.examples import Example, LabelledSplit

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def chosen_clients(num_clients: int, config: DegradeConfig, seed: int) -> list[int]:
    """The ``round(share · num_clients)`` clients (at least one) whose data is degraded."""
    count = max(1, round(config.share * num_clients))
    rng = np.random.default_rng([seed, 5])
    return sorted(int(c) for c in rng.choice(num_clients, count, replace=False))


def degrade_text(text: str, config: DegradeConfig, rng: np.random.Generator) -> str:
    """One text segment after the configured degradation; never empty when the input is not."""
    if config.kind == "shuffle":
        sentences = _SENTENCE.split(text.strip())
        shuffled = [sentences[i] for i in rng.permutation(len(sentences))]
        if shuffled == sentences:  # the identity, or a swap of repeated sentences, spares it:
            shuffled = sentences[-1:] + sentences[:-1]  # a rotation changes all but A A … A
        return " ".join(shuffled)
    words = text.split()
    if not words:
        return text
    if config.kind == "truncate":
        return " ".join(words[: max(1, round(len(words) * (1 - config.rate)))])
    kept = [word for word in words if rng.random() >= config.rate]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


def _degraded(example: Example, config: DegradeConfig, rng: np.random.Generator) -> Example:
    """The example with ``config.part`` degraded: its text segments in order (an instruction
    row's instruction and context), or an instruction row's context or response alone."""
    if config.part == "response":
        response = degrade_text(example.response or "", config, rng)
        return dataclasses.replace(example, response=response)
    text_a = (
        example.text_a if config.part == "context" else degrade_text(example.text_a, config, rng)
    )
    text_b = None if example.text_b is None else degrade_text(example.text_b, config, rng)
    return dataclasses.replace(example, text_a=text_a, text_b=text_b)


def degrade(
    split: LabelledSplit,
    client_indices: Sequence[np.ndarray],
    config: DegradeConfig,
    seed: int,
) -> tuple[LabelledSplit, list[int]]:
    """The split with the chosen clients' examples degraded, and which clients were chosen."""
    chosen = chosen_clients(len(client_indices), config, seed)
    examples = list(split.examples)
    rng = np.random.default_rng([seed, 6])
    for client in chosen:
        for index in client_indices[client]:
            example = examples[index]
            examples[index] = _degraded(example, config, rng)
    touched = np.sort(np.concatenate([client_indices[c] for c in chosen]))
    recipe = json.dumps([config.model_dump(), seed, hashlib.sha256(touched.tobytes()).hexdigest()])
    fingerprint = f"{split.fingerprint}:degraded:{recipe}"  # its own encoding cache entry
    return dataclasses.replace(split, examples=examples, fingerprint=fingerprint), chosen
