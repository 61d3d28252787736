"""The README's shell commands parse against the CLI, and run in the order they are written.

Every ``fedlora`` line of a bash block must name a real subcommand with real options; a run
folder that ``report`` or ``export`` reads must have been written by an earlier command (the
demo script counts as the ``fedlora run`` it executes); and a ``fedlora run`` that reads data
must come after the line that says where the data is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import cast

import click
import pytest
import typer
import yaml

from fedlora.cli import app

ROOT = Path(__file__).parents[1]
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def shell_lines(text: str) -> list[list[str]]:
    """The words of each command in the text's bash blocks, in order, comments dropped."""
    lines = []
    for block in _BASH_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


def parse(words: list[str]) -> tuple[str, dict[str, object]]:
    """The subcommand and its parameters, as the CLI would parse ``fedlora <words>``."""
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    name, *args = words
    command = group.commands.get(name)
    assert command is not None, f"fedlora {name}: no such subcommand"
    with command.make_context(name, args) as context:
        return name, context.params


def run_folder(params: dict[str, object]) -> Path:
    """Where ``fedlora run`` writes: ``--out``, else results/<the config's name>."""
    if params["out"] is not None:
        return Path(str(params["out"]))
    name = yaml.safe_load((ROOT / str(params["config_file"])).read_text())["name"]
    for override in params["set_"] or []:
        key, _, value = str(override).partition("=")
        name = value if key == "name" else name
    return Path("results") / name


def demo_command() -> list[str]:
    """The ``fedlora`` words that scripts/demo.sh executes (without its pass-through "$@")."""
    (line,) = [x for x in (ROOT / "scripts/demo.sh").read_text().splitlines() if "fedlora run" in x]
    words = shlex.split(line)
    return [w for w in words[words.index("run") :] if w != "$@"]


def test_readme_commands_parse_and_follow_each_other() -> None:
    made: set[Path] = set()
    data_given = activated = False  # what demo.sh sets, it sets for itself only
    for words in shell_lines((ROOT / "README.md").read_text()):
        if words[:2] == ["bash", "scripts/demo.sh"]:
            made.add(run_folder(parse(demo_command())[1]))
        elif words[:2] == ["source", ".venv/bin/activate"]:
            activated = True
        elif words[0] == "export" and any(w.startswith("FEDLORA_DATA=") for w in words):
            data_given = True
        if words[0] != "fedlora":
            continue
        command = shlex.join(words)
        assert activated, f"{command}: fedlora is not on the PATH yet"
        name, params = parse(words[1:])
        if name == "run":
            overrides = [str(o) for o in params["set_"] or []]
            assert data_given or any(o.startswith("data.dir=") for o in overrides), (
                f"{command}: no data folder given yet"
            )
            folder = run_folder(params)
            assert folder not in made or params["overwrite"], f"{command}: {folder} exists"
            made.add(folder)
        elif name in ("report", "export"):
            read = params["runs"] if name == "report" else [params["run_folder"]]
            for folder in cast(list[Path], read):
                assert Path(folder) in made, f"{command}: nothing made {folder}"


def test_parse_rejects_unknown_options() -> None:
    """The check above can fail: an option the CLI lacks is refused."""
    with pytest.raises(click.UsageError, match="--rounds"):
        parse(["run", "configs/mrpc_fedavg.yaml", "--rounds", "3"])
