"""``fedlora partition`` writes each resolved config to its own folder."""

from __future__ import annotations

from pathlib import Path

from fedlora.cli import partition_folder
from fedlora.config import load_config

CONFIG = Path(__file__).parents[1] / "configs/cllora/base.yaml"


def test_different_overrides_get_different_folders_and_equal_ones_the_same() -> None:
    alpha_01 = partition_folder(load_config(CONFIG, ["data.partition.alpha=0.1"]))
    alpha_10 = partition_folder(load_config(CONFIG, ["data.partition.alpha=10"]))
    assert alpha_01 != alpha_10
    assert alpha_01 == partition_folder(load_config(CONFIG, ["data.partition.alpha=0.1"]))
    name = load_config(CONFIG).name
    assert alpha_01.parent == Path("results/partition") and alpha_01.name.startswith(f"{name}-")
