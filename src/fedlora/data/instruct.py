"""Instruction rows (``data.task: instruct``) from JSONL or JSON files, for a causal LM.

A row has an instruction, an optional context and a response, plus an optional category and
client id; ``data.instruct`` names the fields (Dolly's by default, Alpaca's with
``{context: input, response: output, category: null}``). A ``.json`` file holds one JSON array
of rows (Alpaca's layout), any other file one JSON object per line. Each row becomes an
:class:`~fedlora.data.examples.Example`: the instruction as ``text_a``, the context as
``text_b``, the category's id as ``label`` (ids are positions in the train file's sorted
categories, so every split shares them) and the response. Errors name the file and line (for
a ``.json`` array, the row).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from fedlora.config import DataConfig, InstructConfig
from fedlora.data.examples import Example, LabelledSplit
from fedlora.data.rows import DataError, names, opened
from fedlora.data.sources import generic_file
from fedlora.data.tasks import instruction_task

NO_CATEGORY = "all"  # the one label of rows without a category field


def load_instruct(data: DataConfig, data_dir: Path | None, split: str) -> LabelledSplit:
    """Every row of one split; its categories are ids into the train file's categories."""
    fields = data.instruct
    train = generic_file(data, data_dir, "train")
    categories = _categories(train, fields)
    path = generic_file(data, data_dir, split)
    ids = {name: index for index, name in enumerate(categories)}
    clients = data.client_column if split == "train" else None  # only training rows have one
    examples = [_example(path, where, row, fields, ids, clients) for where, row in _rows(path)]
    task = instruction_task(data.task, categories, fields.template)
    return LabelledSplit(task, split, examples, str(path), _fingerprint(path, data))


def _categories(path: Path, fields: InstructConfig) -> tuple[str, ...]:
    if fields.category is None:
        return (NO_CATEGORY,)
    found = {_text(path, where, row, fields.category, "category") for where, row in _rows(path)}
    if not found:
        raise DataError(f"{path}: no rows")
    return tuple(sorted(found))


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs: ``line N`` of a JSONL file, ``row N`` of a JSON array."""
    with opened(path) as handle:
        numbered = _array(path, handle) if path.suffix.lower() == ".json" else _lines(path, handle)
        for where, row in numbered:
            if not isinstance(row, dict):
                raise DataError(f"{path}:{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _array(path: Path, handle: TextIO) -> Iterator[tuple[str, object]]:
    try:
        rows = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
    yield from ((f"row {n}", row) for n, row in enumerate(rows, start=1))


def _lines(path: Path, handle: TextIO) -> Iterator[tuple[str, object]]:
    for line, text in enumerate(handle, start=1):
        if text.strip():
            try:
                yield str(line), json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line}: not valid JSON: {error.msg}") from None


def _example(
    path: Path,
    where: str,
    row: dict[str, Any],
    fields: InstructConfig,
    categories: dict[str, int],
    client_column: str | None,
) -> Example:
    label = 0
    if fields.category is not None:
        category = _text(path, where, row, fields.category, "category")
        if category not in categories:
            raise DataError(
                f"{path}:{where}: category {category!r} is not one of the train file's"
                f" ({names(categories)})"
            )
        label = categories[category]
    context = ""
    if fields.context is not None:
        context = _text(path, where, row, fields.context, "context", empty=True)
    return Example(
        text_a=_text(path, where, row, fields.instruction, "instruction"),
        text_b=context,
        label=label,
        response=_text(path, where, row, fields.response, "response"),
        client=None if client_column is None else _client(path, where, row, client_column),
    )


def _text(
    path: Path, where: str, row: dict[str, Any], field: str, role: str, empty: bool = False
) -> str:
    """The row's text in ``field``; a context may be empty or null, nothing else may."""
    if field not in row:
        raise DataError(
            f"{path}:{where}: no field {field!r} (data.instruct.{role}; the row has {names(row)})"
        )
    value = row[field]
    if value is None and empty:
        return ""
    if not isinstance(value, str) or not (empty or value.strip()):
        raise DataError(
            f"{path}:{where}: field {field!r} (data.instruct.{role}) holds {value!r},"
            " not a non-empty text"
        )
    return value


def _client(path: Path, where: str, row: dict[str, Any], column: str) -> int:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(
            f"{path}:{where}: field {column!r} (data.client_column) holds {value!r},"
            " not a client id (an integer from 0)"
        )
    return value


def _fingerprint(path: Path, data: DataConfig) -> str:
    """sha256 of the file bytes and of how they were read (fields, client column)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(json.dumps([data.instruct.model_dump(), data.client_column]).encode())
    return digest.hexdigest()
