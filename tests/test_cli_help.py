"""Command help reads as plain text: typer keeps a docstring's line breaks and backticks."""

from __future__ import annotations

import click
import pytest
import typer

from fedlora.cli import app

GROUP = typer.main.get_command(app)
assert isinstance(GROUP, click.Group)


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_help_paragraphs_are_single_lines_without_markup(name: str) -> None:
    help_text = GROUP.commands[name].help or ""
    for paragraph in help_text.strip().split("\n\n"):
        assert "\n" not in paragraph.strip(), f"fedlora {name}: a line break mid-paragraph"
        assert "``" not in paragraph, f"fedlora {name}: reStructuredText backticks"
