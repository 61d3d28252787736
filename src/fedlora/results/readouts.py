"""An instruction run's readouts in its folder: ``readout.start.json`` (the base model, written
before training) and ``readout.final.json`` (the final global), each question's scores and each
instruction's answer; ``generations.md`` sets the answers side by side for a person.

The summary's ``choices`` block pairs the two on the same questions: the change in accuracy
with a 95 % interval from the per-question differences (normal approximation: hundreds of
questions), beside chance. Its ``from_start`` block does the same for the eval loss, from the
predictions of the first evaluation (the base model) and the last.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.predictions import Predictions
from fedlora.readout import Readout
from fedlora.results.atomic import write_atomically

START, FINAL = "start", "final"
READOUT_FILES = tuple(f"readout.{moment}.json" for moment in (START, FINAL))
GENERATIONS_FILE = "generations.md"
_Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def readout_path(folder: Path, moment: str) -> Path:
    return folder / f"readout.{moment}.json"


def write_readout(folder: Path, moment: str, readout: Readout) -> None:
    record: dict[str, Any] = {"version": readout.version, "choices": None}
    if readout.choices is not None:
        scores = readout.choices
        record["choices"] = {
            **scores.metrics(),
            "questions": len(scores.gold),
            "chance": statistics.fmean(1 / count for count in readout.choice_counts),
            "correct": scores.correct.astype(int).tolist(),
            "correct_norm": scores.correct_norm.astype(int).tolist(),
        }
    record["answers"] = [{"instruction": i, "answer": a} for i, a in readout.answers]
    text = json.dumps(record, indent=1) + "\n"
    write_atomically(readout_path(folder, moment), text.encode())


def read_readout(folder: Path, moment: str) -> dict[str, Any] | None:
    """The readout written at ``moment``, or None where there is none (a run resumed from a
    folder written before readouts existed)."""
    path = readout_path(folder, moment)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def choices_summary(start: dict[str, Any] | None, final: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``choices`` block: accuracy at the start and the end, chance, and the
    paired change on the same questions."""
    ended = final["choices"]
    if ended is None:
        return {}
    block: dict[str, Any] = {
        "questions": ended["questions"],
        "chance": ended["chance"],
        "final": {key: ended[key] for key in ("mc_accuracy", "mc_accuracy_norm")},
    }
    began = None if start is None else start["choices"]
    if began is not None:
        block["start"] = {key: began[key] for key in ("mc_accuracy", "mc_accuracy_norm")}
        block["change"] = {
            key: _paired_change(began[field], ended[field])
            for key, field in (("mc_accuracy", "correct"), ("mc_accuracy_norm", "correct_norm"))
        }
    return {"choices": block}


def loss_change_summary(start: Predictions, final: Predictions) -> dict[str, Any]:
    """The summary's ``from_start`` block: the eval loss of the first evaluated global (the
    base model) and of the final one, and the paired change on the same examples (an
    instruction task's weighted by response tokens, as its loss is)."""
    if not np.array_equal(start.ids, final.ids):
        return {}
    weights = None if final.tokens is None else final.tokens.astype(np.float64)
    return {
        "from_start": {
            "examples": len(final.ids),
            "start": {"loss": start.loss()},
            "final": {"loss": final.loss()},
            "change": {"loss": _paired_change(start.losses, final.losses, weights)},
        }
    }


def _paired_change(
    before: npt.ArrayLike, after: npt.ArrayLike, weights: npt.NDArray[np.float64] | None = None
) -> dict[str, float]:
    """The (weighted) mean of the per-item differences with a normal 95 % interval (the
    ratio estimator's standard error where weighted)."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    shares = np.ones_like(differences) if weights is None else weights / weights.mean()
    count = len(differences)
    mean = float((shares * differences).mean())
    spread = float(np.sqrt(((shares * (differences - mean)) ** 2).sum() / (count - 1)))
    half = _Z95 * spread / math.sqrt(count)
    return {"mean": mean, "low": mean - half, "high": mean + half}


def write_generations(folder: Path, start: dict[str, Any] | None, final: dict[str, Any]) -> None:
    """Each instruction with the base model's answer and the final model's, as markdown."""
    if not final["answers"]:
        return
    before = {} if start is None else {a["instruction"]: a["answer"] for a in start["answers"]}
    lines = ["# Generations: the base model and the final global (greedy)", ""]
    for entry in final["answers"]:
        lines += [f"## {entry['instruction']}", ""]
        if entry["instruction"] in before:
            lines += ["**start**", "", before[entry["instruction"]] or "(empty)", ""]
        lines += [f"**final** (version {final['version']})", "", entry["answer"] or "(empty)", ""]
    (folder / GENERATIONS_FILE).write_text("\n".join(lines), encoding="utf-8")
