"""The resident trainer beside a SuperNode (``fedlora serve-node``): its frames carry a job's
content exactly, a garbled or oversize request gets an error reply and the trainer goes on, the
ClientApp hands its job over (or trains in its own process when nothing listens) without
importing torch, and over a real deployment the model loads once per node and the run's global
adapter is the in-app path's."""

from __future__ import annotations

import functools
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakes import wall_clock
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from local_grid import ClientCall, LocalGrid

from fedlora.adapters import AdapterState, LoraFactors
from fedlora.config import build_config
from fedlora.flower import frames
from fedlora.flower.client_app import RESIDENT_KEY, app, kept, node_experiment, train_content
from fedlora.flower.inbox import train_message
from fedlora.flower.localhost import LocalDeployment
from fedlora.flower.records import JobFields, ResultFields, get_state, put_state
from fedlora.flower.resident import ResidentError, ask, serve
from fedlora.flower.server_app import run_federation
from fedlora.results.events import read_events

Handler = Callable[[RecordDict, int], RecordDict]


@contextmanager
def serving(path: Path, handle: Handler, max_bytes: int = frames.MAX_FRAME_BYTES) -> Iterator[Path]:
    """A resident trainer on ``path`` in a thread of this process, stopped on exit."""
    stop, listening = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=serve, args=(path, handle, stop, max_bytes, listening.set), daemon=True
    )
    thread.start()
    assert listening.wait(timeout=30)
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive() and not path.exists()


def echo(content: RecordDict, partition: int) -> RecordDict:
    """A trainer that answers with what it was sent, and the partition it was asked for."""
    content.config_records["partition"] = ConfigRecord({"id": partition})
    return content


