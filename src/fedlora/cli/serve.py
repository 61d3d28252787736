"""``fedlora serve-node``: the resident trainer beside a Flower SuperNode
(:mod:`fedlora.flower.resident`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.shared import app, fail


@app.command(name="serve-node")
def serve_node(
    socket: Annotated[
        Path,
        typer.Option(
            help="Unix socket to listen on; start the SuperNode with --node-config"
            " 'partition-id=K resident-socket=\"PATH\"'."
        ),
    ],
) -> None:
    """Train a SuperNode's jobs in one process that keeps the model loaded, on a Unix socket."""
    import functools
    import importlib
    import signal
    import threading

    from fedlora.flower.client_app import train_content
    from fedlora.flower.resident import serve

    def listening() -> None:
        typer.echo(f"resident trainer listening on {socket} (pid {os.getpid()})")
        importlib.import_module("fedlora.experiment")  # so that the first job pays the model only

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    handle = functools.partial(train_content, served="resident")
    try:
        serve(socket, handle, threading.Event(), listening=listening)
    except OSError as error:  # the socket cannot be made: a folder missing, a live trainer there
        raise fail(error) from None
    except KeyboardInterrupt:
        typer.echo("resident trainer stopped")
