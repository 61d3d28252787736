"""``fedlora partition``: how a config divides the data among clients, without training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedlora.cli.shared import USER_ERRORS, ConfigFile, Overrides, app, fail, out_folder
from fedlora.config import ConfigError, ExperimentConfig, dump_config, load_config
from fedlora.data.tasks import is_causal

# Types only: this module pulls in matplotlib, which only the command itself needs.
if TYPE_CHECKING:
    from fedlora.data.describe import PartitionDescription


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
        folder = out_folder(out, partition_folder(config))
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
    except USER_ERRORS as error:
        raise fail(error) from None
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
