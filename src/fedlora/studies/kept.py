"""The files a study's table is computed from, kept beside it in ``<docs>/cells/``.

A study's run folders (``results/studies/<name>/``) are not committed: they hold adapters,
checkpoints and event logs. Whenever ``fedlora study`` writes a table, it copies what the table
and its plots read from each cell it covers (config.yaml, summary.json, metrics.csv, an
instruction run's final readout, the final model's predictions and every evaluation's
predictions, ``predictions/step_NNNNNN.csv``, the predictions gzip-compressed; byte for byte as
the cell wrote them, and never an adapter), with the per-merge diagnostics of its event log
(``merges.json``, :mod:`fedlora.results.merges`: what the mechanism figures read), into
``<docs>/cells/<task>/<setting>/<arm>/seed<N>/``, and removes the kept files of cells it no
longer covers. The final evaluation's step file is
the final predictions again (the same bytes, unless a resumed run redid that evaluation): it
is then kept once, as ``predictions.csv.gz``, and read back for that step
(:func:`read_step_predictions`). A cell with no finished run folder is read from its
kept copy when that copy ran the same experiment (whatever data folder it was run with), so on
a fresh clone, with no runs at all, ``fedlora study NAME --table-only`` rewrites the committed
table byte for byte. Cells kept before the step files were kept have none: their tables pair
the final models only.

What the step files add, measured on a tiny run (a tiny random BERT scoring 3,000 synthetic
sentence pairs, evaluated at steps 0, 2, 4 and 6, as an HLoRA QQP cell is): the three earlier
evaluations' predictions pack to 78-81 KB each, 0.24 MB together, beside the final 81 KB. Packed
size follows the rows, not the model (each row's probabilities are 17-digit floats): a kept real
QQP cell's final predictions are about 96 KB, so an HLoRA QQP cell grows by about 0.3 MB, to
about 0.4 MB.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fedlora.predictions import Predictions
from fedlora.results.errors import RunFolderError
from fedlora.results.merges import MERGES_FILE, kept_merges
from fedlora.results.predictions import (
    PREDICTIONS_FILE,
    STEP_FILE,
    STEP_PREDICTIONS,
    read_predictions,
    step_predictions_path,
)
from fedlora.results.readouts import READOUT_FILES
from fedlora.results.store import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, damaged, read_summary
from fedlora.studies.sweep import Cell

CELLS_DIR = "cells"
PACKED = ".gz"  # the suffix of a kept, gzip-compressed predictions file
PACKED_PREDICTIONS_FILE = PREDICTIONS_FILE + PACKED
_AS_WRITTEN = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)  # kept as the cell wrote them
_FINAL_READOUT = READOUT_FILES[-1]  # an instruction run's final multiple-choice answers
_KEPT_FILES = {*_AS_WRITTEN, PACKED_PREDICTIONS_FILE, _FINAL_READOUT, MERGES_FILE}


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
        _write(target, _files_to_keep(cell.folder))
    _remove_others(docs / CELLS_DIR, kept)


def _files_to_keep(folder: Path) -> dict[str, bytes]:
    """A finished run folder's kept files by path relative to it, predictions packed."""
    files = {name: (folder / name).read_bytes() for name in _AS_WRITTEN}
    if (folder / _FINAL_READOUT).is_file():
        files[_FINAL_READOUT] = (folder / _FINAL_READOUT).read_bytes()
    merges = kept_merges(folder)
    if merges is not None:
        files[MERGES_FILE] = merges
    final = folder / PREDICTIONS_FILE
    final_bytes = final.read_bytes() if final.is_file() else None
    if final_bytes is not None:
        files[PACKED_PREDICTIONS_FILE] = _pack(final_bytes)
    steps = _step_files(folder, "")
    for path in steps:
        data = path.read_bytes()
        if path == steps[-1] and data == final_bytes:
            continue  # the final evaluation's: kept once, as predictions.csv.gz
        files[f"{STEP_PREDICTIONS}/{path.name}{PACKED}"] = _pack(data)
    return files


def _pack(data: bytes) -> bytes:
    # no time stamp in the header: the same predictions give the same bytes
    return gzip.compress(data, compresslevel=9, mtime=0)


