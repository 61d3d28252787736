"""The Typer app every command joins, and what the commands share: the console, the errors a
user can fix (exit 2, one line), and the checks of the folders they write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedlora.config import ConfigError
from fedlora.data.partition import PartitionError
from fedlora.data.rows import DataError
from fedlora.results.errors import RunFolderError

app = typer.Typer(
    help="Federated LoRA fine-tuning across heterogeneous clients, simulated or deployed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

USER_ERRORS = (ConfigError, DataError, PartitionError, RunFolderError)

ConfigFile = Annotated[Path, typer.Argument(help="Experiment YAML file.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set server.rounds=3."),
]


def fail(error: Exception) -> typer.Exit:
    """Say an error the user can fix in one line, without a traceback; exit 2."""
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def out_folder(out: Path | None, default: Path) -> Path:
    """``--out`` (else ``default``), refused early when it cannot be written."""
    folder = out or default
    check_writable(folder, "--out")
    return folder


def check_writable(folder: Path, option: str) -> None:
    """Refuse a folder the command could not create or write in, before any work: its nearest
    existing part must be a folder this process may write (``os.access``: root may write
    anything)."""
    nearest = next(part for part in (folder, *folder.parents) if os.path.exists(part))
    if not os.path.isdir(nearest):
        raise ConfigError(f"{option}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: cannot write in {nearest} (permission denied)")
