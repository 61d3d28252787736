"""A study's cells in parallel: each unfinished cell runs as its own ``fedlora run`` process,
``jobs`` at a time.

Processes, not threads: each holds its own backbone and torch threads, so ``jobs`` cells use
``jobs`` cores or share one GPU, and a cell that fails takes only itself down. The cells run in
sessions of their own, so a Ctrl-C reaches the study alone, which passes one stop request to
every running cell: each checkpoints where it is, and the next ``fedlora study`` resumes it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedlora.config import dump_config
from fedlora.results.errors import RunFolderError
from fedlora.studies.sweep import Cell, finish_partial, start_partial

INTERRUPTED = 130  # the exit code of a run stopped at a safe point, with a checkpoint


class CellsFailed(Exception):
    """Some cells' runs failed; the others ran to the end (or their checkpoint)."""


class CellsInterrupted(Exception):
    """A stop request: the running cells checkpointed, the rest never started."""


@dataclass
class _Running:
    cell: Cell
    partial: Path
    process: subprocess.Popen[bytes]


def _launch(cell: Cell, partial: Path, resume: bool, scratch: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fedlora", "run", "--quiet"]
    if resume:
        command += ["--resume", str(partial)]
    else:
        name = "-".join(
            str(part) for part in (cell.task, cell.setting, cell.arm, cell.seed) if part
        )
        config_file = scratch / f"{name}.yaml"
        config_file.write_text(dump_config(cell.config), encoding="utf-8")
        command += [str(config_file), "--out", str(partial)]
    return subprocess.Popen(command, start_new_session=True)


def run_sweep_in_processes(
    cells: list[Cell],
    jobs: int,
    announce: Callable[[Cell, str], None],
    interrupted: Callable[[], bool],
    poll_seconds: float = 0.5,
) -> None:
    """Run the unfinished cells ``jobs`` at a time, in order. After a failure or a stop request
    nothing new starts; raises :class:`CellsFailed` or :class:`CellsInterrupted` once the
    running cells have ended."""
    queue: list[Cell] = []
    for cell in cells:
        if cell.done:
            announce(cell, "done already")
        else:
            queue.append(cell)
    running: list[_Running] = []
    failed: list[str] = []
    stopping = False
    with tempfile.TemporaryDirectory(prefix="fedlora-study-") as scratch:
        try:
            while queue or running:
                if interrupted() and not stopping:
                    stopping = True
                    for job in running:
                        job.process.send_signal(signal.SIGINT)
                while queue and len(running) < jobs and not (stopping or failed):
                    cell = queue.pop(0)
                    try:
                        partial, resume = start_partial(cell)
                    except RunFolderError as error:  # its .partial is another run's
                        failed.append(str(error))
                        break
                    announce(cell, "resuming" if resume else "running")
                    process = _launch(cell, partial, resume, Path(scratch))
                    running.append(_Running(cell, partial, process))
                for job in [job for job in running if job.process.poll() is not None]:
                    running.remove(job)
                    code = job.process.returncode
                    if code == 0:
                        finish_partial(job.cell, job.partial)
                        announce(job.cell, "finished")
                    elif code != INTERRUPTED:
                        failed.append(f"{job.cell.folder} (exit {code})")
                if stopping or failed:
                    queue.clear()
                time.sleep(poll_seconds if running else 0)
        except KeyboardInterrupt:  # a second request: stop every cell at once
            for job in running:
                job.process.send_signal(signal.SIGINT)
                job.process.wait()
            raise
    if failed:
        raise CellsFailed(
            f"{len(failed)} cells failed (their output is above): {'; '.join(failed)}"
        )
    if stopping:
        raise CellsInterrupted(
            "stopped: the running cells checkpointed; run the study again to resume them"
        )
