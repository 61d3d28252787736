"""``fedlora run``: one experiment under the runtime chosen, from the simulator to a Flower
deployment, with its progress bar, Ctrl-C and --resume."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedlora.cli.shared import USER_ERRORS, Overrides, app, console, fail, out_folder
from fedlora.config import ConfigError, load_config

if TYPE_CHECKING:
    from fedlora.results.run_summary import RunSummary


class Runtime(str, Enum):
    """Who drives the server core: each is a driver of the one composition root."""

    sim = "sim"
    flower_sim = "flower-sim"
    flower = "flower"


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

    from fedlora.experiment import Interrupted, resume_command, run_experiment
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
            folder = out_folder(out, Path("results") / config.name)
        check(config)  # first: the run claims (with --overwrite: empties) its folder only after
        if runtime is Runtime.flower:
            from fedlora.flower.runtimes import check_wall_clock

            check_wall_clock(config)
    except USER_ERRORS as error:
        raise fail(error) from None
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
        except USER_ERRORS as error:
            raise fail(error) from None
        except Interrupted as stop:
            console.print(str(stop), highlight=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
        except KeyboardInterrupt:
            console.print(
                f"stopped at once; {resume_command(folder, runtime.value)} continues from the"
                " last checkpoint, if the run had made one",
                highlight=False,
            )
            raise typer.Exit(code=130) from None
    final = summary.final.metrics
    metrics = "  ".join(f"{k}={final[k]:.4f}" for k in ("accuracy", "f1", "loss") if k in final)
    virtual = summary.virtual_time_s  # none under a deployment's wall clock
    typer.echo(
        f"{config.name}: final {config.eval.split} {metrics}  after {summary.rounds} rounds,"
        f" {summary.server_steps} server steps,"
        + (f" virtual {virtual:,.0f}s," if virtual is not None else "")
        + f" wall {summary.wall_time_s:.0f}s"
    )
    typer.echo(f"results: {folder}")
    if failure := learning_failure(summary):
        console.print(f"[bold red]the run did not learn:[/] {failure}", highlight=False)
        raise typer.Exit(code=3)


_RAY_LISTENS = (
    "flower-sim: Ray listens on every network interface while the run lasts; where that"
    " matters, run in a loopback-only network namespace (unshare -rn, with lo up)"
)


def _flower_simulation() -> Callable[..., RunSummary]:
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
        raise fail(error) from None
    typer.echo(f"results: {folder} (on the SuperLink's machine)")
