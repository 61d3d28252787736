"""The run folder: resolved config, events, metrics table, summary, final adapter, curves.

``results/<run>/`` is self-describing: ``fedlora report`` and ``fedlora export`` need nothing
but the folder.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fedlora.adapters import AdapterState
from fedlora.config import ExperimentConfig, TargetConfig, dump_config, load_config
from fedlora.data.tasks import TaskSpec
from fedlora.outcome import Evaluation, Outcome
from fedlora.predictions import Predictions
from fedlora.results.atomic import write_atomically
from fedlora.results.errors import RunFolderError
from fedlora.results.events import LogMark, verified_prefix
from fedlora.snapshot import Snapshot, SnapshotError
from fedlora.target import first_reaching, lower_is_better
from fedlora.terciles import length_terciles

if TYPE_CHECKING:
    from fedlora.aggregation.diagnostics import MergeDiagnostics

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


def _evaluation_row(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "step": evaluation.step,
        "round": evaluation.round,
        "virtual_time_s": evaluation.time,
        "wall_time_s": evaluation.wall,
        **evaluation.metrics,
    }


def summarize(
    config: ExperimentConfig,
    outcome: Outcome,
    task: TaskSpec,
    predictions: Predictions | None = None,
    local_sizes: Sequence[int] | None = None,
    global_own: Mapping[int, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The run's headline numbers; ``best`` is the evaluation best on the task's first metric
    (highest, or lowest for a loss: an instruction task's).

    With the final model's ``predictions`` (carrying context lengths), ``final.by_length``
    slices its accuracy and loss by length tercile; ``local_sizes`` are the clients' own test
    split sizes, reported beside their local scores, and ``global_own`` the final global
    model's scores on each client's own test split (the control for them)."""
    metrics = task.metrics
    final = outcome.evaluations[-1]
    pick = min if lower_is_better(metrics[0]) else max
    best = pick(outcome.evaluations, key=lambda e: e.metrics[metrics[0]])
    summary: dict[str, Any] = {
        "name": config.name,
        "task": config.data.task,
        "labels": list(task.label_names),
        "policy": config.server.policy,
        "aggregator": config.server.aggregator,
        "clients": config.clients.num,
        "seed": config.seed,
        "stop_reason": outcome.stop_reason,
        # the final model, as of the run's end (lost jobs may advance rounds and time after
        # its last merge, never the model)
        "final": {
            **_evaluation_row(final),
            "round": outcome.rounds,
            "virtual_time_s": outcome.virtual_time,
        },
        "best": _evaluation_row(best),
        "virtual_time_s": outcome.virtual_time,
        "wall_time_s": outcome.wall_time,
        "server_steps": outcome.steps,
        "rounds": outcome.rounds,
        "bytes_down": outcome.bytes_down,
        "bytes_up": outcome.bytes_up,
        "updates_accepted": outcome.accepted,
        "updates_applied": outcome.applied,
        "updates_rejected": outcome.rejected,
        "updates_clipped": outcome.clipped,
        "updates_dropped": outcome.dropped,
        "jobs_lost": outcome.lost,
        "jobs_in_flight": outcome.in_flight,
        "staleness": _staleness_summary(config, outcome),
        "client_idle_fraction": _idle_fractions(config, outcome),
    }
    if predictions is not None and predictions.lengths is not None:
        summary["final"]["by_length"] = length_terciles(predictions)
    if outcome.local_evaluations:
        summary["local"] = _local_summary(outcome, metrics[0], local_sizes, global_own)
    if outcome.diagnostics:
        summary["diagnostics"] = _diagnostics_summary(outcome.diagnostics)
    if config.eval.target is not None:
        summary["target"] = _target_summary(config.eval.target, outcome)
    return summary


def _reached(evaluation: Evaluation | None) -> dict[str, Any]:
    return {
        "reached": evaluation is not None,
        **({} if evaluation is None else _evaluation_row(evaluation)),
    }


