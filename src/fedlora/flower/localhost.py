"""A Flower deployment on 127.0.0.1 as processes this one owns: the README's commands (a
SuperLink with TLS and SuperNode authentication, registered SuperNodes, each with its resident
trainer unless told not to, ``flwr run``), on free ports, every offline switch set, and
everything stopped on exit. The deployment test and the
runtime benchmark use it; a real federation runs the same commands on its own hosts.

The credentials come from ``scripts/flower_certs.sh`` (``ca.crt``, ``server.pem``,
``server.key``, ``node-K``/``node-K.pub``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from fedlora.flower.client_app import RESIDENT_KEY
from fedlora.flower.resident import listening_at
from fedlora.flower.submit import APP

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr live here
CONNECTION = "fedlora"
OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(address: int | Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``process`` listens on ``address`` (a port on 127.0.0.1, or a Unix socket); an
    error if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if _listens(address):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {_named(address)} after {timeout:g}s")


def _listens(address: int | Path) -> bool:
    if isinstance(address, Path):
        return listening_at(address)
    try:
        socket.create_connection(("127.0.0.1", address), timeout=1).close()
    except OSError:
        return False
    return True


def _named(address: int | Path) -> str:
    return str(address) if isinstance(address, Path) else f"127.0.0.1:{address}"


def descendants(pid: int) -> list[int]:
    """Every process ``pid`` spawned, transitively (Flower detaches some into new sessions,
    so a process group does not hold them all). Linux: read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        spawned = children.get(todo.pop(), [])
        found += spawned
        todo += spawned
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` and everything it spawned: politely, then for sure."""
    spawned = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
    for pid in spawned:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class LocalDeployment:
    """A SuperLink and SuperNodes ``0..nodes-1`` (``partition-id`` K, key pair ``node-K``,
    registered) on 127.0.0.1, logging into ``folder/logs``; a context manager. With
    ``resident`` (the default) each SuperNode K has a resident trainer (``fedlora serve-node``)
    on the Unix socket ``folder/resident/node-K.sock``, named in its node config; without, every
    message loads the model in its ClientApp process."""

    def __init__(self, certs: Path, folder: Path, nodes: int, resident: bool = True) -> None:
        self.certs = certs
        self.nodes = nodes
        self.resident = resident
        self.sockets = folder / "resident"
        self.logs = folder / "logs"
        self.home = folder / "flwr-home"  # flwr's connection settings (FLWR_HOME)
        self.database = folder / "superlink.db"  # registered node keys survive a restart
        self.link_port = free_port()
        src = Path(__file__).parents[2]  # so every Flower process imports this fedlora
        self.env = (
            os.environ
            | OFFLINE
            | {
                "FLWR_HOME": str(self.home),
                "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),  # Flower spawns its tools
                "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
            }
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LocalDeployment:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.link_port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n'
        )
        try:
            self._start_superlink()
            for k in range(self.nodes):
                self.register(k)
                if self.resident:
                    self.resident_trainer(k)
                self.supernode(k)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()

    def start(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def _start_superlink(self) -> None:
        """Start the SuperLink as the first of :attr:`processes`, as the README does."""
        link = self.start(
            "superlink",
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "server.pem"),
            "--ssl-keyfile", str(self.certs / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database", str(self.database),
            "--host", "127.0.0.1",
            "--port", str(self.link_port),
        )  # fmt: skip
        wait_for(self.link_port, link, timeout=120)

    def restart_superlink(self) -> None:
        """Stop the SuperLink and start it again, on its port and database, as an operator's
        restart would; the SuperNodes reconnect by themselves."""
        stop(self.processes.pop(0))
        self._start_superlink()

    def register(self, k: int) -> None:
        """Let key pair ``node-k`` join (``flwr supernode register``)."""
        public = str(self.certs / f"node-{k}.pub")
        result = self.flwr("supernode", "register", public, CONNECTION, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"flwr supernode register {public}: {result.stdout}{result.stderr}")

    def socket_of(self, k: int) -> Path:
        """The Unix socket of node ``k``'s resident trainer."""
        return self.sockets / f"node-{k}.sock"

    def resident_trainer(self, k: int) -> subprocess.Popen[bytes]:
        """Node ``k``'s resident trainer, once its socket takes connections."""
        self.sockets.mkdir(parents=True, exist_ok=True)
        serve = [str(BIN / "fedlora"), "serve-node", "--socket", str(self.socket_of(k))]
        trainer = self.start(f"resident-{k}", *serve)
        wait_for(self.socket_of(k), trainer, timeout=120)
        return trainer

    def supernode(self, k: int, *extra: str) -> subprocess.Popen[bytes]:
        """SuperNode ``k`` holding partition ``k``, authenticated by key pair ``node-k``, its
        ClientApps handing their jobs to its resident trainer (if the deployment has them)."""
        node_config = f"partition-id={k}"
        if self.resident:
            node_config += f' {RESIDENT_KEY}="{self.socket_of(k)}"'
        return self.start(
            f"supernode-{k}",
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.link_port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.certs / f"node-{k}"),
            "--node-config", node_config,
            "--host", "127.0.0.1",
            "--port", str(free_port()),
            *extra,
        )  # fmt: skip

    def flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(self, config: Path, out: Path, wait_s: float, timeout: float, app: Path = APP) -> str:
        """``flwr run`` of the fedlora app (or another ``app`` with its run config keys) on
        ``config`` into ``out``, until it ends; its output."""
        run_config = f'config="{config.resolve()}" out="{out.resolve()}" wait-s={wait_s}'
        result = self.flwr(
            "run", str(app), CONNECTION, "--stream", "--run-config", run_config, timeout=timeout
        )
        return result.stdout + result.stderr

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def log_tails(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))