def exchange(path: Path, raw: bytes) -> dict:
    """Send ``raw`` to the trainer at ``path``; the header of its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        header, arrays = frames.read(sock)
    assert arrays == {}
    return header


def a_job(seed: int = 0) -> RecordDict:
    """A train message's content: a random adapter (trained and frozen factors, a head),
    float16 and float32 arrays, and config values of every JSON type."""
    g = torch.Generator().manual_seed(seed)
    state = AdapterState(
        lora={"layer.0.query": LoraFactors(torch.randn(3, 6, generator=g), torch.randn(5, 3), 6.0)},
        extra={"classifier.weight": torch.randn(2, 6, generator=g)},
        frozen={"layer.0.value": LoraFactors(torch.randn(2, 6, generator=g), torch.zeros(5, 2), 4)},
    )
    content = RecordDict()
    put_state(content, state, "float16" if seed % 2 else "float32")
    JobFields(job=7, client=1, version=2, rank=3).put(content)
    content.config_records["values"] = ConfigRecord(
        {"nan": math.nan, "flag": True, "text": 'é\n"', "ints": [1, -2], "tiny": 5e-324}
    )
    return content


def assert_same_content(a: RecordDict, b: RecordDict) -> None:
    assert list(a.array_records) == list(b.array_records)
    for name, record in a.array_records.items():
        assert list(record) == list(b.array_records[name])
        for key, array in record.items():
            theirs = b.array_records[name][key]
            assert (array.dtype, array.shape, array.data) == (
                theirs.dtype,
                theirs.shape,
                theirs.data,
            )
    assert list(a.config_records) == list(b.config_records)
    for name, record in a.config_records.items():
        assert repr(dict(record)) == repr(dict(b.config_records[name]))  # NaN included


@pytest.mark.parametrize("seed", [0, 1])
def test_a_job_round_trips_through_the_trainer_exactly(tmp_path: Path, seed: int) -> None:
    sent = a_job(seed)
    with serving(tmp_path / "node.sock", echo) as path:
        reply = ask(path, sent, partition=1, timeout=30)
    assert reply is not None
    assert reply.config_records.pop("partition")["id"] == 1
    assert_same_content(reply, sent)
    assert torch.equal(
        get_state(reply).lora["layer.0.query"].A, get_state(sent).lora["layer.0.query"].A
    )


def test_garbled_requests_get_error_replies_and_the_trainer_goes_on(tmp_path: Path) -> None:
    good = frames.encode({"partition": 0, "content": frames.pack(a_job())[0]}, {})
    body = frames.pack(a_job())
    with serving(tmp_path / "node.sock", echo) as path:
        assert "not a fedlora frame" in exchange(path, b"GET / HTTP/1.1\r\n\r\n")["error"]
        assert "ended after" in exchange(path, good[:30])["error"]
        not_json = frames.PREFIX.pack(frames.MAGIC, 3, 0) + b"{x}"
        assert "unreadable frame" in exchange(path, not_json)["error"]
        no_arrays = frames.encode({"partition": 0, "content": body[0]}, {})
        assert "arrays for" in exchange(path, no_arrays)["error"]
        assert (
            "bad request" in exchange(path, frames.encode({"content": body[0]}, body[1]))["error"]
        )
        assert ask(path, a_job(), partition=0, timeout=30) is not None  # still serving


def test_an_oversize_request_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with serving(tmp_path / "node.sock", echo, max_bytes=4096) as path:
        huge = frames.PREFIX.pack(frames.MAGIC, 10, 2**40)  # no body follows: none is read
        assert "exceeds the limit of 4,096 bytes" in exchange(path, huge)["error"]
        big_header = frames.PREFIX.pack(frames.MAGIC, frames.MAX_HEADER_BYTES + 1, 0)
        assert "exceeds the limit" in exchange(path, big_header)["error"]
        large = RecordDict({"adapter": ArrayRecord({"x": Array(np.zeros(2048, np.float32))})})
        with pytest.raises(ResidentError, match="exceeds the limit of 4,096 bytes"):
            ask(path, large, partition=0, timeout=30)
        small = RecordDict({"job": ConfigRecord({"job": 1})})
        assert ask(path, small, partition=0, timeout=30) is not None


def test_a_failing_job_is_an_error_reply_naming_the_failure(tmp_path: Path) -> None:
    def fails(content: RecordDict, partition: int) -> RecordDict:
        raise ValueError("no such partition")

    with serving(tmp_path / "node.sock", fails) as path:
        with pytest.raises(ResidentError, match="ValueError: no such partition"):
            ask(path, a_job(), partition=0, timeout=30)
        with pytest.raises(ResidentError, match="no such partition"):  # and again
            ask(path, a_job(), partition=0, timeout=30)


def test_nothing_listening_is_none_and_a_live_socket_is_not_taken(tmp_path: Path) -> None:
    assert ask(tmp_path / "none.sock", a_job(), partition=0, timeout=5) is None
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # bound, never listening: what a killed trainer leaves
    assert ask(stale, a_job(), partition=0, timeout=5) is None
    with serving(stale, echo) as path:  # the stale file is replaced
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(FileExistsError, match="already listens"):
            serve(path, echo, threading.Event())
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not a socket"):
        serve(tmp_path / "file", echo, threading.Event())


@pytest.fixture
def server_identity() -> None:
    """This process makes messages as a ServerApp would (``LocalGrid`` does the same)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def node_context(socket_path: Path | None, partition: int = 0) -> Context:
    node_config: dict = {"partition-id": partition}
    if socket_path is not None:
        node_config[RESIDENT_KEY] = str(socket_path)
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_the_client_app_hands_its_job_to_the_resident_trainer(
    tmp_path: Path, tiny_config: dict, server_identity: None
) -> None:
    """The same job trained by the ClientApp itself and by the resident trainer (here a thread
    of this process, sharing its kept model) is the same adapter, bit for bit."""
    config = build_config(tiny_config)
    config_json = node_experiment(config)
    state = kept(config_json).learner.initial_state()
    message = train_message(state, JobFields(job=3, client=0, version=0, rank=4), 7, config_json)
    in_app = app(message, node_context(tmp_path / "nobody.sock"))  # nothing listens: in-app
    resident_trainer = functools.partial(train_content, served="resident")
    with serving(tmp_path / "node.sock", resident_trainer) as path:
        resident = app(message, node_context(path))
    assert not in_app.has_error() and not resident.has_error()
    here, there = (ResultFields.get(m.content) for m in (in_app, resident))
    assert (here.served, there.served) == ("in-app", "resident")
    assert here.pid == there.pid == os.getpid() and here.loads == there.loads == kept.loads
    assert (here.examples, here.loss) == (there.examples, there.loss)
    for key, array in in_app.content.array_records["adapter"].items():
        assert array.data == resident.content.array_records["adapter"][key].data