def _target_summary(target: TargetConfig, outcome: Outcome) -> dict[str, Any]:
    """The first noisy crossing (flat, as before), the first crossing of the running mean of the
    last ``smooth`` evaluations, and, with ``target.max_loss``, the first eval with loss ≤ it."""
    series = [e.metrics for e in outcome.evaluations]

    def first(metric: str, value: float, smooth: int) -> dict[str, Any]:
        index = first_reaching(series, metric, value, smooth)
        return _reached(None if index is None else outcome.evaluations[index])

    summary = {
        **target.model_dump(),
        **_reached(outcome.target),
        "smoothed": first(target.metric, target.value, target.smooth),
    }
    if target.max_loss is not None:
        summary["on_loss"] = first("loss", target.max_loss, 1)
    return summary


def _local_summary(
    outcome: Outcome,
    metric: str,
    local_sizes: Sequence[int] | None,
    global_own: Mapping[int, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Each client's latest trained model on its own test split and on the global eval split:
    mean, spread across clients and range, against the final global model; the losses beside
    (``own_loss``, ``dev_loss``) where the evaluations scored them, and the size of each
    client's own split (``examples``) where known, since accuracy on a handful is noise.

    With ``global_own`` (the final global model scored on each client's own split, the same
    way), ``global_own`` and (beside ``own_loss``) ``global_own_loss``, and the paired
    difference per client of its own model minus the global one on the same split:
    ``own_gain`` (``own − global_own``) and ``own_loss_gain`` (``own_loss − global_own_loss``).
    For accuracy higher is better, so a positive gain is the client model's advantage on its
    own data; for a loss (``own_loss_gain``, and ``own_gain`` of an instruction task, whose
    metric is the response loss) lower is better, so the advantage is a negative gain. An
    easier own split lifts both scores alike and cancels in the gain."""
    latest = {e.client: e for e in outcome.local_evaluations}  # later evaluations win
    clients = sorted(latest)
    scored: dict[str, dict[int, Mapping[str, float]]] = {
        "own": {c: latest[c].own for c in clients},
        "dev": {c: latest[c].dev for c in clients},
        "global_own": {c: (global_own or {}).get(c, {}) for c in clients},
    }

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values),
            "min": min(values),
            "max": max(values),
        }

    per_client: dict[int, dict[str, Any]] = {
        c: {"started_from": latest[c].started_from} for c in clients
    }
    summary: dict[str, Any] = {"metric": metric, "evaluations": len(outcome.local_evaluations)}
    for name, side, key in (
        ("own", "own", metric),
        ("dev", "dev", metric),
        ("own_loss", "own", "loss"),
        ("dev_loss", "dev", "loss"),
        ("global_own", "global_own", metric),
        ("global_own_loss", "global_own", "loss"),
    ):
        if name == "global_own_loss" and "own_loss" not in summary:
            continue  # the control's loss only beside the client models' own
        if all(key in scored[side][c] for c in clients):  # dev: with eval.local_dev
            values = [scored[side][c][key] for c in clients]
            summary[name] = spread(values)
            for c, value in zip(clients, values, strict=True):
                per_client[c][name] = value
    for name, mine, theirs in (
        ("own_gain", "own", "global_own"),
        ("own_loss_gain", "own_loss", "global_own_loss"),
    ):
        if mine in summary and theirs in summary:
            values = [per_client[c][mine] - per_client[c][theirs] for c in clients]
            summary[name] = spread(values)
            for c, value in zip(clients, values, strict=True):
                per_client[c][name] = value
    if local_sizes is not None:
        sizes = [local_sizes[c] for c in clients]
        summary["examples"] = spread([float(n) for n in sizes])
        for c, size in zip(clients, sizes, strict=True):
            per_client[c]["examples"] = size
    return {
        **summary,
        "global_dev": outcome.evaluations[-1].metrics[metric],
        "clients": {str(c): entry for c, entry in per_client.items()},
    }


def _diagnostics_summary(merges: list[MergeDiagnostics]) -> dict[str, Any]:
    """Mean, max and last of each per-merge diagnostic (shadow errors by aggregator)."""

    def over_merges(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "max": max(values), "last": values[-1]}

    ranks = merges[-1].energy_above
    summary: dict[str, Any] = {
        "merges": len(merges),
        "error": over_merges([m.error for m in merges]),
        "spread": over_merges([m.spread for m in merges]),
        "energy_above": {str(r): over_merges([m.energy_above[r] for m in merges]) for r in ranks},
    }
    if merges[-1].shadow:
        summary["shadow"] = {
            name: over_merges([m.shadow[name] for m in merges]) for name in merges[-1].shadow
        }
    return summary


def _staleness_summary(config: ExperimentConfig, outcome: Outcome) -> dict[str, Any]:
    """Histogram of accepted results by staleness (in ``server.staleness_unit``), mean and max."""
    counts = outcome.staleness
    total = sum(counts.values())
    return {
        "unit": config.server.staleness_unit,
        "histogram": {str(k): counts[k] for k in sorted(counts)},
        "mean": sum(k * n for k, n in counts.items()) / total if total else None,
        "max": max(counts, default=None),
    }


def _idle_fractions(config: ExperimentConfig, outcome: Outcome) -> list[float]:
    """Per client, the share of the run's virtual time it had no job (waiting or unused)."""
    span = outcome.virtual_time
    return [
        round(1.0 - outcome.busy_time.get(c, 0.0) / span, 6) if span > 0 else 1.0
        for c in range(config.clients.num)
    ]


def write_run(folder: Path, outcome: Outcome, summary: dict[str, Any]) -> dict[str, Any]:
    """Write metrics.csv, ``summary`` (:func:`summarize`'s) as summary.json and the global
    adapter; returns the summary as written, non-finite values as null."""
    rows = [_evaluation_row(e) for e in outcome.evaluations]
    with (folder / METRICS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = strict_json(summary)
    text = json.dumps(summary, indent=2, allow_nan=False)
    (folder / SUMMARY_FILE).write_text(text + "\n", encoding="utf-8")
    (folder / GLOBAL_FILE).write_bytes(outcome.global_state.to_bytes())
    return summary


def strict_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with NaN and ±Inf as null (strict JSON parsers refuse them), the paths of
    those values listed under ``non_finite``."""
    found: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned: dict[str, Any] = clean(summary, "")
    if found:
        cleaned["non_finite"] = found
    return cleaned


def learning_failure(summary: dict[str, Any]) -> str | None:
    """Why a finished run learned nothing, or None: no merge at all, every update rejected,
    or a final loss that is not a number."""
    if summary["server_steps"] == 0:
        return (
            f"no merge happened: {summary['updates_rejected']} updates rejected,"
            f" {summary['jobs_lost']} jobs lost, {summary['updates_dropped']} dropped"
        )
    if summary["final"].get("loss", 0.0) is None:
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


class _Headline(BaseModel):
    """The summary.json entries every reader may count on, with their types; others follow."""

    model_config = ConfigDict(extra="allow")

    name: str
    task: str
    policy: str
    aggregator: str
    final: dict[str, Any]
    best: dict[str, Any]
    server_steps: int
    rounds: int
    virtual_time_s: float
    wall_time_s: float
    bytes_down: int
    bytes_up: int
    target: dict[str, Any] | None = None


def read_summary(folder: Path) -> dict[str, Any]:
    """The run's summary.json; missing, it is not a finished run, and damaged (not JSON, not
    UTF-8, not an object, or without a headline entry) it is refused naming the file."""
    path = _require(folder, SUMMARY_FILE)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise damaged(path, f"line {error.lineno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise damaged(path, f"not UTF-8 text ({error.reason})") from None
    if not isinstance(summary, dict):
        raise damaged(path, "not a JSON object")
    try:
        _Headline.model_validate(summary)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise damaged(path, f"{key}: {first['msg'].lower()}") from None
    return summary


def read_metrics(folder: Path) -> list[dict[str, float]]:
    """The run's metrics.csv rows; a field that is no number, a row that does not fit the
    header, no rows, or no step or virtual_time_s column is refused naming the file."""
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
    missing = {"step", "virtual_time_s"} - rows[0].keys()
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
