"""One split's labelled examples, read from a GLUE folder, a CSV/JSONL file or the HF hub
(:mod:`~fedlora.data.hub`); :mod:`~fedlora.data.rows` reads a file's rows.

Whatever is wrong with the data stops a run before training: a :class:`DataError` names the file
and the 1-based line as an editor shows it (the header is line 1), or the config key at fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from fedlora.config import DataConfig, unreadable
from fedlora.data.examples import Example, LabelledSplit
from fedlora.data.hub import load_hub
from fedlora.data.rows import (
    READERS,
    Columns,
    DataError,
    GlueTsv,
    Records,
    Row,
    names,
    read_delimited,
)
from fedlora.data.tasks import (
    INSTRUCTION_TASKS,
    TASKS,
    GlueTask,
    TaskSpec,
    available_tasks,
    generic_task,
)

SPLITS = ("train", "dev", "test")
_WHERE = "point data.dir (or $FEDLORA_DATA) at the GLUE folder or at the task's own folder"


def load_split(data: DataConfig, data_dir: Path | None, split: str) -> LabelledSplit:
    """Read every example of one split of ``data.task``; the caller applies ``max_*_examples``.

    ``data_dir`` is the GLUE root (holding MRPC/, RTE/, ...) or the task's own folder; generic
    ``csv``/``jsonl`` tasks resolve relative ``data.files`` against it.
    """
    glue = TASKS.get(data.task)
    if glue is not None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} for task {glue.name}; use {names(SPLITS)}")
        if data.source == "hub":
            if data.score_column is not None:
                raise DataError("data.score_column: the hub's GLUE tables have no extra columns")
            return load_hub(glue, split)
        return _load_glue(glue, data_dir, split, data.score_column)
    if data.task in INSTRUCTION_TASKS:
        from fedlora.data.instruct import load_instruct  # it reads files with this module

        if data.source == "hub":
            raise DataError(f"data.source: the hub serves GLUE tasks, not {data.task!r} files")
        return load_instruct(data, data_dir, split)
    if data.task in READERS:
        if data.source == "hub":
            raise DataError(f"data.source: the hub serves GLUE tasks, not {data.task!r} files")
        return _load_generic(data, data_dir, split)
    raise DataError(f"data.task: unknown task {data.task!r}; available: {names(available_tasks())}")


def _load_glue(
    task: GlueTask, data_dir: Path | None, split: str, score_column: str | None
) -> LabelledSplit:
    path = _task_folder(task, data_dir) / task.files[split]
    _check_readable(path, "data.dir")
    if not path.is_file():
        raise DataError(f"{path}: no such file; {_WHERE}")
    columns = Columns(task.text_columns, task.label_column, score_column)
    records = read_delimited(path, columns, split, dialect=GlueTsv)
    labelled = _labelled(task, split, path, columns, records, task.raw_labels)
    if split == "train":
        seen = {task.raw_labels[example.label] for example in labelled.examples}
        _two_classes(path, columns.label, seen)
    return labelled


def _task_folder(task: GlueTask, data_dir: Path | None) -> Path:
    """The task's folder under a GLUE root, matched loosely (``sst2`` = ``SST-2``), or data_dir."""
    if data_dir is None:
        raise DataError(
            f"data.dir: no data folder for task {task.name}; set data.dir in the config"
            " or export FEDLORA_DATA=/path/to/glue"
        )
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder; {_WHERE}")
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and _folder_key(child.name) == _folder_key(task.folder):
            return child
    if (data_dir / task.files["train"]).is_file():
        return data_dir
    raise DataError(
        f"{data_dir}: neither a {task.folder}/ folder nor a {task.files['train']} here; {_WHERE}"
    )


def _folder_key(name: str) -> str:
    return "".join(char for char in name.lower() if char.isalnum())


def _load_generic(data: DataConfig, data_dir: Path | None, split: str) -> LabelledSplit:
    """A CSV/JSONL task; its label set is the train file's, so every split shares label ids."""
    if not data.text_columns or len(data.text_columns) > 2:
        raise DataError(
            f"data.text_columns: task {data.task} needs 1 or 2 column names,"
            f" got {data.text_columns!r}"
        )
    columns = Columns(tuple(data.text_columns), data.label_column, data.score_column)
    read = READERS[data.task]
    train = generic_file(data, data_dir, "train")
    label_names = _label_names(train, columns, read(train, columns, "train"))
    path = generic_file(data, data_dir, split)
    task = generic_task(data.task, label_names, pair=len(columns.text) == 2)
    return _labelled(task, split, path, columns, read(path, columns, split), label_names)