def _step_files(folder: Path, suffix: str) -> list[Path]:
    """The step predictions in ``folder`` (``suffix``: "" as a run writes them, ``PACKED`` as
    kept), by step."""
    found = (folder / STEP_PREDICTIONS).glob(f"step_*.csv{suffix}")
    steps = [p for p in found if STEP_FILE.fullmatch(p.name.removesuffix(suffix))]
    return sorted(steps, key=lambda p: int(p.name[5:].split(".")[0]))


def _kept_files(folder: Path) -> set[str]:
    """The kept files in ``folder``, by path relative to it."""
    named = {name for name in _KEPT_FILES if (folder / name).is_file()}
    return named | {f"{STEP_PREDICTIONS}/{p.name}" for p in _step_files(folder, PACKED)}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    """``folder`` holds exactly ``files`` of the kept ones; a file that is already the same
    is left untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in _kept_files(folder) - files.keys():
        (folder / name).unlink()
    for name, data in files.items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    _remove_empty(folder)


def _remove_others(cells_dir: Path, kept: set[Path]) -> None:
    """Remove the kept files of every cell folder under ``cells_dir`` not in ``kept`` (never
    another file), and the folders they leave empty."""
    if not cells_dir.is_dir():
        return
    for summary in sorted(cells_dir.rglob(SUMMARY_FILE)):
        if summary.parent not in kept:
            for name in _kept_files(summary.parent):
                (summary.parent / name).unlink()
    _remove_empty(cells_dir)


def _remove_empty(top: Path) -> None:
    """Remove the empty folders under ``top``, deepest first."""
    for folder in sorted(top.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def has_predictions(folder: Path) -> bool:
    """Whether ``folder`` holds the final model's predictions, as written or as kept."""
    return _readable(folder / PREDICTIONS_FILE)


def has_step_predictions(folder: Path, step: int) -> bool:
    """Whether ``folder`` holds the predictions of the evaluation at ``step``, as written or as
    kept (the final evaluation's as the final predictions)."""
    return _readable(step_predictions_path(folder, step)) or _final_stands_for(folder, step)


def read_cell_predictions(folder: Path) -> Predictions:
    """A cell's final predictions: predictions.csv as its run wrote it, else the kept
    predictions.csv.gz; unreadable, a :class:`RunFolderError` naming the file."""
    return _read(folder / PREDICTIONS_FILE)


def read_step_predictions(folder: Path, step: int) -> Predictions:
    """A cell's predictions at evaluation ``step``: ``predictions/step_NNNNNN.csv`` as its run
    wrote it, else kept (``.gz``), else the final predictions where ``step`` is the final
    evaluation's; unreadable or missing, a :class:`RunFolderError` naming the file."""
    path = step_predictions_path(folder, step)
    if not _readable(path) and _final_stands_for(folder, step):
        return read_cell_predictions(folder)
    return _read(path)


def _readable(plain: Path) -> bool:
    return plain.is_file() or plain.with_name(plain.name + PACKED).is_file()


def _final_stands_for(folder: Path, step: int) -> bool:
    """Whether the final predictions are those of the evaluation at ``step`` (its step file
    kept once, as the final predictions)."""
    return has_predictions(folder) and read_summary(folder).final.step == step


def _read(plain: Path) -> Predictions:
    """The predictions at ``plain`` as a run wrote them, else packed beside it (``.gz``)."""
    packed = plain.with_name(plain.name + PACKED)
    if plain.is_file() or not packed.is_file():
        try:
            return read_predictions(plain)
        except ValueError as error:
            raise RunFolderError(str(error)) from None
    try:
        text = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise damaged(packed, f"not a readable gzip file ({error})") from None
    with tempfile.TemporaryDirectory(prefix="fedlora-predictions-") as scratch:
        unpacked = Path(scratch) / plain.name
        unpacked.write_bytes(text)
        try:
            return read_predictions(unpacked)
        except ValueError as error:
            cause = f"not a readable {plain.name} ({error.__cause__!r})"
            raise damaged(packed, cause) from None
