"""The CLI starts without the heavy libraries; registries know their names before importing."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from fedlora import aggregation
from fedlora.aggregation.catalog import registry
from fedlora.config import LoraConfig

HEAVY = ("torch", "transformers", "peft", "matplotlib")

# In a fresh interpreter: import the CLI, list the components, validate a config naming a policy
# and an aggregator; then report which heavy modules got imported along the way.
_PROBE = f"""
import json, sys
from typer.testing import CliRunner
from fedlora.cli import app
from fedlora.config import ExperimentConfig

listed = CliRunner().invoke(app, ["list"])
ExperimentConfig.model_validate({{"server": {{"policy": "fedfa", "aggregator": "hlora"}}}})
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"output": listed.output, "heavy": heavy}}))
"""


@pytest.mark.slow
def test_cli_list_and_config_validation_import_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True
    )
    probe = json.loads(result.stdout.splitlines()[-1])
    assert probe["heavy"] == []
    assert "hlora" in probe["output"] and "fedfa" in probe["output"] and "mrpc" in probe["output"]


def test_every_declared_aggregator_is_registered_by_its_module() -> None:
    declared = aggregation.available()
    for module in set(registry.modules.values()):
        importlib.import_module(module)
    # A module that registered a name the catalog does not declare would show up here.
    assert aggregation.available() == declared
    for name in declared:
        assert type(aggregation.create(name, LoraConfig(), 8)) is registry.get(name)
