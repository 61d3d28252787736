"""One run folder, one writer: a second run or a ``--resume`` of a live run is refused (the lock
is an ``flock`` the OS drops when its process dies), the Flower ServerApp keeps the same rule,
and ``--overwrite`` never deletes what a run did not write, nor follows a link."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fakes import run_cli, wall_clock
from local_grid import LocalGrid
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import ConfigError, build_config
from fedlora.flower.client_app import app as client_app
from fedlora.flower.server_app import run_federation
from fedlora.results.errors import RunFolderError
from fedlora.results.folders import LOCK_FILE, hold_run_folder

runner = CliRunner()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside: it holds its last holder's pid)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


@pytest.fixture
def live_run(tmp_path: Path, tiny_config: dict) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A ``fedlora run`` process far from its end, once it is writing its event log; killed
    (SIGKILL, so nothing of it cleans up) when the test ends."""
    tiny_config["server"]["rounds"] = 100_000
    config_file = tmp_path / "long.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    folder = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "fedlora", "run", str(config_file), "--out", str(folder), "--quiet"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        events = folder / "events.jsonl"
        while not (events.is_file() and events.stat().st_size > 0):
            assert process.poll() is None, "the run ended before it wrote an event"
            assert time.monotonic() < deadline, "the run wrote no event within 120 s"
            time.sleep(0.05)
        yield process, config_file
    finally:
        process.kill()
        process.wait(timeout=60)


@pytest.mark.slow
def test_a_live_run_refuses_a_second_run_and_a_resume_and_the_os_frees_it_on_death(
    tmp_path: Path, live_run: tuple[subprocess.Popen[bytes], Path]
) -> None:
    process, config_file = live_run
    folder = tmp_path / "run"
    config_before = (folder / "config.yaml").read_bytes()
    busy = f"{folder} is in use by a running fedlora process (pid {process.pid})"
    for args in (
        ["run", str(config_file), "--out", str(folder), "--quiet"],
        ["run", str(config_file), "--out", str(folder), "--overwrite", "--quiet"],
        ["run", "--resume", str(folder), "--quiet"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert busy in result.output and "Traceback" not in result.output
    assert process.poll() is None, "the refused runs disturbed the live one"
    assert (folder / "config.yaml").read_bytes() == config_before

    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    with hold_run_folder(folder):  # the dead process's lock went with it
        assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_held_folder_is_refused_to_a_new_run(tmp_path: Path, tiny_config: dict) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    with hold_run_folder(folder):
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump(tiny_config))
        result = runner.invoke(app, ["run", str(config_file), "--out", str(folder), "--quiet"])
    assert result.exit_code == 2 and f"{folder} is in use" in result.output
    assert [p.name for p in folder.iterdir()] == [LOCK_FILE]


def _federate(raw: dict, folder: Path) -> dict:
    config = build_config(wall_clock(raw))
    grid = LocalGrid({k: client_app for k in range(config.clients.num)})
    return run_federation(grid, config, folder, wait_s=1.0)


@pytest.mark.slow
def test_the_flower_server_app_refuses_a_folder_that_holds_a_run(
    tmp_path: Path, tiny_config: dict
) -> None:
    folder = tmp_path / "run"
    run_cli(tmp_path, tiny_config, folder)
    before = _files(folder)
    with pytest.raises(ConfigError, match=f"{folder} already holds a run"):
        _federate(tiny_config, folder)
    assert _files(folder) == before

    live = tmp_path / "live"
    live.mkdir()
    with hold_run_folder(live), pytest.raises(RunFolderError, match=f"{live} is in use"):
        _federate(tiny_config, live)
    assert [p.name for p in live.iterdir()] == [LOCK_FILE]


def _adapter_link(folder: Path) -> str:
    """A run folder whose ``adapter`` is a link to the user's own weights."""
    mine = folder.parent / "my-weights"
    mine.mkdir()
    (mine / "adapter_model.safetensors").write_text("the user's")
    (folder / "events.jsonl").write_text("{}\n")
    (folder / "adapter").symlink_to(mine)
    return "adapter (a symbolic link)"


def _own_file_in_adapter(folder: Path) -> str:
    (folder / "adapter").mkdir()
    (folder / "adapter" / "my_own_weights.bin").write_text("the user's")
    return "adapter/my_own_weights.bin"


def _only_a_config(folder: Path) -> str:
    return "holds a config.yaml and nothing a run writes"


def _events_link(folder: Path) -> str:
    (folder.parent / "notes.txt").write_text("the user's")
    (folder / "events.jsonl").symlink_to(folder.parent / "notes.txt")
    return "events.jsonl (a symbolic link)"


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize(
    "make", [_own_file_in_adapter, _only_a_config, _adapter_link, _events_link]
)
def test_overwrite_refuses_what_a_run_did_not_write_and_changes_nothing(
    tmp_path: Path, tiny_config: dict, make: Callable[[Path], str], overwrite: bool
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.yaml").write_text("# my own notes on this experiment\nseed: 7\n")
    message = make(folder)
    before = {p: _files(p) for p in tmp_path.iterdir() if p.is_dir()}
    links = {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    args = ["run", str(config_file), "--out", str(folder), "--quiet"]
    result = runner.invoke(app, args + ["--overwrite"] * overwrite)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert {p: _files(p) for p in tmp_path.iterdir() if p.is_dir()} == before
    assert {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()} == links
    assert not (folder / LOCK_FILE).exists()  # refused before it was made
