"""Shared fixtures. Tests never reach the network: a hub lookup would hang before failing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def glue_dir() -> Path:
    """The real GLUE folder (../shared/data/glue from the repository, or $FEDLORA_DATA)."""
    path = Path(
        os.environ.get("FEDLORA_DATA") or Path(__file__).parents[1].parent / "shared/data/glue"
    )
    if not path.is_dir():
        pytest.skip(f"real GLUE data not found at {path}: set FEDLORA_DATA")
    return path


def write_pair_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A small sentence-pair CSV whose label (same first word?) a model can learn."""
    import random

    rng = random.Random(seed)
    words = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps", "eats", "fast"]
    lines = ["first,second,label"]
    for _ in range(rows):
        a = [rng.choice(words) for _ in range(rng.randint(2, 9))]
        same = rng.random() < 0.5
        b = [a[0] if same else rng.choice([w for w in words if w != a[0]])]
        b += [rng.choice(words) for _ in range(rng.randint(1, 9))]
        lines.append(f"{' '.join(a)},{' '.join(b)},{'same' if same else 'different'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict:
    """A whole experiment on a tiny random BERT and synthetic data: seconds, not minutes."""
    return make_tiny_config(tmp_path)


def make_tiny_config(tmp_path: Path) -> dict:
    """``tiny_config``'s experiment, its data files and cache written under ``tmp_path``."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {
            "task": "csv",
            "files": {
                "train": str(write_pair_csv(tmp_path / "train.csv", 120, seed=1)),
                "dev": str(write_pair_csv(tmp_path / "dev.csv", 40, seed=2)),
            },
            "text_columns": ["first", "second"],
            "label_column": "label",
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
            "partition": {"method": "dirichlet", "alpha": 1.0, "min_size": 4},
        },
        "model": {"init": "random", "bf16": False},
        "lora": {"r": 4, "alpha": 8},
        "clients": {"num": 4, "speed": {"distribution": "pareto", "alpha": 1.0, "cap": 10}},
        "train": {"local_steps": 2, "batch_size": 8, "lr": 1.0e-2},
        "server": {"per_round": 3, "rounds": 3},
        "eval": {"every": 1, "target": {"metric": "accuracy", "value": 0.0}},
    }


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished ``fedlora run`` of ``tiny_config``, shared by the whole session: read it only
    (use ``tiny_run_copy`` to change it). Its data files equal every test's ``tiny_config``'s."""
    from fakes import run_cli

    folder = tmp_path_factory.mktemp("tiny_run")
    run_cli(folder, make_tiny_config(folder), folder / "run")
    return folder / "run"


@pytest.fixture
def tiny_run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of ``tiny_run`` at ``tmp_path / "run"``, this test's to change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))
