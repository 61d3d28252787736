"""The same apps under Flower's simulation engine (Ray): the in-process simulator's event log,
for a classifier and for an instruction task (a causal LM). Ray listens on every interface, so
the module's tests re-run themselves, together (one pytest process, one Ray instance), inside a
loopback-only network namespace, and are skipped where none can be made; each test is passed,
failed or skipped as its re-run was."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fakes import assert_same_global, run_cli
from instruct_data import instruct_config
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import build_config
from fedlora.results.events import read_events
from fedlora.results.store import CHECKPOINT_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test waits for them all

INSIDE = "FEDLORA_LOOPBACK_ONLY"  # set in the namespace these tests re-run in


@pytest.fixture(scope="module")
def loopback(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str]]:
    """Outside the namespace: this module's tests that this session runs, re-run at once in a
    loopback-only network namespace; each one's outcome ("passed", "failed" or "skipped") and
    its message, by name. Inside: nothing (the tests run themselves)."""
    if os.environ.get(INSIDE) == "1":
        return {}
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip are needed for a loopback-only namespace (Ray must not listen)")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no loopback-only network namespace here (unshare -rn: {probe.stderr!r})")
    here = Path(__file__).resolve()
    names = [item.name for item in request.session.items if item.path == here]
    report = tmp_path_factory.mktemp("loopback") / "report.xml"
    selected = " ".join(shlex.quote(f"{here}::{name}") for name in names)
    command = (
        f"ip link set lo up && exec {shlex.quote(sys.executable)} -m pytest -q"
        f" -p no:cacheprovider --junitxml={shlex.quote(str(report))} {selected}"
    )
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", command],
        env=os.environ | {INSIDE: "1"},
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    log = result.stdout[-6000:] + result.stderr[-3000:]
    outcomes = {name: ("failed", f"no outcome in the namespace's run:\n{log}") for name in names}
    if report.is_file():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            found = [e for e in case if e.tag in ("failure", "error", "skipped")]
            if not found:
                outcomes[case.get("name", "")] = ("passed", "")
            elif found[0].tag == "skipped":
                outcomes[case.get("name", "")] = ("skipped", found[0].get("message", ""))
            else:
                text = f"{found[0].get('message', '')}\n{found[0].text or ''}"
                outcomes[case.get("name", "")] = ("failed", text[-6000:] + "\n" + log)
    return outcomes


def ran_in_loopback_namespace(loopback: dict[str, tuple[str, str]], test: str) -> bool:
    """Inside the namespace: False (the test goes on). Outside: True once the test's re-run
    there passed; it fails or is skipped as its re-run was."""
    if os.environ.get(INSIDE) == "1":
        return False
    outcome, message = loopback[test]
    if outcome == "skipped":
        pytest.skip(message)
    assert outcome == "passed", message
    return True


@pytest.fixture(scope="module", autouse=True)
def one_ray_start() -> Iterator[None]:
    """Inside the namespace: one Ray instance for every engine run of the module, shut down
    at its end. Flower's backend starts Ray unless it runs and shuts it down after each run;
    the actors still end with their run (each one a process of its own), so a run, resumed or
    not, starts with fresh ClientApps as in a process of its own."""
    if os.environ.get(INSIDE) != "1":
        yield
        return
    try:
        import ray
    except ImportError:  # the tests skip themselves
        yield
        return
    shutdown = ray.shutdown
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "shutdown", lambda *args, **kwargs: None)
        try:
            yield
        finally:
            if ray.is_initialized():
                shutdown()


def test_fedfa_under_the_simulation_engine_logs_what_the_simulator_logs(
    tmp_path: Path, tiny_config: dict, loopback: dict[str, tuple[str, str]]
) -> None:
    """``fedlora run --runtime flower-sim`` against ``--runtime sim`` (the default), for
    FedFa: asynchronous, heterogeneous ranks, lost jobs. The engine's nodes finish in whatever
    order, yet the server takes their results in virtual-time order, so the event log (wall
    times aside) and the global adapter are the in-process simulator's."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_fedfa_under_the_simulation_engine_logs_what_the_simulator_logs"
    if ran_in_loopback_namespace(loopback, test):
        return
    tiny_config["clients"] |= {"ranks": [2, 4, 8, 4], "availability": {"failure_prob": 0.2}}
    tiny_config["server"] = {"policy": "fedfa", "aggregator": "hlora", "concurrency": 3,
                             "window": 2, "rounds": 3}  # fmt: skip
    run_cli(tmp_path, tiny_config, tmp_path / "engine", "--runtime", "flower-sim")
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    sim = events_without_wall(tmp_path / "sim")
    assert {e["type"] for e in sim} >= {"dispatch", "arrival", "merge", "lost", "eval"}
    assert_same_events(tmp_path / "engine", tmp_path / "sim")
    assert_same_global(tmp_path / "engine", tmp_path / "sim")


