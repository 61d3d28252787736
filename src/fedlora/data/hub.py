"""GLUE from the Hugging Face hub (``data.source: hub``), through ``datasets``: an optional
extra, imported only when a split is loaded."""

from __future__ import annotations

import hashlib
import os

from fedlora.data.examples import Example, LabelledSplit
from fedlora.data.rows import DataError
from fedlora.data.tasks import GlueTask

_HUB_DATASET = "nyu-mll/glue"
_HUB_SPLITS = {"dev": "validation"}


def load_hub(task: GlueTask, split: str) -> LabelledSplit:
    """``nyu-mll/glue`` through ``datasets``, imported only here: it is an optional extra."""
    hub_split = _HUB_SPLITS.get(split, split)
    origin = f"hub:{_HUB_DATASET}/{task.name}/{hub_split}"
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.source: hub needs the datasets library: pip install fedlora[hub]"
        ) from None
    try:
        table = datasets.load_dataset(_HUB_DATASET, task.name, split=hub_split)
    except Exception as error:  # network, auth and cache failures share no base class
        if _hub_offline():
            raise DataError(
                f"data.source: the hub is offline (HF_HUB_OFFLINE is set) and {origin} is not"
                " in the local cache; use data.source: folder with data.dir or $FEDLORA_DATA"
            ) from error
        raise DataError(f"data.source: cannot load {origin}: {error}") from error
    labels = [int(label) for label in table["label"]]
    if any(label < 0 for label in labels):
        raise DataError(f"{origin}: the {split} split has no labels (GLUE keeps them private)")
    texts_a, *rest = (table[column] for column in task.hub_text_columns)
    texts_b = rest[0] if rest else [None] * len(labels)
    examples = [Example(*fields) for fields in zip(texts_a, texts_b, labels, strict=True)]
    fingerprint = hashlib.sha256(f"{origin}\0{table._fingerprint}".encode()).hexdigest()
    return LabelledSplit(task, split, examples, origin, fingerprint)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
