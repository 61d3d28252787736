"""A model-based quality score of instruction rows: the response's perplexity under the base model.

``perplexity`` is exp of the mean cross-entropy of a row's response tokens under the pretrained
model without any adapter, scored as the run tokenizes and masks the row for training (prompt
and padding ignored, :func:`~fedlora.client.responses.response_losses`): the usual data-quality
proxy of instruction tuning, low for responses the model finds fluent and predictable. It is
computed only when a run partitions by it (``data.partition.by: perplexity``), for the rows the
run uses (after ``data.max_train_examples``), once: the scores are cached beside the encoding
(``data.cache_dir``, else ``$FEDLORA_CACHE``), keyed by the encoding, the model's identity
(:func:`model_identity`) and whether it scored in bf16. A row with no response token to score
has no perplexity: scoring refuses it (the shipped loaders never make one: every response
keeps at least its end-of-turn token).

The data layer never loads a model: it takes the scores from a :data:`Scorer` that the caller
(the run, ``fedlora partition``) builds here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import transformers

from fedlora.client.model import model_path, run_resident_model, use_bf16
from fedlora.client.responses import response_losses
from fedlora.config import ExperimentConfig
from fedlora.data.encoding import EncodedSplit, cache_folder, write_cache
from fedlora.data.rows import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedlora.client.model import ResidentModel

PERPLEXITY = "perplexity"
_FORMAT = 1  # part of the cache key: bump it when the score or the file changes
_MODEL_FILES = (".safetensors", ".bin", ".gguf", ".json", ".pt", ".pth")
_log = logging.getLogger(__name__)

Scores = npt.NDArray[np.float64]
Scorer = Callable[[EncodedSplit], dict[str, Scores]]
"""Model-based scores of every row of an encoded split, by score name."""


def needed(config: ExperimentConfig) -> bool:
    """Whether the run needs the model-based score: only a partition drawn by it does."""
    partition = config.data.partition
    return partition.by == PERPLEXITY and partition.method != "given"


def perplexity_scorer(
    config: ExperimentConfig,
    tokenizer: PreTrainedTokenizerBase,
    model: Callable[[], ResidentModel] | None = None,
) -> Scorer:
    """The scorer of ``perplexity``: from the cache, else computed on ``model()`` (called
    only then; default: the run's backbone built here) and cached. Scores with the run's
    ``model.bf16`` and ``eval.batch_size``."""
    bf16 = use_bf16(config.model.bf16, config.runtime.device)

    def base() -> ResidentModel:
        return model() if model is not None else run_resident_model(config, tokenizer, None)

    def score(data: EncodedSplit) -> dict[str, Scores]:
        path = None
        if data.key:  # an encoding not read through the cache has no key to keep scores by
            digest = [_FORMAT, data.key, model_identity(config), bf16]
            name = hashlib.sha256(json.dumps(digest).encode()).hexdigest()
            path = cache_folder(config.data.cache_dir) / f"{PERPLEXITY}-{name}.pt"
            cached = read_scores(path, len(data))
            if cached is not None:
                return {PERPLEXITY: cached}
        values = base_perplexity(
            base(), data, config.eval.batch_size, bf16, int(tokenizer.pad_token_id)
        )
        if path is not None:
            write_cache(path, {PERPLEXITY: torch.from_numpy(values)})
        return {PERPLEXITY: values}

    return score


def base_perplexity(
    model: ResidentModel, data: EncodedSplit, batch_size: int, bf16: bool, pad_token_id: int
) -> Scores:
    """Each row's response perplexity under ``model``'s backbone with its adapters disabled;
    raises :class:`DataError` for rows with no response token."""
    with model.model.disable_adapter():
        sums, tokens = response_losses(
            model, model.state(), data, np.arange(len(data)), batch_size, bf16, pad_token_id
        )
    empty = np.flatnonzero(tokens == 0)
    if len(empty):
        raise DataError(
            f"data.partition.by: {PERPLEXITY}: {len(empty)} training row(s) (of the run's,"
            f" after data.max_train_examples: {empty[:5].tolist()}) have no response token to"
            " score; raise data.max_length or partition by another score"
        )
    return np.exp(sums / tokens)


def model_identity(config: ExperimentConfig) -> list[object]:
    """What decides the base model's weights: where they load from (a local folder's weight
    and config files by name, size and modification time; a hub id by its name), the
    ``model`` keys, the seed of a random init, and the libraries that build and run it."""
    path = model_path(config.model.name)
    folder = Path(path)
    files = []
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            if file.suffix in _MODEL_FILES and file.is_file():
                stat = file.stat()
                files.append([file.name, stat.st_size, stat.st_mtime_ns])
    random = config.model.init == "random"
    keys = config.model.model_dump(
        mode="json", exclude={"bf16"} | (set() if random else {"random"})
    )
    versions = [torch.__version__, transformers.__version__]
    return [path, files, keys, config.seed if random else None, versions]


def read_scores(path: Path, count: int) -> Scores | None:
    """The cached scores of ``count`` rows, or None when absent or unusable (with a warning:
    the cache only saves time)."""
    try:
        if not path.is_file():
            return None
        payload = torch.load(path, weights_only=True)
        values = payload.get(PERPLEXITY) if isinstance(payload, dict) else None
        if not isinstance(values, torch.Tensor) or values.shape != (count,):
            raise ValueError(f"not the {PERPLEXITY} of {count} rows")
    except Exception as error:  # a damaged pickle raises almost anything
        _log.warning("ignoring unreadable cache file %s (%s); scoring again", path, error)
        return None
    return values.double().numpy()
