"""``python -m fedlora``: the same as the ``fedlora`` command."""

from fedlora.cli import app

app(prog_name="fedlora")
