"""The ``fedlora`` command: run an experiment, compare runs, export the adapter.

Only what every command needs is imported here: torch, transformers, peft and matplotlib are
imported inside the commands that use them, so ``fedlora --help`` and ``fedlora list`` start
at once. Each module adds its commands to the one Typer app, in the order ``--help`` lists them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default run never needs a hub

# Imported for what they do: each adds its commands to the app, and ``--help`` lists them in
# this order, not the alphabet's.
# isort: off
from fedlora.cli import run  # noqa: F401
from fedlora.cli import outputs  # noqa: F401
from fedlora.cli import study  # noqa: F401
from fedlora.cli import partition  # noqa: F401
from fedlora.cli import components  # noqa: F401
from fedlora.cli import serve  # noqa: F401

# isort: on
from fedlora.cli.partition import partition_folder
from fedlora.cli.shared import app

__all__ = ["app", "partition_folder"]
