"""Multiple-choice questions (ARC's layout): a query, its choices and the index of the right one.

Each line of the JSONL file is ``{"query": str, "choices": [str, ...], "gold": int}``; a line
that is not is refused naming the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedlora.config import ExperimentConfig, resolve_data_dir
from fedlora.data.rows import DataError


@dataclass(frozen=True)
class Question:
    query: str
    choices: tuple[str, ...]
    gold: int


def configured_questions(config: ExperimentConfig) -> list[Question]:
    """The questions ``eval.choices`` names (its file relative to ``data.dir`` unless absolute);
    empty without it."""
    choices = config.eval.choices
    if choices is None:
        return []
    path = choices.file
    data_dir = None if path.is_absolute() else resolve_data_dir(config)
    return read_questions(path if data_dir is None else data_dir / path, choices.limit)


def read_questions(path: Path, limit: int | None = None) -> list[Question]:
    """The file's first ``limit`` questions (all without one), in file order."""
    questions: list[Question] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if limit is not None and len(questions) >= limit:
                    break
                if line.strip():
                    questions.append(_question(line, f"{path}:{number}"))
    except OSError as error:
        raise DataError(f"eval.choices.file: cannot read {path} ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def _question(line: str, where: str) -> Question:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not a JSON object ({error.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object")
    query, choices, gold = row.get("query"), row.get("choices"), row.get("gold")
    if not isinstance(query, str):
        raise DataError(f"{where}: 'query' must be text")
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: 'choices' must be a list of at least 2 texts")
    if not all(isinstance(choice, str) and choice for choice in choices):
        raise DataError(f"{where}: every one of 'choices' must be non-empty text")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: 'gold' must be the index of one of its {len(choices)} choices")
    return Question(query=query, choices=tuple(choices), gold=gold)
