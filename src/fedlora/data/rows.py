"""Rows of a data file as (1-based line, fields by column name): CSV and GLUE's TSV with a
header, or JSONL; whatever is wrong names the file and the line as an editor shows it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# The csv module refuses fields over 131,072 characters by default; a long document is data.
_MAX_FIELD = 2**31 - 1


class DataError(ValueError):
    """Data that cannot be used; the message names the file and line, or the config key."""


class GlueTsv(csv.excel_tab):
    """GLUE's files: split on tabs only, never unquoted, as texts hold unbalanced '"'."""

    quoting = csv.QUOTE_NONE


@dataclass(frozen=True)
class Columns:
    """The fields of a row that hold the text(s) and the label."""

    text: tuple[str, ...]
    label: str
    score: str | None = None


Row = Mapping[str, Any]
Records = Iterator[tuple[int, Row]]  # (1-based line, fields by column name)


def label_kind(value: object) -> str | None:
    """What a JSON label is: "text" or "a number"; None for what :func:`_label` refuses."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool):
        return "a number"
    return None


def samelabel_kind(
    path: Path, line: int, column: str, value: object, first: tuple[int, object] | None
) -> tuple[int, object]:
    """The file's first label (its line and value); a later label of the other JSON type is
    refused: ``1`` beside ``"x"`` is a mistake in the file, not one class more."""
    if first is None:
        return line, value
    kinds = label_kind(first[1]), label_kind(value)
    if None not in kinds and kinds[0] != kinds[1]:
        raise DataError(
            f"{path}:{line}: label {value!r} in column {column!r} is {kinds[1]}, but line"
            f" {first[0]} gives {kinds[0]} ({first[1]!r}); a file's labels are all numbers"
            " or all text"
        )
    return first


def require(path: Path, line: int, present: Collection[str], columns: Columns, split: str) -> None:
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


def read_delimited(
    path: Path,
    columns: Columns,
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
            require(path, 1, header, columns, split)
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


def read_jsonl(path: Path, columns: Columns, split: str) -> Records:
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
            require(path, line, row, columns, split)
            first = samelabel_kind(path, line, columns.label, row[columns.label], first)
            yield line, row


READERS: dict[str, Callable[[Path, Columns, str], Records]] = {
    "csv": read_delimited,
    "jsonl": read_jsonl,
}


def names(values: Iterable[object]) -> str:
    return ", ".join(repr(value) for value in values)
