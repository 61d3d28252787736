"""The run folder: resolved config, events, metrics table, summary, final adapter, curves.

``results/<run>/`` is self-describing: ``fedlora report`` and ``fedlora export`` need nothing
but the folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedlora.adapters import AdapterState
from fedlora.config import ExperimentConfig, dump_config, load_config
from fedlora.outcome import Clock, Outcome
from fedlora.results.atomic import write_atomically
from fedlora.results.errors import RunFolderError
from fedlora.results.events import LogMark, verified_prefix
from fedlora.results.run_summary import INLINED, RunSummary
from fedlora.results.summary import evaluation_row
from fedlora.snapshot import Snapshot, SnapshotError

CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
GLOBAL_FILE = "global.safetensors"
ADAPTER_DIR = "adapter"
CURVES_FILE = "curves.png"
CHECKPOINT_FILE = "checkpoint.safetensors"
PREVIOUS_CHECKPOINT = "checkpoint.previous.safetensors"  # the one before: a fallback
# every file the checkpoints of a run may leave (the temporary one after a crash mid-write)
CHECKPOINT_FILES = (CHECKPOINT_FILE, CHECKPOINT_FILE + ".tmp", PREVIOUS_CHECKPOINT)


def write_run(
    folder: Path, outcome: Outcome, summary: RunSummary, clock: Clock = "virtual"
) -> RunSummary:
    """Write metrics.csv (times on the runtime's ``clock``), ``summary``
    (:func:`~fedlora.results.summary.summarize`'s) as summary.json and the global adapter;
    returns the summary as :func:`read_summary` reads it back (``non_finite`` set where the
    file has nulls for NaN or ±Inf)."""
    rows = [evaluation_row(e, clock).model_dump(exclude_unset=True) for e in outcome.evaluations]
    with (folder / METRICS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written = strict_json(summary.written())
    text = json.dumps(written, indent=2, allow_nan=False)
    (folder / SUMMARY_FILE).write_text(text + "\n", encoding="utf-8")
    (folder / GLOBAL_FILE).write_bytes(outcome.global_state.to_bytes())
    return RunSummary.model_validate(_with_non_finite(written))


def _each_leaf(value: Any, change: Callable[[Any, str], Any], path: str = "") -> Any:
    """``value`` with ``change(leaf, its path)`` for each leaf; a path as ``non_finite`` lists
    it (``final.loss``, ``client_idle_fraction[3]``)."""
    if isinstance(value, dict):
        return {
            k: _each_leaf(v, change, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_each_leaf(v, change, f"{path}[{i}]") for i, v in enumerate(value)]
    return change(value, path)


def strict_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with NaN and ±Inf as null (strict JSON parsers refuse them), the paths of
    those values listed under ``non_finite``."""
    found: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
            return None
        return value

    cleaned: dict[str, Any] = _each_leaf(summary, clean)
    if found:
        cleaned["non_finite"] = found
    return cleaned


def _with_non_finite(summary: dict[str, Any]) -> dict[str, Any]:
    """:func:`strict_json` undone: NaN again at the nulls ``non_finite`` lists (that NaN was
    an infinity is not kept), so a model whose loss diverged reads as a float, not a None."""
    listed = set(summary.get("non_finite") or ())

    def restore(value: Any, path: str) -> Any:
        return math.nan if value is None and path in listed else value

    restored: dict[str, Any] = _each_leaf(summary, restore)
    return restored


def learning_failure(summary: RunSummary) -> str | None:
    """Why a finished run learned nothing, or None: no merge at all, every update rejected,
    or a final loss that is not a number."""
    if summary.server_steps == 0:
        return (
            f"no merge happened: {summary.updates_rejected} updates rejected,"
            f" {summary.jobs_lost} jobs lost, {summary.updates_dropped} dropped"
        )
    if not math.isfinite(summary.final.metrics.get("loss", 0.0)):
        return "the final model's loss is not a number (NaN or Inf)"
    return None


def write_config(folder: Path, config: ExperimentConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise RunFolderError(f"{folder}: no {name}; is this a finished fedlora run folder?")
    return path


def damaged(path: Path, problem: str) -> RunFolderError:
    """A run-folder file that is there but cannot be read as what it should be."""
    return RunFolderError(f"{path}: {problem}; the run folder is damaged")


def read_json(path: Path) -> Any:
    """A run-folder JSON file's contents; not UTF-8 or not JSON, it is refused naming the file
    and the line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise damaged(path, f"line {error.lineno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise damaged(path, f"not UTF-8 text ({error.reason})") from None


def read_summary(folder: Path) -> RunSummary:
    """The run's summary.json; missing, it is not a finished run, and damaged (not JSON, not
    UTF-8, not an object, or an entry missing or of the wrong type) it is refused naming the
    file and the entry."""
    path = _require(folder, SUMMARY_FILE)
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise damaged(path, "not a JSON object")
    try:
        return RunSummary.model_validate(_with_non_finite(summary))
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"] if part not in INLINED)
        raise damaged(path, f"{key}: {first['msg'].lower()}") from None


def read_metrics(folder: Path) -> list[dict[str, float]]:
    """The run's metrics.csv rows; a field that is no number, a row that does not fit the
    header, no rows, or no step or time column (virtual, or a deployment's wall) is refused
    naming the file."""
    path = _require(folder, METRICS_FILE)
    try:
        with path.open(encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    except UnicodeDecodeError as error:
        raise damaged(path, f"not UTF-8 text ({error.reason})") from None
    except (ValueError, csv.Error) as error:  # a field that is no number
        raise damaged(path, str(error)) from None
    except TypeError:  # csv.DictReader's None for a row shorter or longer than the header
        raise damaged(path, "a row whose fields do not match the header") from None
    if not rows:
        raise damaged(path, "no rows")
    clock = "virtual_time_s" if "wall_time_s" not in rows[0] else "wall_time_s"
    missing = {"step", clock} - rows[0].keys()
    if missing:
        raise damaged(path, f"no column {', '.join(sorted(missing))}")
    return rows


def read_config(folder: Path) -> ExperimentConfig:
    return load_config(_require(folder, CONFIG_FILE))


def read_global_state(folder: Path) -> AdapterState:
    return AdapterState.from_bytes(_require(folder, GLOBAL_FILE).read_bytes())


def write_checkpoint(folder: Path, snapshot: Snapshot, events: LogMark) -> None:
    """Checkpoint ``snapshot`` with where the event log stands; the checkpoint it replaces is
    kept as :data:`PREVIOUS_CHECKPOINT`, something to fall back to if this one is damaged."""
    snapshot.meta["events"] = {"offset": events.offset, "sha256": events.sha256}
    path = folder / CHECKPOINT_FILE
    write_atomically(path, snapshot.to_bytes(), keep=folder / PREVIOUS_CHECKPOINT)


def read_checkpoint(folder: Path) -> Snapshot:
    """The checkpoint to resume from, verified, with the event log it was taken with."""
    path = folder / CHECKPOINT_FILE
    if (folder / SUMMARY_FILE).is_file() and not path.is_file():
        raise RunFolderError(f"{folder}: nothing to resume, the run finished")
    if not path.is_file():
        missing = f"{folder}: no {CHECKPOINT_FILE}"
        raise RunFolderError(_fallback(folder, missing, "is this a fedlora run folder?"))
    try:
        snapshot = Snapshot.from_bytes(path.read_bytes())
    except SnapshotError as error:
        raise RunFolderError(
            _fallback(
                folder, f"{path} cannot be resumed: {error}", "start the run again with --overwrite"
            )
        ) from None
    verified_prefix(folder / EVENTS_FILE, checkpoint_mark(snapshot))
    return snapshot


def checkpoint_mark(snapshot: Snapshot) -> LogMark:
    """Where the event log stood when ``snapshot`` was taken."""
    return LogMark(**snapshot.meta["events"])


def _fallback(folder: Path, problem: str, otherwise: str) -> str:
    """``problem``, and what the user can do: resume from the previous checkpoint where one is
    kept, else ``otherwise``."""
    previous = folder / PREVIOUS_CHECKPOINT
    if not previous.is_file():
        return f"{problem}; {otherwise}"
    return (
        f"{problem}; the checkpoint before it is kept: mv {previous} {folder / CHECKPOINT_FILE},"
        f" then fedlora run --resume {folder} continues from there"
    )


def remove_checkpoint(folder: Path) -> None:
    """A finished run needs no checkpoint: its results say everything."""
    for name in CHECKPOINT_FILES:
        (folder / name).unlink(missing_ok=True)