def test_a_resident_error_is_a_lost_job_not_an_in_app_retry(
    tmp_path: Path, server_identity: None
) -> None:
    content = a_job()
    JobFields(job=0, client=2, version=0, rank=4).put(content)
    message = Message(content, 7, "train")
    with serving(tmp_path / "node.sock", functools.partial(train_content, served="resident")) as p:
        reply = app(message, node_context(p, partition=1))
    assert reply.has_error()
    assert "job 0 is for client 2, this node holds partition 1" in reply.error.reason


def test_the_client_app_imports_no_torch() -> None:
    code = (
        "import sys, fedlora.flower.client_app\n"
        "heavy = {'torch', 'transformers', 'peft', 'fedlora.experiment', 'fedlora.config'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


CERTS_SCRIPT = Path(__file__).parents[1] / "scripts" / "flower_certs.sh"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_deployment_loads_the_model_once_per_node(tmp_path: Path, tiny_config: dict) -> None:
    """FedAvg of one client per round over 2 nodes, each with its resident trainer: every
    arrival says it was trained by the resident trainer, one process per node that loaded the
    model once; the run's jobs and global adapter are, bit for bit, those of the ClientApp
    training in its own process over an in-process Grid (the same jobs, batches and seeds; one
    result per merge, so no order of arrival to round differently)."""
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: scripts/flower_certs.sh needs them")
    wall_clock(tiny_config)["clients"] |= {"num": 2}
    tiny_config["server"] |= {"per_round": 1, "rounds": 4, "job_timeout": 600}
    in_app = tmp_path / "in-app"
    calls: dict[int, ClientCall] = {k: app for k in range(2)}
    run_federation(LocalGrid(calls), build_config(tiny_config), in_app, wait_s=1.0)
    expected = [e for e in read_events(in_app / "events.jsonl") if e["type"] == "arrival"]
    assert {e["served"] for e in expected} == {"in-app"}

    config_file, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config_file.write_text(yaml.safe_dump(tiny_config))
    certs = tmp_path / "certs"
    command = ["bash", str(CERTS_SCRIPT), "--out", str(certs), "--nodes", "2"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    with LocalDeployment(certs, tmp_path, nodes=2) as deployment:
        output = deployment.run(config_file, run, wait_s=300, timeout=720)
        assert (run / "summary.json").is_file(), output + deployment.log_tails()
    arrivals = [e for e in read_events(run / "events.jsonl") if e["type"] == "arrival"]
    job = ("job", "client", "examples", "loss")
    assert [[e[k] for k in job] for e in arrivals] == [[e[k] for k in job] for e in expected]
    assert {e["client"] for e in arrivals} == {0, 1}
    assert {e["served"] for e in arrivals} == {"resident"} and {e["loads"] for e in arrivals} == {1}
    pids = {client: {e["pid"] for e in arrivals if e["client"] == client} for client in (0, 1)}
    assert all(len(p) == 1 for p in pids.values()) and pids[0] != pids[1]
    ours, theirs = (
        AdapterState.from_bytes((folder / "global.safetensors").read_bytes())
        for folder in (run, in_app)
    )
    assert ours.lora.keys() == theirs.lora.keys() and ours.extra.keys() == theirs.extra.keys()
    for module, factors in ours.lora.items():
        assert torch.equal(factors.A, theirs.lora[module].A), module
        assert torch.equal(factors.B, theirs.lora[module].B), module
    assert all(torch.equal(t, theirs.extra[name]) for name, t in ours.extra.items())
