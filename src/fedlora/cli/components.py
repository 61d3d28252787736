"""``fedlora list``: what the registries hold, by name, without importing any of it."""

from __future__ import annotations

import typer

from fedlora import aggregation, policies
from fedlora.cli.shared import app
from fedlora.data.tasks import available_tasks


@app.command(name="list")
def list_components() -> None:
    """Show the registered aggregators, policies and tasks."""
    typer.echo(f"aggregators: {', '.join(aggregation.available())}")
    for name in aggregation.available():
        typer.echo(f"  {name:<9} {aggregation.describe(name)}")
    typer.echo(f"policies:    {', '.join(policies.available())}")
    typer.echo(f"tasks:       {', '.join(available_tasks())}")
