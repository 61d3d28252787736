"""Which folders a run may write into, and one writer per folder: nothing that is not a run is
ever deleted, and two processes never write one folder.

``--overwrite`` replaces a folder only when every entry in it (inside ``adapter/`` too) is
something a fedlora run writes, and a ``config.yaml`` with nothing else a run writes is the
user's, not a run (so a folder of notes that happens to hold one is safe); never a symbolic
link, the working directory or one of its parents, and only after every check of the new run
passed.

A run holds its folder for its whole life with an exclusive ``flock`` on :data:`LOCK_FILE`
inside it: a second run, or a ``--resume`` of a live one, is refused, and since the OS drops
the lock when the process ends, however it ends, a crash never leaves the folder stuck.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from fedlora.adapters import PEFT_WEIGHTS_FILE
from fedlora.config import ConfigError
from fedlora.results.errors import RunFolderError
from fedlora.results.predictions import PREDICTIONS_FILE, STEP_FILE, STEP_PREDICTIONS
from fedlora.results.readouts import GENERATIONS_FILE, READOUT_FILES
from fedlora.results.store import (
    ADAPTER_DIR,
    CHECKPOINT_FILE,
    CHECKPOINT_FILES,
    CONFIG_FILE,
    CURVES_FILE,
    EVENTS_FILE,
    GLOBAL_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
)

LOCK_FILE = ".fedlora.lock"

# what a run writes: a file by name, or a folder by name with what it writes inside (by name,
# or as files whose names match a pattern)
Layout: TypeAlias = Mapping[str, "Layout | re.Pattern[str] | None"]
RUN_LAYOUT: Layout = {
    name: None
    for name in (
        CONFIG_FILE,
        EVENTS_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        GLOBAL_FILE,
        CURVES_FILE,
        PREDICTIONS_FILE,
        LOCK_FILE,
        *CHECKPOINT_FILES,
        *READOUT_FILES,
        *(file + ".tmp" for file in READOUT_FILES),  # a crash mid-write leaves one
        GENERATIONS_FILE,
    )
} | {
    ADAPTER_DIR: {"adapter_config.json": None, PEFT_WEIGHTS_FILE: None},
    STEP_PREDICTIONS: STEP_FILE,
}


def foreign_entries(folder: Path, layout: Layout = RUN_LAYOUT) -> list[str]:
    """The entries of ``folder`` (at any depth of ``layout``) that no fedlora run writes; a
    symbolic link is never a run's, whatever its name, so nothing is deleted through one."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            found.append(f"{entry.name} (a symbolic link)")
            continue
        if entry.name in layout:
            inside = layout[entry.name]
            if inside is None and entry.is_file():
                continue
            if isinstance(inside, re.Pattern) and entry.is_dir():
                found += [
                    f"{entry.name}/{child.name}"
                    for child in sorted(entry.iterdir())
                    if child.is_symlink() or not child.is_file() or not inside.fullmatch(child.name)
                ]
                continue
            if isinstance(inside, Mapping) and entry.is_dir():
                found += [f"{entry.name}/{name}" for name in foreign_entries(entry, inside)]
                continue
        found.append(entry.name)
    return found


@contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """Be ``folder``'s one writer while the context lasts, or raise :class:`RunFolderError`
    naming the process that is."""
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such folder")
    try:
        lock = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:  # a link or a folder in its place, or no permission
        raise RunFolderError(f"{folder}: cannot open {LOCK_FILE} ({error.strerror})") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(lock, 32).decode(errors="replace").strip()
            raise RunFolderError(
                f"{folder} is in use by a running fedlora process"
                + (f" (pid {holder})" if holder else "")
                + "; wait for it to end (Ctrl-C stops it at a checkpoint) or choose another folder"
            ) from None
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(lock)  # releases the lock; the file stays, so no one ever locks a stale copy


@contextmanager
def claim_run_folder(folder: Path, overwrite: bool) -> Iterator[None]:
    """Hold ``folder`` for a new run, emptied: absent or empty is fine, a finished or killed
    run is replaced with ``overwrite`` (else refused: it can be resumed instead), anything else
    is refused whatever ``overwrite`` says. A refusal is a :class:`ConfigError` (or
    :class:`RunFolderError` for a live run) and touches nothing but a run's lock file."""
    _refuse_unless_run_or_empty(folder)  # before a lock file is made in someone else's folder
    folder.mkdir(parents=True, exist_ok=True)
    with hold_run_folder(folder):
        _refuse_unless_run_or_empty(folder)  # again: it may have changed before we held it
        if _entries(folder):
            if not overwrite:
                unfinished = (folder / CHECKPOINT_FILE).is_file()
                hint = f", or --resume {folder} to continue it" if unfinished else ""
                raise ConfigError(f"{folder} already holds a run; pass --overwrite or --out{hint}")
            for entry in _entries(folder):  # no links among them: nothing outside is reached
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        yield


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds besides its lock file (which alone makes no run)."""
    return [entry for entry in folder.iterdir() if entry.name != LOCK_FILE]


def _refuse_unless_run_or_empty(folder: Path) -> None:
    """Raise :class:`ConfigError` unless ``folder`` is absent, empty or a fedlora run's."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out: {folder} is a file, not a folder")
    if not folder.exists() or not _entries(folder):
        return
    here = Path.cwd().resolve()
    if folder.resolve() in (here, *here.parents):
        raise ConfigError(f"--out: {folder} is the working folder or holds it; choose a new one")
    if foreign := foreign_entries(folder):
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise ConfigError(
            f"--out: {folder} holds files that are not a fedlora run ({shown}); nothing was"
            " deleted: choose another folder"
        )
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"--out: {folder} is not a fedlora run folder; choose another folder")
    if {entry.name for entry in _entries(folder)} == {CONFIG_FILE}:
        raise ConfigError(
            f"--out: {folder} holds a {CONFIG_FILE} and nothing a run writes, so it is not a"
            " fedlora run; nothing was changed: choose another folder"
        )
