"""The package's layers, read from the source: which packages may not import which.

Every ``import`` and ``from … import`` counts, including those under ``TYPE_CHECKING`` and
inside functions: an arrow drawn only for the type checker still ties two packages together.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import fedlora

PACKAGE = Path(fedlora.__file__).parent

# (importer, imported): the server core emits events to a sink and knows no result file; the
# results writer knows the run's records, not the server or the client that made them; a learner
# returns its predictions as data; a policy and an aggregator share only ``fedlora.terms``; the
# config is parsed without asking any registry (setup checks run after parsing, in preflight).
FORBIDDEN = [
    ("server", "results"),
    ("results", "server"),
    ("results", "client"),
    ("client", "results"),
    ("policies", "aggregation"),
    ("aggregation", "policies"),
    ("config", "aggregation"),
    ("config", "policies"),
]

# Plain records that sit below the packages above so that those need not import each other:
# none of them may import a package it sits below.
RECORDS = ["outcome", "snapshot", "predictions", "terciles", "readout", "terms", "target"]
ABOVE_RECORDS = ["server", "client", "results", "policies", "sim", "flower", "studies"]


def _part(module: Path) -> str:
    """The top-level part of fedlora a source file belongs to: a subpackage or a module."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_parts(module: Path) -> set[str]:
    """The top-level parts of fedlora that ``module`` imports."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "fedlora":  # from fedlora import server
                names = [f"fedlora.{alias.name}" for alias in node.names]
        parts |= {name.split(".")[1] for name in names if name.startswith("fedlora.")}
    return parts


@cache
def _arrows() -> dict[tuple[str, str], list[str]]:
    """Per (importer part, imported part), the files that draw the arrow."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for module in sorted(PACKAGE.rglob("*.py")):
        importer = _part(module)
        for imported in _imported_parts(module) - {importer}:
            arrows.setdefault((importer, imported), []).append(str(module.relative_to(PACKAGE)))
    return arrows


def test_the_reader_sees_imports_of_every_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import fedlora.server.core\n"
        "from fedlora import client\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from fedlora.results.store import write_run\n"
        "def f():\n"
        "    from fedlora.sim import engine\n"
    )
    assert _imported_parts(module) == {"server", "client", "results", "sim"}


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_no_forbidden_arrow(importer: str, imported: str) -> None:
    files = _arrows().get((importer, imported), [])
    assert not files, f"{importer}/ imports {imported}: {files}"


@pytest.mark.parametrize("record", RECORDS)
def test_records_import_nothing_above_them(record: str) -> None:
    imported = _imported_parts(PACKAGE / f"{record}.py")
    assert imported.isdisjoint(ABOVE_RECORDS), imported & set(ABOVE_RECORDS)
