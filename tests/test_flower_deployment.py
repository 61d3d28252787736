"""A real Flower deployment on 127.0.0.1: a SuperLink and two SuperNodes as separate processes,
with TLS and SuperNode authentication, started with the commands the README gives; a short
FedFa run with heterogeneous ranks, submitted by ``fedlora run --runtime flower --federation``,
finishes and its ``adapter/`` loads with stock PEFT, one FedAvg config makes the same merges
under all three runtimes (sim, flower-sim, this deployment), a
SuperNode whose key was never registered is refused, a restarted SuperLink still knows the
registered ones, and a run whose ServerApp fails fails ``deploy/flower/run.sh``.

The tests share one deployment (starting one costs more than most of them): each submits its
runs into its own folder, reads only what its own runs or its own processes wrote, and leaves
the deployment as it found it (a SuperNode it stops is started again, a SuperLink it restarts
has its SuperNodes back before it ends); the module's fixture stops every process."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fakes import assert_same_global, merged_jobs, stock_peft_accuracy, wall_clock

from fedlora.flower.localhost import APP, BIN, CONNECTION, LocalDeployment, stop
from fedlora.results.events import read_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CERTS_SCRIPT = Path(__file__).parents[1] / "scripts" / "flower_certs.sh"
RUN_SCRIPT = APP / "run.sh"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """One deployment for the module's tests, every process of it stopped at the end (the
    context manager's exit runs when a test failed too)."""
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: scripts/flower_certs.sh needs them")
    folder = tmp_path_factory.mktemp("deployment")
    certs = folder / "certs"
    command = ["bash", str(CERTS_SCRIPT), "--out", str(certs), "--nodes", "3"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    with LocalDeployment(certs, folder, nodes=2) as deployment:  # node-2 stays unregistered
        yield deployment


def test_a_fedfa_run_over_a_tls_authenticated_deployment(
    tmp_path: Path, tiny_config: dict, deployment: LocalDeployment
) -> None:
    wall_clock(tiny_config)["clients"] |= {"num": 2, "ranks": [2, 4]}
    tiny_config["server"] |= {
        "policy": "fedfa", "aggregator": "hlora", "concurrency": 2, "window": 2, "per_round": 2,
        "rounds": 1, "job_timeout": 600,
    }  # fmt: skip
    config, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(tiny_config))
    command = [str(BIN / "fedlora"), "run", str(config), "--out", str(run)]
    submitted = subprocess.run(
        [*command, "--runtime", "flower", "--federation", CONNECTION],
        env=deployment.env, capture_output=True, text=True, timeout=720, check=False,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output + deployment.log_tails()
    assert f"results: {run} (on the SuperLink's machine)" in submitted.stdout
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml", "events.jsonl", "metrics.csv", "summary.json", "global.safetensors",
        "adapter", "predictions.csv",
    }  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["policy"] == "fedfa" and summary["stop_reason"] == "1 rounds reached"
    assert summary["jobs_lost"] == 0 and summary["updates_rejected"] == 0
    events = read_events(run / "events.jsonl")
    dispatched = {(e["client"], e["rank"]) for e in events if e["type"] == "dispatch"}
    assert dispatched == {(0, 2), (1, 4)}
    assert len({e["node"] for e in events if e["type"] == "dispatch"}) == 2
    accuracy = stock_peft_accuracy(run / "adapter", tiny_config)
    assert accuracy == pytest.approx(summary["final"]["accuracy"])


