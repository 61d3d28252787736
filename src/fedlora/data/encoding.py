"""Tokenize a split once, keep it cached, and pad per batch.

Every client of a run (and every later run) shares one encoding: from memory within a process,
from a file across processes. Batches are padded to their own longest example, not to
max_length, because most GLUE examples are far shorter. An instruction task's rows are prompt
then response (:mod:`fedlora.data.prompts`); their batches carry token labels, -100 (ignored by
the loss) on the prompt and the padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch.nn.utils.rnn import pad_sequence

from fedlora.data.context import text_scores
from fedlora.data.examples import Example, LabelledSplit
from fedlora.data.prompts import PromptBuilder, template_recipe

if TYPE_CHECKING:  # transformers is slow to import and only needed for the annotation
    from transformers import PreTrainedTokenizerBase

CACHE_ENV = "FEDLORA_CACHE"
_FORMAT = 2  # part of the cache key: bump it when the file layout changes
_CHUNK = 2048  # examples per tokenizer call: batched speed without one huge output
_log = logging.getLogger(__name__)
_memo: dict[str, EncodedSplit] = {}
_SCORE = "score_"  # payload fields holding a context score
IGNORE = -100  # the label of a token no loss is computed on (PyTorch's and transformers')

Payload = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare by identity
class EncodedSplit:
    """Token ids of each example, unpadded, the labels and the context scores aligned with
    them (:mod:`fedlora.data.context`). An instruction task's labels are its categories, and
    ``prompt_lengths`` says how many leading tokens of each row are prompt; ``cut`` holds
    each row's truncation bits (:data:`fedlora.data.prompts.CUT_CONTEXT` ...). ``key`` is its
    cache key: what decides its tokens, and what anything computed from them is cached under."""

    input_ids: list[torch.Tensor]
    token_type_ids: list[torch.Tensor] | None
    labels: torch.Tensor
    scores: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    prompt_lengths: torch.Tensor | None = None
    cut: torch.Tensor | None = None
    key: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Tokens per example: the cost model and the length-based partitions read it."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))


def encode_split(
    split: LabelledSplit,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: Path | None,
) -> EncodedSplit:
    """Token ids of every example: from the memo, else the cache file, else the tokenizer.

    ``cache_dir`` defaults to ``$FEDLORA_CACHE``, else ``~/.cache/fedlora/encoded``.
    """
    key = _cache_key(split, tokenizer, max_length)
    if key not in _memo:
        path = cache_folder(cache_dir) / f"{key}.pt"
        payload = _read_cache(path, len(split.examples))
        if payload is None:
            payload = _tokenize(split, tokenizer, max_length)
            write_cache(path, payload)
        _memo[key] = _unpack(payload, key)
    return _memo[key]


def clear_memo() -> None:
    """Forget the in-process encodings (frees their memory); the cache files stay."""
    _memo.clear()


def collate(
    encoded: EncodedSplit, indices: Sequence[int] | npt.NDArray[np.int64], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """A batch of the given examples padded to the longest of them, with its attention mask."""
    if len(indices) == 0:
        raise ValueError("collate: a batch needs at least one example index")
    rows = [encoded.input_ids[index] for index in indices]
    lengths = torch.tensor([len(row) for row in rows])
    width = int(lengths.max())
    batch = {
        "input_ids": pad_sequence(rows, batch_first=True, padding_value=pad_token_id),
        "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long(),
    }
    if encoded.token_type_ids is not None:
        types = [encoded.token_type_ids[index] for index in indices]
        batch["token_type_ids"] = pad_sequence(types, batch_first=True, padding_value=0)
    chosen = torch.as_tensor(indices, dtype=torch.long)
    if encoded.prompt_lengths is None:
        batch["labels"] = encoded.labels[chosen]
        return batch
    positions = torch.arange(width)[None, :]
    response = (positions >= encoded.prompt_lengths[chosen][:, None]) & batch[
        "attention_mask"
    ].bool()
    batch["labels"] = batch["input_ids"].masked_fill(~response, IGNORE)
    return batch


def _cache_key(split: LabelledSplit, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    parts: list[object] = [
        _FORMAT,
        tokenizer.name_or_path,
        len(tokenizer),  # vocabulary size including added tokens
        split.task.name,
        split.split,
        split.fingerprint,
        len(split.examples),  # a subset that kept its parent's fingerprint still misses
        max_length,
    ]
    if split.task.causal:
        assert split.task.template is not None
        builder = PromptBuilder(tokenizer, split.task.template)
        parts.append(template_recipe(builder.template, tokenizer))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_folder(cache_dir: Path | None = None) -> Path:
    """Where encodings are cached: ``cache_dir`` (``data.cache_dir``), else ``$FEDLORA_CACHE``,
    else ``~/.cache/fedlora/encoded``."""
    if cache_dir is not None:
        return cache_dir
    from_env = os.environ.get(CACHE_ENV)
    return Path(from_env) if from_env else Path.home() / ".cache" / "fedlora" / "encoded"


def _tokenize(split: LabelledSplit, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Payload:
    """Flat token ids plus offsets: one compact tensor per field, cheap to save and load."""
    if split.task.causal:
        return _tokenize_instructions(split, tokenizer, max_length)
    ids: list[int] = []
    types: list[int] = []
    lengths = [0]
    context_lengths: list[int] = []  # before truncation: the ``length`` context score
    for start in range(0, len(split.examples), _CHUNK):
        chunk = split.examples[start : start + _CHUNK]
        texts, pairs = tokenizer_inputs(chunk, split.task.pair, tokenizer)
        out = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        for row in out["input_ids"]:
            ids.extend(row)
            lengths.append(len(row))
        for row in out.get("token_type_ids", []):
            types.extend(row)
        full = tokenizer(texts, pairs, truncation=False, return_attention_mask=False)
        context_lengths.extend(len(row) for row in full["input_ids"])
    scores = {"length": np.array(context_lengths, dtype=np.float64)}
    scores |= text_scores(split.examples)
    payload = {
        "input_ids": torch.tensor(ids, dtype=torch.int32),
        "offsets": torch.tensor(np.cumsum(lengths), dtype=torch.long),
        "labels": torch.tensor([example.label for example in split.examples], dtype=torch.long),
    }
    if types:
        payload["token_type_ids"] = torch.tensor(types, dtype=torch.uint8)
    payload |= {_SCORE + name: torch.from_numpy(values) for name, values in scores.items()}
    return payload


def _tokenize_instructions(
    split: LabelledSplit, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Payload:
    """Prompt-then-response token ids, the prompt lengths and cuts, and the scores: ``length``
    (prompt and response tokens), ``prompt``, ``context``, ``response`` (tokens, before any
    cut) besides the text scores of instruction and context."""
    assert split.task.template is not None
    builder = PromptBuilder(tokenizer, split.task.template)
    rows = [
        row
        for start in range(0, len(split.examples), _CHUNK)
        for row in builder.encode(split.examples[start : start + _CHUNK], max_length)
    ]

    def column(values: Sequence[float]) -> npt.NDArray[np.float64]:
        return np.array(values, dtype=np.float64)

    scores = {
        "length": column([r.prompt_tokens + r.response_tokens for r in rows]),
        "prompt": column([r.prompt_tokens for r in rows]),
        "context": column([r.context_tokens for r in rows]),
        "response": column([r.response_tokens for r in rows]),
    } | text_scores(split.examples)
    payload = {
        "input_ids": torch.tensor([t for r in rows for t in r.ids], dtype=torch.int32),
        "offsets": torch.tensor(np.cumsum([0, *(len(r.ids) for r in rows)]), dtype=torch.long),
        "labels": torch.tensor([example.label for example in split.examples], dtype=torch.long),
        "prompt_lengths": torch.tensor([r.prompt_length for r in rows], dtype=torch.long),
        "cut": torch.tensor([r.cut for r in rows], dtype=torch.uint8),
    }
    return payload | {_SCORE + name: torch.from_numpy(values) for name, values in scores.items()}


def tokenizer_inputs(
    examples: Sequence[Example], pair: bool, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[str], list[str] | None]:
    """The tokenizer's inputs: text pairs, or for a tokenizer with no separator token (a causal
    LM's) each pair joined into one text by a newline, so the model sees where one ends."""
    firsts = [example.text_a for example in examples]
    if not pair:
        return firsts, None
    seconds = [example.text_b or "" for example in examples]
    if tokenizer.sep_token is None:
        return [f"{a}\n{b}" for a, b in zip(firsts, seconds, strict=True)], None
    return firsts, seconds