def test_a_flower_sim_run_stopped_and_resumed_ends_as_an_uninterrupted_run(
    tmp_path: Path, tiny_config: dict, loopback: dict[str, tuple[str, str]]
) -> None:
    """FedAvg on the engine, stopped at a safe point after three completions (a checkpoint)
    and continued by ``fedlora run --resume DIR --runtime flower-sim``: the uninterrupted
    simulator's event log and global adapter."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_a_flower_sim_run_stopped_and_resumed_ends_as_an_uninterrupted_run"
    if ran_in_loopback_namespace(loopback, test):
        return
    from fedlora.experiment import Interrupted
    from fedlora.flower.simulation import simulate

    engine = tmp_path / "engine"
    polls = itertools.count()
    with pytest.raises(Interrupted, match=r"interrupted after \d+ server steps"):
        simulate(build_config(tiny_config), engine, interrupted=lambda: next(polls) >= 3)
    assert (engine / CHECKPOINT_FILE).is_file() and not (engine / "summary.json").exists()
    resumed = CliRunner().invoke(
        app, ["run", "--resume", str(engine), "--runtime", "flower-sim", "--quiet"]
    )
    assert resumed.exit_code == 0, resumed.output
    run_cli(tmp_path, tiny_config, tmp_path / "sim")
    assert_same_events(engine, tmp_path / "sim")
    assert_same_global(engine, tmp_path / "sim")


def test_an_instruction_task_under_the_simulation_engine_logs_what_the_simulator_logs(
    tmp_path: Path, loopback: dict[str, tuple[str, str]]
) -> None:
    """A causal LM on the engine's nodes (FedAvg, 3 rounds of 3 of 4 clients): the response
    loss metrics, per-evaluation predictions and event log of the in-process simulator."""
    pytest.importorskip("ray", reason="Ray is the simulation extra: pip install -e '.[simulation]'")
    test = "test_an_instruction_task_under_the_simulation_engine_logs_what_the_simulator_logs"
    if ran_in_loopback_namespace(loopback, test):
        return
    from fedlora.flower.simulation import simulate

    raw = instruct_config(tmp_path)
    raw["data"] |= {"max_length": 32, "max_eval_examples": 12}
    simulate(build_config(raw), tmp_path / "engine", cpus_per_client=1.0)
    run_cli(tmp_path, raw, tmp_path / "sim")
    assert_same_events(tmp_path / "engine", tmp_path / "sim")
    assert_same_global(tmp_path / "engine", tmp_path / "sim")
    summary = json.loads((tmp_path / "engine" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["jobs_lost"] == 0
    assert {"loss", "perplexity", "category.open_qa.loss", "length.short.loss"} <= set(
        summary["final"]
    )
    assert sorted(p.name for p in (tmp_path / "engine" / "predictions").iterdir()) == sorted(
        p.name for p in (tmp_path / "sim" / "predictions").iterdir()
    )


def assert_same_events(run: Path, other: Path) -> None:
    """The same events in the same order: floats within rounding, everything else equal."""
    ours, theirs = events_without_wall(run), events_without_wall(other)
    assert [e["type"] for e in ours] == [e["type"] for e in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        floats = [k for k, v in reference.items() if isinstance(v, float)]
        assert [mine[k] for k in floats] == pytest.approx(
            [reference[k] for k in floats], rel=1e-4, abs=1e-5
        )
        assert {k: v for k, v in mine.items() if k not in floats} == {
            k: v for k, v in reference.items() if k not in floats
        }


def events_without_wall(run: Path) -> list[dict]:
    """A run's events, wall times left out and nested fields flattened ("metrics.loss"), so
    that floats compare approximately: one process's training may differ from another's in
    the last bits; everything else must be equal."""

    def flat(fields: dict, prefix: str = "") -> dict:
        out: dict = {}
        for key, value in fields.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            elif key != "wall":
                out[prefix + key] = value
        return out

    return [flat(e) for e in read_events(run / "events.jsonl")]
