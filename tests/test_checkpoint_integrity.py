"""A damaged checkpoint or event log is refused with a message, never resumed into another run.

A real run of a tiny random model is stopped at a checkpoint; copies of its folder, each
damaged another way (bytes flipped at seeded random positions of the header and of the data,
cut short, emptied, a header that is not UTF-8 or not JSON, no checksum; the event log emptied,
cut or edited), are resumed through the CLI. Each ends exactly as the uninterrupted run, or is
refused: exit code 2, a message naming the file, no traceback, the folder as it was.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes import deterministic
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import build_config
from fedlora.experiment import Interrupted, run_experiment
from fedlora.results.events import read_events
from fedlora.results.folders import LOCK_FILE

CHECKPOINT = "checkpoint.safetensors"
PREVIOUS = "checkpoint.previous.safetensors"
EVENTS = "events.jsonl"

Damage = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Runs:
    reference: dict[str, Any]  # the uninterrupted run, comparably
    stopped: Path  # the same run stopped at a checkpoint


def _comparable(folder: Path) -> dict[str, Any]:
    """What an exact resume reproduces: events, metrics (wall times aside), the final adapter."""
    with (folder / "metrics.csv").open() as handle:
        metrics = [
            {k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(handle)
        ]
    return {
        "events": deterministic(read_events(folder / EVENTS)),
        "metrics": metrics,
        "global": (folder / "global.safetensors").read_bytes(),
    }


@pytest.fixture
def runs(tmp_path: Path, tiny_config: dict) -> Runs:
    tiny_config["runtime"] = {"checkpoint_every": 1}
    config = build_config(tiny_config)
    run_experiment(config, tmp_path / "reference")
    polls = iter(range(5))  # the stop request comes at the 6th safe point, after two merges
    with pytest.raises(Interrupted):
        run_experiment(config, tmp_path / "stopped", interrupted=lambda: next(polls, -1) < 0)
    assert (tmp_path / "stopped" / PREVIOUS).is_file()
    return Runs(_comparable(tmp_path / "reference"), tmp_path / "stopped")


def _state(folder: Path) -> dict[str, bytes]:
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _resume(runs: Runs, folder: Path, refusal: str) -> bool:
    """Resume ``folder`` through the CLI: True if it ended exactly as the uninterrupted run,
    False if it was refused with ``refusal`` (exit 2, no traceback, nothing changed)."""
    before = _state(folder)
    result = CliRunner().invoke(app, ["run", "--resume", str(folder), "--quiet"])
    if result.exit_code == 0:
        assert _comparable(folder) == runs.reference, "resumed into a different run"
        return True
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and refusal in result.output, result.output
    assert _state(folder) == before
    return False


def _damaged(runs: Runs, name: str, file: str, damage: Damage) -> Path:
    """A copy of the stopped run with ``file`` damaged."""
    folder = runs.stopped.with_name(name)
    shutil.copytree(runs.stopped, folder)
    path = folder / file
    path.write_bytes(damage(path.read_bytes()))
    return folder


def _flip(at: int, mask: int) -> Damage:
    return lambda data: data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _without_checksum(data: bytes) -> bytes:
    """The checkpoint as a fedlora without checksums wrote it."""
    metadata = json.loads(data[8 : _header_end(data)])["__metadata__"]
    del metadata["fedlora.sha256"]
    return save_safetensors(load_safetensors(data), metadata=metadata)


def _checkpoint_damages(data: bytes, rng: random.Random) -> dict[str, tuple[Damage, bool]]:
    """Named damages, and whether each must be refused (a flipped byte of header padding, or
    one JSON reads the same, may resume, exactly)."""
    end = _header_end(data)
    damages: dict[str, tuple[Damage, bool]] = {}
    for at in sorted(rng.sample(range(end), 10)):
        damages[f"header byte {at} flipped"] = (_flip(at, rng.randrange(1, 256)), False)
    for at in sorted(rng.sample(range(end, len(data)), 12)):
        damages[f"data byte {at} flipped"] = (_flip(at, rng.randrange(1, 256)), True)
    for size in sorted(rng.sample(range(1, len(data)), 5)):
        damages[f"cut to {size} bytes"] = (lambda d, n=size: d[:n], True)
    damages |= {
        "emptied": (lambda d: b"", True),
        "a header length past the end": (lambda d: (1 << 40).to_bytes(8, "little") + d[8:], True),
        "a header that is not UTF-8": (lambda d: d[:8] + b"\xff" * (end - 8) + d[end:], True),
        "a header that is not JSON": (lambda d: d[:8] + b"[" * (end - 8) + d[end:], True),
        "a JSON list for a header": (lambda d: d[:8] + b"[1]".ljust(end - 8) + d[end:], True),
        "no checksum": (_without_checksum, True),
    }
    return damages


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_or_resumes_exactly(runs: Runs) -> None:
    data = (runs.stopped / CHECKPOINT).read_bytes()
    damages = _checkpoint_damages(data, random.Random(23))
    assert len(damages) >= 30
    for i, (name, (damage, refused)) in enumerate(damages.items()):
        folder = _damaged(runs, f"case{i}", CHECKPOINT, damage)
        refusal = f"{folder / CHECKPOINT} cannot be resumed: "
        resumed = _resume(runs, folder, refusal)
        assert not (refused and resumed), f"{name}: resumed"


@pytest.mark.slow
def test_a_damaged_event_log_is_refused_and_events_past_the_checkpoint_are_redone(
    runs: Runs,
) -> None:
    for name, damage, found in [
        ("emptied", lambda d: b"", "it holds 0 of"),
        ("cut in half", lambda d: d[: len(d) // 2], "it holds"),
        ("one byte changed", _flip(40, 0x01), "its first"),
    ]:
        folder = _damaged(runs, name, EVENTS, damage)
        refusal = f"{folder / EVENTS} is not the log its checkpoint recorded ({found}"
        assert not _resume(runs, folder, refusal), name
        assert b"\0" not in (folder / EVENTS).read_bytes()  # never padded
    # a run killed after its last checkpoint logged events past it: they are redone
    folder = _damaged(runs, "killed", EVENTS, lambda d: d + b'{"type": "arrival", "t": 1')
    assert _resume(runs, folder, "")


@pytest.mark.slow
def test_the_previous_checkpoint_is_the_fallback_the_message_names(runs: Runs) -> None:
    for lost in ("damaged", "missing"):
        folder = _damaged(runs, lost, CHECKPOINT, lambda d: d[: len(d) // 2])
        if lost == "missing":  # killed between setting the old one aside and renaming the new
            (folder / CHECKPOINT).rename(folder / f"{CHECKPOINT}.tmp")
        advice = f"mv {folder / PREVIOUS} {folder / CHECKPOINT}, then fedlora run --resume {folder}"
        assert not _resume(runs, folder, advice), lost
        os.replace(folder / PREVIOUS, folder / CHECKPOINT)
        assert _resume(runs, folder, ""), lost
        assert not {CHECKPOINT, PREVIOUS, f"{CHECKPOINT}.tmp"} & set(os.listdir(folder))
