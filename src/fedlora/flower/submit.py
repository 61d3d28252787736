"""``fedlora run --runtime flower --federation NAME``: a run submitted to a running SuperLink.

The Flower app is ``deploy/flower`` (it holds no code, only the ServerApp's and ClientApp's
import paths); its ``run.sh`` runs ``flwr run`` and then asks the SuperLink how the run ended,
since Flower 1.42's ``flwr run`` exits 0 whatever the ServerApp did. The run folder and the
experiment's file are on the SuperLink's machine, as the ServerApp reads and writes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).parents[3] / "deploy" / "flower"  # the Flower app, in a source checkout


class SubmitError(RuntimeError):
    """The deployed run could not be submitted, or it did not finish."""


def run_config(config: Path | None, out: Path, resume: bool) -> str:
    """The ServerApp's run config for a new run of ``config`` or the resumption of ``out``."""
    folder = f'out="{out.resolve()}"'
    return f"{folder} resume=true" if resume else f'config="{Path(str(config)).resolve()}" {folder}'


def submit(federation: str, config: str) -> None:
    """Run the fedlora app on ``federation`` (a SuperLink connection in ``$FLWR_HOME``'s
    ``config.toml``) with run config ``config``, streaming its log, until it ends;
    :class:`SubmitError` unless it finished completed."""
    script = APP / "run.sh"
    if not script.is_file():
        raise SubmitError(
            f"the Flower app {APP} is not here (a source checkout has it): run"
            f" flwr run APP {federation} --stream --run-config '{config}' where it is"
        )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    command = ["bash", str(script), federation, "--run-config", config]
    if subprocess.run(command, env=os.environ | {"PATH": path}, check=False).returncode != 0:
        raise SubmitError(f"the deployed run on {federation} did not finish (its log is above)")