def _unpack(payload: Payload, cache_key: str) -> EncodedSplit:
    sizes = torch.diff(payload["offsets"]).tolist()
    types = payload.get("token_type_ids")
    return EncodedSplit(
        input_ids=list(torch.split(payload["input_ids"].long(), sizes)),
        token_type_ids=None if types is None else list(torch.split(types.long(), sizes)),
        labels=payload["labels"],
        prompt_lengths=payload.get("prompt_lengths"),
        cut=payload.get("cut"),
        scores={
            key.removeprefix(_SCORE): value.numpy()
            for key, value in payload.items()
            if key.startswith(_SCORE)
        },
        key=cache_key,
    )


def _read_cache(path: Path, count: int) -> Payload | None:
    """The cached encoding of ``count`` examples, or None when absent or unusable (a cache
    folder this process may not read included: the cache only saves time)."""
    try:
        if not path.is_file():
            return None
        payload = torch.load(path, weights_only=True)
        _check(payload, count)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        _log.warning("ignoring unreadable cache file %s (%s); encoding again", path, error)
        return None
    return payload


def _check(payload: object, count: int) -> None:
    """Raise ValueError unless ``payload`` is a complete, consistent encoding."""
    if not isinstance(payload, dict) or not all(
        isinstance(value, torch.Tensor) for value in payload.values()
    ):
        raise ValueError("not a dict of tensors")
    if not {"input_ids", "offsets", "labels"} <= payload.keys():
        raise ValueError(f"fields {sorted(payload)}")
    offsets, flat, types = payload["offsets"], payload["input_ids"], payload.get("token_type_ids")
    if offsets.shape != (count + 1,) or payload["labels"].shape != (count,):
        raise ValueError(f"not an encoding of {count} examples")
    if offsets[0] != 0 or offsets[-1] != flat.numel() or bool((torch.diff(offsets) < 0).any()):
        raise ValueError("offsets do not match the token ids")
    if types is not None and types.shape != flat.shape:
        raise ValueError("token type ids do not match the token ids")
    if any(v.shape != (count,) for k, v in payload.items() if k.startswith(_SCORE)):
        raise ValueError("context scores do not match the examples")
    rows = [payload[k] for k in ("prompt_lengths", "cut") if k in payload]
    if any(v.shape != (count,) for v in rows):
        raise ValueError("prompt lengths or cuts do not match the examples")


def write_cache(path: Path, payload: Payload) -> None:
    """Write atomically, so a crash or a concurrent run never leaves half a file behind.

    The cache only saves time: when it cannot be written the run goes on without it.
    """
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            temp = Path(handle.name)
            torch.save(payload, handle)
        os.replace(temp, path)
    except OSError as error:
        _log.warning("cannot write cache file %s (%s); going on without it", path, error)
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
