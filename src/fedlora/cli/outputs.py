"""The commands that read finished runs: compare them, export the adapter, ask the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedlora.cli.shared import USER_ERRORS, app, check_writable, fail
from fedlora.config import ConfigError


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    out: Annotated[Path, typer.Option(help="Where to write comparison.png.")] = Path("report"),
) -> None:
    """Print a comparison table of runs and plot their curves together."""
    from fedlora.results.diagnostics_plot import write_diagnostics_plot
    from fedlora.results.report import comparison_table, read_run, write_comparison_plot

    try:
        check_writable(out, "--out")
        loaded = [read_run(folder) for folder in runs]
        table = comparison_table(loaded)
        out.mkdir(parents=True, exist_ok=True)
        diagnostics = write_diagnostics_plot(runs, out / "diagnostics.png")  # reads events first
        write_comparison_plot(loaded, out / "comparison.png")
    except USER_ERRORS as error:
        raise fail(error) from None
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
        check_writable(out, "OUT")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(f"{out} is not empty; pass --overwrite to write over its files")
        (export_merged if merge else export_adapter)(run_folder, out)
    except USER_ERRORS as error:
        raise fail(error) from None
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
    except USER_ERRORS as error:
        raise fail(error) from None
