"""The ``fedlora`` command: run an experiment, compare runs, export the adapter.

Only what every command needs is imported here: torch, transformers, peft and matplotlib are
imported inside the commands that use them, so ``fedlora --help`` and ``fedlora list`` start
at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default run never needs a hub

import typer
from rich.console import Console
from rich.table import Table

from fedlora import aggregation, policies
from fedlora.config import ConfigError, ExperimentConfig, dump_config, load_config
from fedlora.data.partition import PartitionError
from fedlora.data.sources import DataError
from fedlora.data.tasks import available_tasks, is_causal
from fedlora.results.errors import RunFolderError

# Types only: these modules pull in torch or matplotlib, which only some commands need.
if TYPE_CHECKING:
    from fedlora.data.describe import PartitionDescription
    from fedlora.studies.sweep import Cell

app = typer.Typer(
    help="Federated LoRA fine-tuning across heterogeneous clients, simulated or deployed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

_USER_ERRORS = (ConfigError, DataError, PartitionError, RunFolderError)


class Runtime(str, Enum):
    """Who drives the server core: each is a driver of the one composition root."""

    sim = "sim"
    flower_sim = "flower-sim"
    flower = "flower"


ConfigFile = Annotated[Path, typer.Argument(help="Experiment YAML file.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set server.rounds=3."),
]


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def run(
    config_file: Annotated[
        Path | None, typer.Argument(help="Experiment YAML file (not with --resume).")
    ] = None,
    set_: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default results/<name>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the killed or interrupted run in this folder."),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    federation: Annotated[
        str | None,
        typer.Option(
            help="With --runtime flower: the SuperLink connection (in $FLWR_HOME/config.toml) to"
            " submit the run to; without it the flwr run command is printed."
        ),
    ] = None,
    runtime: Annotated[
        Runtime,
        typer.Option(
            help="sim: the in-process simulator; flower-sim: the same virtual clock on Flower's"
            " simulation engine (Ray), jobs trained in parallel; flower: a Flower deployment's"
            " SuperNodes in wall-clock time (see --federation)."
        ),
    ] = Runtime.sim,
) -> None:
    """Run a federated LoRA fine-tuning experiment and write its results folder.

    It checkpoints as it goes: Ctrl-C stops at a safe point, --resume DIR continues it exactly.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from fedlora.experiment import Interrupted, run_experiment
    from fedlora.interrupt import stop_requests
    from fedlora.outcome import Outcome
    from fedlora.preflight import check
    from fedlora.results.store import learning_failure, read_config

    try:
        if resume is not None:
            if config_file is not None or set_ or out is not None:
                raise ConfigError(
                    "--resume takes the run folder's own config: no file, --set or --out"
                )
            config, folder = read_config(resume), resume
        elif config_file is None:
            raise ConfigError("give an experiment YAML file, or --resume with a run folder")
        else:
            config = load_config(config_file, set_ or [])
            folder = _out_folder(out, Path("results") / config.name)
        check(config)  # first: the run claims (with --overwrite: empties) its folder only after
        if runtime is Runtime.flower:
            _refuse_virtual_keys(config)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    if runtime is Runtime.flower:
        _deploy(config_file, folder, resume is not None, bool(set_ or overwrite), federation)
        return

    with (
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        ) as bar,
        stop_requests(console.print) as interrupted,
    ):
        task = bar.add_task("round", total=config.server.rounds, status="preparing")

        def show(outcome: Outcome) -> None:
            last = outcome.evaluations[-1]
            status = f"t={last.time:,.0f}s " + " ".join(
                f"{k}={v:.3f}" for k, v in last.metrics.items()
            )
            bar.update(task, completed=outcome.rounds, status=status)

        try:
            if runtime is Runtime.flower_sim:
                simulate = _flower_simulation()
                console.print(_RAY_LISTENS, highlight=False, soft_wrap=True)
                summary = simulate(
                    config,
                    folder,
                    resume=resume is not None,
                    overwrite=overwrite,
                    progress=show,
                    interrupted=interrupted,
                )
            else:
                summary = run_experiment(
                    config, folder, show, resume is not None, interrupted, overwrite
                )
        except _USER_ERRORS as error:
            raise _fail(error) from None
        except Interrupted as stop:
            console.print(str(stop), highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
        except KeyboardInterrupt:
            on = "" if runtime is Runtime.sim else f" --runtime {runtime.value}"
            console.print(
                f"stopped at once; fedlora run --resume {folder}{on} continues from the last"
                " checkpoint, if the run had made one",
                highlight=False,
            )
            raise typer.Exit(code=130) from None
    final = summary["final"]
    metrics = "  ".join(
        f"{k}={final[k]:.4f}" for k in ("accuracy", "f1", "loss") if final.get(k) is not None
    )
    typer.echo(
        f"{config.name}: final {config.eval.split} {metrics}  after {summary['rounds']} rounds,"
        f" {summary['server_steps']} server steps, virtual {summary['virtual_time_s']:,.0f}s,"
        f" wall {summary['wall_time_s']:.0f}s"
    )
    typer.echo(f"results: {folder}")
    if failure := learning_failure(summary):
        console.print(f"[bold red]the run did not learn:[/] {failure}", highlight=False)
        raise typer.Exit(code=3)


_RAY_LISTENS = (
    "flower-sim: Ray listens on every network interface while the run lasts; where that"
    " matters, run in a loopback-only network namespace (unshare -rn, with lo up)"
)


def _flower_simulation() -> Callable[..., dict[str, Any]]:
    """``fedlora.flower.simulation.simulate``, or the extra to install when Ray is missing."""
    try:
        import ray  # noqa: F401  (Flower imports it only once the engine starts)

        from fedlora.flower.simulation import simulate
    except ImportError as missing:
        raise ConfigError(
            f"--runtime flower-sim needs Flower's simulation engine ({missing}):"
            " pip install -e '.[simulation]'"
        ) from None
    return simulate


def _refuse_virtual_keys(config: ExperimentConfig) -> None:
    """What ``--runtime flower`` can say before a deployment runs: the keys it refuses."""
    from fedlora.flower.runtimes import VIRTUAL_ONLY
    from fedlora.runtimes import refuse

    refuse(config, Runtime.flower.value, VIRTUAL_ONLY)


def _deploy(
    config_file: Path | None, folder: Path, resume: bool, local_only: bool, federation: str | None
) -> None:
    """Submit the run (or its resumption) to the SuperLink of ``federation``, or name the
    ``flwr run`` command that does. The ServerApp reads the file and writes the folder on the
    SuperLink's machine: --set and --overwrite would not reach it."""
    from fedlora.flower.submit import SubmitError, run_config, submit

    settings = run_config(config_file, folder, resume)
    if federation is None:
        if local_only:
            console.print("--set and --overwrite do not reach a deployment: edit the file")
        console.print(
            "--runtime flower: the config suits a deployment. With the SuperLink and one"
            " SuperNode per client running (README, 'Flower'), add --federation NAME (its"
            " connection in $FLWR_HOME/config.toml) to submit it, or run:\n  flwr run"
            f" deploy/flower NAME --stream --run-config '{settings}'",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=2)
    try:
        if local_only:
            raise ConfigError("--runtime flower: --set and --overwrite do not reach a deployment")
        submit(federation, settings)
    except (ConfigError, SubmitError) as error:
        raise _fail(error) from None
    typer.echo(f"results: {folder} (on the SuperLink's machine)")


def _overrides_suffix(overrides: list[str]) -> str:
    """Runs under --set overrides never share folders with the study as committed."""
    if not overrides:
        return ""
    return "-set-" + hashlib.sha256("\n".join(sorted(overrides)).encode()).hexdigest()[:8]


def _experiment_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change a study's experiment: ``runtime`` ones (threads, the device)
    change how its cells run, so they neither move its folder nor make it another study."""
    return [pair for pair in overrides if pair.split("=", 1)[0].split(".")[0] != "runtime"]


def _out_folder(out: Path | None, default: Path) -> Path:
    """``--out`` (else ``default``), refused early when it cannot be written."""
    folder = out or default
    _check_writable(folder, "--out")
    return folder


def _check_writable(folder: Path, option: str) -> None:
    """Refuse a folder the command could not create or write in, before any work: its nearest
    existing part must be a folder this process may write (``os.access``: root may write
    anything)."""
    nearest = next(part for part in (folder, *folder.parents) if os.path.exists(part))
    if not os.path.isdir(nearest):
        raise ConfigError(f"{option}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: cannot write in {nearest} (permission denied)")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    out: Annotated[Path, typer.Option(help="Where to write comparison.png.")] = Path("report"),
) -> None:
    """Print a comparison table of runs and plot their curves together."""
    from fedlora.results.diagnostics_plot import write_diagnostics_plot
    from fedlora.results.report import comparison_table, read_run, write_comparison_plot

    try:
        _check_writable(out, "--out")
        loaded = [read_run(folder) for folder in runs]
        table = comparison_table(loaded)
        out.mkdir(parents=True, exist_ok=True)
        diagnostics = write_diagnostics_plot(runs, out / "diagnostics.png")  # reads events first
        write_comparison_plot(loaded, out / "comparison.png")
    except _USER_ERRORS as error:
        raise _fail(error) from None
    out_console = Console()
    if not out_console.is_terminal:  # a pipe or file: keep every column instead of wrapping
        out_console = Console(width=200)
    out_console.print(table)
    typer.echo(f"plot: {out / 'comparison.png'}")
    if diagnostics:
        typer.echo(f"merge diagnostics: {out / 'diagnostics.png'}")


@app.command()
def export(
    run_folder: Annotated[Path, typer.Argument(help="A finished run folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the PEFT adapter into.")],
    merge: Annotated[
        bool, typer.Option(help="Write a full model with the adapter merged in instead.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Write over the files of an existing export in OUT.")
    ] = False,
) -> None:
    """Write the run's final global adapter as a PEFT folder (or a merged model)."""
    from fedlora.export import export_adapter, export_merged

    try:
        _check_writable(out, "OUT")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(f"{out} is not empty; pass --overwrite to write over its files")
        (export_merged if merge else export_adapter)(run_folder, out)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(f"wrote {out}")


@app.command()
def generate(
    source: Annotated[
        Path, typer.Argument(help="An instruction run's folder, or an exported adapter or model.")
    ],
    instruction: Annotated[str, typer.Argument(help="What to ask the model.")],
    context: Annotated[str, typer.Option(help="A passage the instruction is about.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 128,
) -> None:
    """Print the model's answer (greedy: the same model always answers the same)."""
    from fedlora.generate import answer

    try:
        typer.echo(answer(source, instruction, context, max_new_tokens))
    except _USER_ERRORS as error:
        raise _fail(error) from None


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
    """Run a study's sweep (finished cells are skipped), then write its table and plot.

    --arms, --seeds and --tasks narrow what runs; the table and plot cover every finished cell.

    Beside the table, cells/ keeps what it is computed from (no weights).

    A fresh clone's --table-only rewrites the same table from those files.

    The table's first line says how many of the study's cells it covers.

    Only the study as committed writes docs/results/<name>; a narrowed run writes beside its runs.

    Runs under --set overrides go to a folder of their own, never replacing the study's cells.

    A runtime.* override (threads, device) changes no experiment: it keeps the study's folder.

    --jobs N runs N cells at once, each in its own process (N cores, or sharing one GPU).
    """
    from fedlora.studies.publish import narrowed, publish
    from fedlora.studies.sweep import load_study, plan

    path = Path(study_file)
    if not path.suffix:
        path = Path("configs") / study_file / "study.yaml"
    try:
        spec = load_study(path)
        changes = _experiment_overrides(set_ or [])
        root = out or Path("results/studies") / (spec.name + _overrides_suffix(changes))
        _check_writable(root, "--out")
        planned = plan(spec, root, set_ or [])
    except _USER_ERRORS as error:
        raise _fail(error) from None
    cells = narrowed(planned, arms, seeds, tasks)
    if plan_only:
        for cell in cells:
            typer.echo(f"{'done' if cell.done else 'todo'}  {cell.folder}")
        return
    if table_only:
        cells = []  # nothing to check or run: straight to the table

    _run_cells(cells, jobs)
    narrowing = [
        f"--{flag} {value}"
        for flag, value in (("arms", arms), ("seeds", seeds), ("tasks", tasks))
        if value is not None
    ] + [f"--set {pair}" for pair in changes]
    docs = docs or (root / "report" if narrowing else Path("docs/results") / spec.name)
    try:
        table, written = publish(spec, planned, root, docs, narrowing)
    except _USER_ERRORS as error:
        raise _fail(error) from None
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
            except _USER_ERRORS as error:
                raise _fail(ConfigError(f"cell {cell.folder}: {error}")) from None
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
        except (*_USER_ERRORS, CellsFailed) as error:
            raise _fail(error) from None
        except Interrupted as stop:
            console.print(f"{stop}; or run the study again", highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
        except CellsInterrupted as stop:
            console.print(str(stop), highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None


@app.command()
def partition(
    config_file: ConfigFile,
    set_: Overrides = None,
    score: Annotated[
        str | None,
        typer.Option(help="Context score to describe (default: the partition's, else length)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the PNG and JSON (results/partition/<name>-<config hash>)."),
    ] = None,
) -> None:
    """Show how a config divides the data among clients, without training anything."""
    from fedlora.client.model import load_tokenizer
    from fedlora.client.quality import PERPLEXITY, perplexity_scorer
    from fedlora.data.context import SCORES
    from fedlora.data.describe import describe_partition, plot_partition
    from fedlora.data.federated import prepare_data
    from fedlora.preflight import check

    try:
        config = load_config(config_file, set_ or [])
        folder = _out_folder(out, partition_folder(config))
        check(config)
        by = config.data.partition.by
        chosen = score or (by if by != "label" else "length")
        if chosen not in SCORES:
            raise ConfigError(f"--score: unknown score {chosen!r}; choose one of {SCORES}")
        if chosen == PERPLEXITY and not is_causal(config.data.task):
            raise ConfigError(f"--score: {PERPLEXITY} is a score of instruction rows")
        tokenizer = load_tokenizer(config.model)
        # the base model loads only when its scores are not cached yet
        scorer = perplexity_scorer(config, tokenizer) if PERPLEXITY in (by, chosen) else None
        data = prepare_data(config, tokenizer, scorer)
        if chosen not in data.train.scores:
            raise ConfigError(
                f"--score: no {chosen!r} score for task {config.data.task!r}"
                + (" (set data.score_column)" if chosen == "column" else "")
            )
    except _USER_ERRORS as error:
        raise _fail(error) from None
    description = describe_partition(data, chosen)
    folder.mkdir(parents=True, exist_ok=True)
    plot_partition(data, description, folder / f"{chosen}.png")
    (folder / f"{chosen}.json").write_text(json.dumps(description.to_json(), indent=2) + "\n")
    _print_partition(description)
    typer.echo(f"plot: {folder / f'{chosen}.png'}")


def partition_folder(config: ExperimentConfig) -> Path:
    """results/partition/<name>-<hash of the resolved config>: other overrides, other folder."""
    digest = hashlib.sha256(dump_config(config).encode()).hexdigest()[:8]
    return Path("results") / "partition" / f"{config.name}-{digest}"


def _print_partition(description: PartitionDescription) -> None:
    table = Table(title=f"{description.score} by client", title_justify="left")
    for column in ("client", "examples", "labels " + "/".join(description.label_names)):
        table.add_column(column, justify="right")
    for column in ("mean", "q1", "median", "q3", "JS div"):
        table.add_column(column, justify="right")
    for row in [*description.clients, description.overall]:
        name = "all" if row.client < 0 else str(row.client) + ("*" if row.degraded else "")
        table.add_row(
            name,
            str(row.examples),
            "/".join(map(str, row.labels)),
            *(f"{value:.2f}" for value in (row.mean, row.q1, row.median, row.q3)),
            f"{row.divergence:.3f}",
        )
    out_console = Console() if Console().is_terminal else Console(width=200)
    out_console.print(table)
    note = " (* degraded)" if any(c.degraded for c in description.clients) else ""
    typer.echo(
        f"score divergence: mean JS from all {description.mean_divergence:.3f} bits{note};"
        f" label divergence: {description.label_divergence:.3f} bits;"
        f" size divergence: coefficient of variation {description.size_variation:.3f},"
        f" largest/smallest {description.size_ratio:.2f}"
    )


@app.command(name="list")
def list_components() -> None:
    """Show the registered aggregators, policies and tasks."""
    typer.echo(f"aggregators: {', '.join(aggregation.available())}")
    for name in aggregation.available():
        typer.echo(f"  {name:<9} {aggregation.describe(name)}")
    typer.echo(f"policies:    {', '.join(policies.available())}")
    typer.echo(f"tasks:       {', '.join(available_tasks())}")
