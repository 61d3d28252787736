"""``fedlora study``: a study's sweep of cells (in this process or several), then its table."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedlora.cli.shared import USER_ERRORS, app, check_writable, console, fail
from fedlora.config import ConfigError, ExperimentConfig

# Types only: this module pulls in torch, which only the running of cells needs.
if TYPE_CHECKING:
    from fedlora.studies.sweep import Cell


@app.command()
def study(
    study_file: Annotated[
        str, typer.Argument(help="A study YAML file, or a name: configs/<name>/study.yaml.")
    ],
    out: Annotated[Path | None, typer.Option(help="Run folders (results/studies/<name>).")] = None,
    docs: Annotated[
        Path | None, typer.Option(help="Where to write table.md, its plots and cells/.")
    ] = None,
    arms: Annotated[str | None, typer.Option(help="Run only these arms, comma-separated.")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Run only these seeds, comma-separated.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Run only these tasks, comma-separated.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key in every cell.")
    ] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="List the cells, run nothing.")] = False,
    table_only: Annotated[
        bool,
        typer.Option("--table-only", help="Write the table and plot of the finished cells only."),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="Cells to run at once, each in its own process (cores, or one GPU)."
        ),
    ] = 1,
) -> None:
    """Run a study's sweep (finished and kept cells are skipped), then write its table and plot.

    --arms, --seeds and --tasks narrow what runs; the table and plot cover every finished cell.

    Beside the table, cells/ keeps what it is computed from (no weights).

    A fresh clone's --table-only rewrites the same table from those files.

    The table's first line says how many of the study's cells it covers.

    Only the study as committed writes docs/results/<name>; a narrowed run writes beside its runs.

    Runs under --set overrides go to a folder of their own, never replacing the study's cells.

    A runtime.* override (threads, device) changes no experiment: it keeps the study's folder.

    --jobs N runs N cells at once, each in its own process (N cores, or sharing one GPU).
    """
    from fedlora.studies.kept import table_cells
    from fedlora.studies.publish import narrowed, publish
    from fedlora.studies.sweep import load_study, plan

    path = Path(study_file)
    if not path.suffix:
        path = Path("configs") / study_file / "study.yaml"
    try:
        spec = load_study(path)
        changes = _experiment_overrides(set_ or [])
        root = out or Path("results/studies") / (spec.name + _overrides_suffix(changes))
        check_writable(root, "--out")
        planned = plan(spec, root, set_ or [])
    except USER_ERRORS as error:
        raise fail(error) from None
    # the committed study's kept cells count as finished: a study runs on over sittings (and
    # machines) by committing its kept cells, and a clone never runs them again
    committed = docs or Path("docs/results") / spec.name
    cells = table_cells(narrowed(planned, arms, seeds, tasks), root, committed)
    if plan_only:
        for cell in cells:
            typer.echo(f"{'kept' if cell.kept else 'done' if cell.done else 'todo'}  {cell.folder}")
        return
    if table_only:
        cells = []  # nothing to check or run: straight to the table

    _run_cells(cells, jobs)
    narrowing = [
        f"--{flag} {value}"
        for flag, value in (("arms", arms), ("seeds", seeds), ("tasks", tasks))
        if value is not None
    ] + [f"--set {pair}" for pair in changes]
    docs = docs or (root / "report" if narrowing else committed)
    try:
        table, written = publish(spec, planned, root, docs, narrowing, kept=committed)
    except USER_ERRORS as error:
        raise fail(error) from None
    typer.echo(table)
    typer.echo(f"wrote {', '.join(written)} and the cells they are computed from in {docs}")


def _run_cells(cells: list[Cell], jobs: int) -> None:
    """Check every unfinished cell, then run them (``jobs`` at once, each in a process, or in
    this one); a bad cell is named before any runs, and Ctrl-C stops at a checkpoint."""
    from fedlora.experiment import Interrupted, run_experiment
    from fedlora.interrupt import stop_requests
    from fedlora.preflight import Preflight
    from fedlora.results.store import learning_failure
    from fedlora.studies.processes import CellsFailed, CellsInterrupted, run_sweep_in_processes
    from fedlora.studies.sweep import run_sweep

    def announce(cell: Cell, status: str) -> None:
        console.print(f"{status}: {cell.folder}", highlight=False)

    preflight = Preflight()
    for cell in cells:
        if not cell.done:
            try:
                preflight.check(cell.config)
            except USER_ERRORS as error:
                raise fail(ConfigError(f"cell {cell.folder}: {error}")) from None
    with stop_requests(console.print) as interrupted:

        def run_cell(config: ExperimentConfig, folder: Path, resume: bool) -> object:
            summary = run_experiment(config, folder, resume=resume, interrupted=interrupted)
            if failure := learning_failure(summary):
                console.print(f"warning: {folder} did not learn: {failure}", highlight=False)
            return summary

        try:
            if jobs > 1:
                run_sweep_in_processes(cells, jobs, announce, interrupted)
            else:
                run_sweep(cells, run_cell, announce)
        except (*USER_ERRORS, CellsFailed) as error:
            raise fail(error) from None
        except Interrupted as stop:
            console.print(f"{stop}; or run the study again", highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
        except CellsInterrupted as stop:
            console.print(str(stop), highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None


def _overrides_suffix(overrides: list[str]) -> str:
    """Runs under --set overrides never share folders with the study as committed."""
    if not overrides:
        return ""
    return "-set-" + hashlib.sha256("\n".join(sorted(overrides)).encode()).hexdigest()[:8]


def _experiment_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change a study's experiment: ``runtime`` ones (threads, the device)
    change how its cells run, so they neither move its folder nor make it another study."""
    return [pair for pair in overrides if pair.split("=", 1)[0].split(".")[0] != "runtime"]
