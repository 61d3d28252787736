"""The files a study's table is computed from, kept beside it in ``<docs>/cells/``.

A study's run folders (``results/studies/<name>/``) are not committed: they hold adapters,
checkpoints and event logs. Whenever ``fedlora study`` writes a table, it copies what the table
and its plots read from each cell it covers (config.yaml, summary.json, metrics.csv, an
instruction run's final readout, and the final model's predictions, gzip-compressed; byte for
byte as the cell wrote them) into ``<docs>/cells/<task>/<setting>/<arm>/seed<N>/``, and
removes the kept files of cells it no longer covers. A cell with no finished run folder is
read from its kept copy when that copy ran the same experiment (whatever data folder it was
run with), so on a fresh clone, with no runs at all, ``fedlora study NAME --table-only``
rewrites the committed table byte for byte.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fedlora.predictions import Predictions
from fedlora.results.errors import RunFolderError
from fedlora.results.predictions import PREDICTIONS_FILE, read_predictions
from fedlora.results.readouts import READOUT_FILES
from fedlora.results.store import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, damaged
from fedlora.studies.sweep import Cell

CELLS_DIR = "cells"
PACKED_PREDICTIONS_FILE = PREDICTIONS_FILE + ".gz"
_AS_WRITTEN = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)  # kept as the cell wrote them
_FINAL_READOUT = READOUT_FILES[-1]  # an instruction run's final multiple-choice answers
_KEPT_FILES = {*_AS_WRITTEN, PACKED_PREDICTIONS_FILE, _FINAL_READOUT}


def kept_copy(cell: Cell, root: Path, docs: Path) -> Cell:
    """The cell as kept in ``docs``, for its run folder under the study's ``root``."""
    return replace(cell, folder=docs / CELLS_DIR / cell.folder.relative_to(root), kept=True)


def table_cells(cells: Sequence[Cell], root: Path, docs: Path) -> list[Cell]:
    """Each cell as its table reads it: its run folder where the cell finished there, else
    its kept copy where that is finished with the same experiment, else the unfinished cell."""
    found = []
    for cell in cells:
        if not cell.done:
            copy = kept_copy(cell, root, docs)
            cell = copy if copy.done else cell
        found.append(cell)
    return found


def keep_cells(cells: Sequence[Cell], root: Path, docs: Path) -> None:
    """Copy the files of each finished run folder among ``cells`` (as :func:`table_cells`
    gives them) into its kept folder, and remove the kept files of every other cell there."""
    kept: set[Path] = set()
    for cell in cells:
        if not cell.done:
            continue
        if cell.kept:
            kept.add(cell.folder)
            continue
        target = kept_copy(cell, root, docs).folder
        kept.add(target)
        files = {name: (cell.folder / name).read_bytes() for name in _AS_WRITTEN}
        if (cell.folder / _FINAL_READOUT).is_file():
            files[_FINAL_READOUT] = (cell.folder / _FINAL_READOUT).read_bytes()
        if (cell.folder / PREDICTIONS_FILE).is_file():
            plain = (cell.folder / PREDICTIONS_FILE).read_bytes()
            # no time stamp in the header: the same predictions give the same bytes
            files[PACKED_PREDICTIONS_FILE] = gzip.compress(plain, compresslevel=9, mtime=0)
        _write(target, files)
    _remove_others(docs / CELLS_DIR, kept)


def _write(folder: Path, files: dict[str, bytes]) -> None:
    """``folder`` holds exactly ``files`` of the kept ones; a file that is already the same
    is left untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in _KEPT_FILES - files.keys():
        (folder / name).unlink(missing_ok=True)
    for name, data in files.items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)


def _remove_others(cells_dir: Path, kept: set[Path]) -> None:
    """Remove the kept files of every cell folder under ``cells_dir`` not in ``kept`` (never
    another file), and the folders they leave empty."""
    if not cells_dir.is_dir():
        return
    for summary in sorted(cells_dir.rglob(SUMMARY_FILE)):
        if summary.parent not in kept:
            for name in _KEPT_FILES:
                (summary.parent / name).unlink(missing_ok=True)
    for folder in sorted(cells_dir.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def has_predictions(folder: Path) -> bool:
    """Whether ``folder`` holds the final model's predictions, as written or as kept."""
    return any((folder / name).is_file() for name in (PREDICTIONS_FILE, PACKED_PREDICTIONS_FILE))


def read_cell_predictions(folder: Path) -> Predictions:
    """A cell's final predictions: predictions.csv as its run wrote it, else the kept
    predictions.csv.gz; unreadable, a :class:`RunFolderError` naming the file."""
    packed = folder / PACKED_PREDICTIONS_FILE
    if (folder / PREDICTIONS_FILE).is_file() or not packed.is_file():
        try:
            return read_predictions(folder / PREDICTIONS_FILE)
        except ValueError as error:
            raise RunFolderError(str(error)) from None
    try:
        text = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise damaged(packed, f"not a readable gzip file ({error})") from None
    with tempfile.TemporaryDirectory(prefix="fedlora-predictions-") as scratch:
        plain = Path(scratch) / PREDICTIONS_FILE
        plain.write_bytes(text)
        try:
            return read_predictions(plain)
        except ValueError as error:
            cause = f"not a readable {PREDICTIONS_FILE} ({error.__cause__!r})"
            raise damaged(packed, cause) from None