def test_one_config_under_all_three_runtimes_makes_the_same_merges(
    tmp_path: Path, tiny_config: dict, deployment: LocalDeployment
) -> None:
    """FedAvg, 2 clients, 2 rounds: under ``flower-sim`` (Flower's simulation engine, in a
    loopback-only namespace since Ray listens on every interface) the simulator's very events;
    under ``flower`` (this deployment) the same client results in each merge, and the same
    global model up to float rounding across processes."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip are needed for a loopback-only namespace (Ray must not listen)")
    wall_clock(tiny_config)["clients"] |= {"num": 2, "ranks": [4, 4]}
    tiny_config["server"] |= {"per_round": 2, "rounds": 2, "job_timeout": 600}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    fedlora = [str(BIN / "fedlora"), "run", str(config), "--quiet", "--out"]
    runs = {name: tmp_path / name for name in ("sim", "flower-sim", "flower")}
    commands = {
        "sim": [*fedlora, str(runs["sim"])],
        "flower-sim": ["unshare", "-rn", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh",
                       *fedlora, str(runs["flower-sim"]), "--runtime", "flower-sim"],
        "flower": [*fedlora, str(runs["flower"]), "--runtime", "flower",
                   "--federation", CONNECTION],
    }  # fmt: skip
    for name, command in commands.items():
        done = subprocess.run(
            command, env=deployment.env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, name + done.stdout + done.stderr + deployment.log_tails()
    sim, engine, flower = (read_events(runs[n] / "events.jsonl") for n in runs)
    # the simulator's event order and times (the floats trained in another process differ
    # in their last bits: compared in the adapters below, not here)
    order = [[(e["type"], e.get("job"), e.get("client"), e.get("version")) for e in events]
             for events in (engine, sim)]  # fmt: skip
    assert order[0] == order[1]
    assert [e["t"] for e in engine] == [e["t"] for e in sim]
    assert_same_global(runs["flower-sim"], runs["sim"])
    assert merged_jobs(runs["flower"]) == merged_jobs(runs["sim"]) == [[0, 1], [2, 3]]
    clients = [
        {(e["job"], e["client"]) for e in events if e["type"] == "arrival"}
        for events in (sim, flower)
    ]
    assert clients[0] == clients[1]
    assert_same_global(runs["flower"], runs["sim"])


def test_a_supernode_with_an_unregistered_key_is_refused(deployment: LocalDeployment) -> None:
    before = len(deployment.log("superlink"))  # what the SuperLink logged for other tests
    intruder = deployment.supernode(2, "--max-retries", "1")
    assert intruder.wait(timeout=120) != 0
    assert "No SuperNode found with the given public key" in deployment.log("superlink")[before:]


def test_a_restarted_superlink_keeps_its_registered_supernodes(
    deployment: LocalDeployment,
) -> None:
    assert len(_registered(deployment)) == 2
    deployment.restart_superlink()  # --database: the state is a file, not the process's memory
    assert len(_registered(deployment)) == 2
    # the SuperNodes reconnect by themselves: the next test finds them as this one did
    deadline = time.monotonic() + 120
    while _registered(deployment) != ["online", "online"]:
        assert time.monotonic() < deadline, deployment.log_tails()
        time.sleep(1)


def test_a_failing_server_app_fails_the_run_script(
    tmp_path: Path, deployment: LocalDeployment
) -> None:
    run_config = f'config="{tmp_path / "missing.yaml"}" out="{tmp_path / "run"}"'
    plain = deployment.flwr(
        "run", str(APP), CONNECTION, "--stream", "--run-config", run_config, timeout=300
    )
    assert plain.returncode == 0  # Flower 1.42's flwr run, whatever the ServerApp did
    assert "ServerApp raised an exception" in plain.stdout
    script = subprocess.run(
        ["bash", str(RUN_SCRIPT), CONNECTION, "--run-config", run_config],
        env=deployment.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert script.returncode == 1, script.stdout + script.stderr
    assert "finished:failed: ServerApp failed with exception: config file" in script.stderr
    assert not (tmp_path / "run").exists()


def test_a_supernode_killed_mid_run_and_restarted_rejoins(
    tmp_path: Path, tiny_config: dict, deployment: LocalDeployment
) -> None:
    """FedAvg, 6 rounds of both clients: SuperNode 1 (and its ClientApp) is killed once the
    first result arrived, its jobs are lost meanwhile, and started again with its key it trains
    again: the run finishes every round. (With 3 rounds a run whose jobs go to resident
    trainers could end before the node was back.)"""
    wall_clock(tiny_config)["clients"] |= {"num": 2, "ranks": [4, 4]}
    tiny_config["server"] |= {"per_round": 2, "rounds": 6, "job_timeout": 600}
    tiny_config["eval"]["every"] = 6
    config, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(tiny_config))
    command = [str(BIN / "fedlora"), "run", str(config), "--out", str(run), "--quiet"]
    federation = subprocess.Popen(
        [*command, "--runtime", "flower", "--federation", CONNECTION],
        env=deployment.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not any(e["type"] == "arrival" for e in _events(run)):
            assert time.monotonic() < deadline and federation.poll() is None
            time.sleep(1)
        node = _supernode_process(deployment, 1)
        stop(node)
        deployment.processes.remove(node)
        killed = len(_events(run))
        # started again once the SuperLink found it gone (a job of client 1 lost), not before:
        # a SuperNode back under its key before that would leave its job in flight unanswered
        while not any(e["type"] == "lost" and e["client"] == 1 for e in _events(run)[killed:]):
            assert time.monotonic() < deadline and federation.poll() is None
            time.sleep(0.2)
        deployment.supernode(1)
        output, _ = federation.communicate(timeout=600)
    finally:
        if federation.poll() is None:
            federation.kill()
    assert federation.returncode == 0, output + deployment.log_tails()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 6
    after = _events(run)[killed:]
    sent = {e["job"] for e in after if e["type"] == "dispatch" and e["client"] == 1}
    assert any(e["type"] == "arrival" and e["job"] in sent for e in after)  # sent after the kill


def _events(run: Path) -> list[dict]:
    return read_events(run / "events.jsonl") if (run / "events.jsonl").is_file() else []


def _registered(deployment: LocalDeployment) -> list[str]:
    """The status of each SuperNode the SuperLink has registered (``flwr supernode ls``)."""
    nodes = deployment.flwr("supernode", "ls", CONNECTION, "--format", "json", timeout=120)
    return [node["status"] for node in json.loads(nodes.stdout)["nodes"]]


def _supernode_process(deployment: LocalDeployment, k: int) -> subprocess.Popen[bytes]:
    """The running SuperNode process of key pair ``node-k`` (an earlier test of the shared
    deployment may have restarted the SuperLink or this SuperNode: not found by position)."""
    key = str(deployment.certs / f"node-{k}")
    return next(
        p
        for p in deployment.processes
        if p.poll() is None and Path(str(p.args[0])).name == "flower-supernode" and key in p.args
    )
