"""One split's labelled examples, read from a GLUE folder, a CSV/JSONL file or the HF hub.

Whatever is wrong with the data stops a run before training: a :class:`DataError` names the file
and the 1-based line as an editor shows it (the header is line 1), or the config key at fault.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedlora.config import DataConfig, unreadable
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
_HUB_DATASET = "nyu-mll/glue"
_HUB_SPLITS = {"dev": "validation"}
# The csv module refuses fields over 131,072 characters by default; a long document is data.
_MAX_FIELD = 2**31 - 1


class DataError(ValueError):
    """Data that cannot be used; the message names the file and line, or the config key."""


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int
    score: float | None = None  # the data file's ``data.score_column``, when one is named
    response: str | None = None  # an instruction row's response (text_a: its instruction,
    # text_b: its context)
    client: int | None = None  # the data file's ``data.client_column``, when one is named


@dataclass(frozen=True)
class LabelledSplit:
    """A split's examples and their provenance; ``fingerprint`` changes whenever they could."""

    task: TaskSpec
    split: str
    examples: list[Example]
    origin: str
    fingerprint: str


class _GlueTsv(csv.excel_tab):
    """GLUE's files: split on tabs only, never unquoted, as texts hold unbalanced '"'."""

    quoting = csv.QUOTE_NONE


@dataclass(frozen=True)
class _Columns:
    """The fields of a row that hold the text(s) and the label."""

    text: tuple[str, ...]
    label: str
    score: str | None = None


Row = Mapping[str, Any]
Records = Iterator[tuple[int, Row]]  # (1-based line, fields by column name)


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
            return _load_hub(glue, split)
        return _load_glue(glue, data_dir, split, data.score_column)
    if data.task in INSTRUCTION_TASKS:
        from fedlora.data.instruct import load_instruct  # it reads files with this module

        if data.source == "hub":
            raise DataError(f"data.source: the hub serves GLUE tasks, not {data.task!r} files")
        return load_instruct(data, data_dir, split)
    if data.task in _READERS:
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
    columns = _Columns(task.text_columns, task.label_column, score_column)
    records = _read_delimited(path, columns, split, dialect=_GlueTsv)
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
    columns = _Columns(tuple(data.text_columns), data.label_column, data.score_column)
    read = _READERS[data.task]
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


def _label_names(path: Path, columns: _Columns, records: Records) -> tuple[str, ...]:
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
    columns: _Columns,
    records: Iterable[tuple[int, Row]],
    raw_labels: Sequence[str],
) -> LabelledSplit:
    examples = _examples(path, columns, records, raw_labels)
    return LabelledSplit(task, split, examples, str(path), _fingerprint(path, columns, raw_labels))


def _examples(
    path: Path, columns: _Columns, records: Iterable[tuple[int, Row]], raw_labels: Sequence[str]
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


def _label_kind(value: object) -> str | None:
    """What a JSON label is: "text" or "a number"; None for what :func:`_label` refuses."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool):
        return "a number"
    return None


def _same_label_kind(
    path: Path, line: int, column: str, value: object, first: tuple[int, object] | None
) -> tuple[int, object]:
    """The file's first label (its line and value); a later label of the other JSON type is
    refused: ``1`` beside ``"x"`` is a mistake in the file, not one class more."""
    if first is None:
        return line, value
    kinds = _label_kind(first[1]), _label_kind(value)
    if None not in kinds and kinds[0] != kinds[1]:
        raise DataError(
            f"{path}:{line}: label {value!r} in column {column!r} is {kinds[1]}, but line"
            f" {first[0]} gives {kinds[0]} ({first[1]!r}); a file's labels are all numbers"
            " or all text"
        )
    return first


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


def _fingerprint(path: Path, columns: _Columns, raw_labels: Sequence[str]) -> str:
    """sha256 of the file bytes and of how they were read (columns, label ids)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    read = [columns.text, columns.label, list(raw_labels)]
    digest.update(json.dumps([*read, columns.score] if columns.score else read).encode())
    return digest.hexdigest()


def _require(
    path: Path, line: int, present: Collection[str], columns: _Columns, split: str
) -> None:
    """Fail unless a header (or JSON object) has every column the task reads."""
    wanted = (*columns.text, columns.label, *([columns.score] if columns.score else []))
    missing = [column for column in wanted if column not in present]
    if missing == [columns.label]:
        raise DataError(
            f"{path}:{line}: the {split} split has no labels:"
            f" no column {columns.label!r} (columns: {names(present)})"
        )
    if missing:
        raise DataError(
            f"{path}:{line}: missing column {names(missing)} (columns: {names(present)})"
        )


@contextmanager
def opened(path: Path) -> Iterator[TextIO]:
    """The file as text; ``utf-8-sig`` drops a BOM so it never leaks into the first header."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield handle
    except UnicodeDecodeError as error:
        line = _undecodable_line(path)
        raise DataError(f"{path}:{line}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None


def _undecodable_line(path: Path) -> int:
    """The first line that is not UTF-8; the decoder only knows an offset in its buffer."""
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    return 1


def _read_delimited(
    path: Path,
    columns: _Columns,
    split: str,
    dialect: type[csv.Dialect] = csv.excel,
) -> Records:
    """Rows of a CSV/TSV with a header, streamed (QQP has 364k rows), by column name."""
    csv.field_size_limit(_MAX_FIELD)
    with opened(path) as handle:
        reader = csv.reader(handle, dialect)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file; expected a header row")
            _require(path, 1, header, columns, split)
            end = reader.line_num
            for fields in reader:
                # A quoted field may span lines: report the line the row starts on.
                line, end = end + 1, reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}:{line}: {len(fields)} fields, but the header has {len(header)}"
                    )
                yield line, dict(zip(header, fields, strict=True))
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num}: {error}") from None


def _read_jsonl(path: Path, columns: _Columns, split: str) -> Records:
    """One JSON object per line; blank lines are skipped."""
    first: tuple[int, object] | None = None  # the line and value of the file's first label
    with opened(path) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line}: not valid JSON: {error.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
            _require(path, line, row, columns, split)
            first = _same_label_kind(path, line, columns.label, row[columns.label], first)
            yield line, row


_READERS: dict[str, Callable[[Path, _Columns, str], Records]] = {
    "csv": _read_delimited,
    "jsonl": _read_jsonl,
}


def _load_hub(task: GlueTask, split: str) -> LabelledSplit:
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


def names(values: Iterable[object]) -> str:
    return ", ".join(repr(value) for value in values)
