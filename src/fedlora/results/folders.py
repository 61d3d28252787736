"""Which folders a run may write into: nothing that is not a run is ever deleted.

``--overwrite`` replaces a folder only when every entry in it is something a fedlora run
writes (so a folder of notes that happens to hold a ``config.yaml`` is safe), never the
working directory or one of its parents, and only after every check of the new run passed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedlora.config import ConfigError
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

RUN_FILES = frozenset(
    {
        CONFIG_FILE,
        EVENTS_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        GLOBAL_FILE,
        CURVES_FILE,
        *CHECKPOINT_FILES,
        "predictions.csv",
    }
)
RUN_FOLDERS = frozenset({ADAPTER_DIR})


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` that no fedlora run writes."""
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if not (
            (entry.is_file() and entry.name in RUN_FILES)
            or (entry.is_dir() and entry.name in RUN_FOLDERS)
        )
    )


def claim_run_folder(folder: Path, overwrite: bool) -> None:
    """Make ``folder`` ready for a new run, or raise :class:`ConfigError` and touch nothing.

    Absent or empty: fine. A fedlora run: replaced with ``overwrite``, else refused (a killed
    run can be resumed instead). Anything else: refused, whatever ``overwrite`` says.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out: {folder} is a file, not a folder")
    if not folder.exists() or not any(folder.iterdir()):
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
    if not overwrite:
        unfinished = (folder / CHECKPOINT_FILE).is_file()
        hint = f", or --resume {folder} to continue it" if unfinished else ""
        raise ConfigError(f"{folder} already holds a run; pass --overwrite or --out{hint}")
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