def generic_file(data: DataConfig, data_dir: Path | None, split: str) -> Path:
    if not data.files:
        raise DataError(
            f"data.files: task {data.task} needs a file per split,"
            " e.g. files: {train: train.csv, dev: dev.csv}"
        )
    if split not in data.files:
        raise DataError(
            f"data.files.{split}: no file for split {split!r} (given: {names(data.files)})"
        )
    path = data.files[split]
    if data_dir is not None and not path.is_absolute():
        path = data_dir / path
    _check_readable(path, f"data.files.{split}")
    if not path.is_file():
        raise DataError(f"data.files.{split}: file {path} does not exist")
    return path


def _check_readable(path: Path, key: str) -> None:
    """Refuse a data file this process may not read, before anything trips over it."""
    if unreadable(path):
        raise DataError(f"{key}: {path} cannot be read (permission denied)")


def _label_names(path: Path, columns: Columns, records: Records) -> tuple[str, ...]:
    """The train file's labels, sorted (numerically when all are integers): id = position."""
    seen = {_label(path, line, columns.label, row[columns.label]) for line, row in records}
    _two_classes(path, columns.label, seen)
    try:
        return tuple(sorted(seen, key=int))
    except ValueError:
        return tuple(sorted(seen))


def _two_classes(path: Path, column: str, seen: Collection[str]) -> None:
    """Fail unless a train file holds at least two labels: one class teaches nothing."""
    if len(seen) < 2:
        raise DataError(
            f"{path}: {len(seen)} distinct label(s) in column {column!r}"
            f" ({names(sorted(seen)) or 'no rows'}); a classifier needs at least two"
        )


def _labelled(
    task: TaskSpec,
    split: str,
    path: Path,
    columns: Columns,
    records: Iterable[tuple[int, Row]],
    raw_labels: Sequence[str],
) -> LabelledSplit:
    examples = _examples(path, columns, records, raw_labels)
    return LabelledSplit(task, split, examples, str(path), _fingerprint(path, columns, raw_labels))


def _examples(
    path: Path, columns: Columns, records: Iterable[tuple[int, Row]], raw_labels: Sequence[str]
) -> list[Example]:
    ids = {raw: index for index, raw in enumerate(raw_labels)}
    examples = []
    for line, row in records:
        label = _label(path, line, columns.label, row[columns.label])
        if label not in ids:
            raise DataError(
                f"{path}:{line}: label {label!r} in column {columns.label!r}"
                f" is not one of the task's labels ({names(raw_labels)})"
            )
        text_a, *rest = (_text(path, line, column, row[column]) for column in columns.text)
        score = None if columns.score is None else _score(path, line, columns.score, row)
        examples.append(Example(text_a, rest[0] if rest else None, ids[label], score))
    return examples


def _label(path: Path, line: int, column: str, value: object) -> str:
    """A label as text, so that CSV's ``"1"`` and JSON's ``1`` are the same label."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{path}:{line}: label {value!r} in column {column!r} is not text or int")
    text = str(value).strip()
    if not text:
        raise DataError(f"{path}:{line}: empty label in column {column!r}")
    return text


def _text(path: Path, line: int, column: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}:{line}: column {column!r} holds {value!r}, not text")
    return value


def _score(path: Path, line: int, column: str, row: Row) -> float:
    """A finite number from ``data.score_column`` (text in CSV/TSV, a number in JSON)."""
    value = row[column]
    number = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if not math.isfinite(number):
        raise DataError(
            f"{path}:{line}: column {column!r} (data.score_column) holds {value!r},"
            " not a finite number"
        )
    return number


def _fingerprint(path: Path, columns: Columns, raw_labels: Sequence[str]) -> str:
    """sha256 of the file bytes and of how they were read (columns, label ids)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    read = [columns.text, columns.label, list(raw_labels)]
    digest.update(json.dumps([*read, columns.score] if columns.score else read).encode())
    return digest.hexdigest()
