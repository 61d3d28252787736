"""The resident trainer: one long-running process beside a SuperNode that keeps the model loaded.

Flower 1.42 starts a new ``flwr-clientapp`` process for every message and cannot keep one
alive (flwr issue #3670), so a ClientApp that trained in its own process would import torch,
transformers and fedlora and load the model for every update. Instead, ``fedlora serve-node
--socket PATH`` runs beside the SuperNode, and the ClientApp (started with ``--node-config
'partition-id=K resident-socket="PATH"'``) hands it each job over that Unix socket
(:func:`ask`): the trainer answers with the content the ClientApp itself would have answered,
trained by the same :func:`fedlora.flower.client_app.train_content`, whose model stays loaded
between jobs.

A request is one frame (:mod:`fedlora.flower.frames`) whose header holds the partition and the
train message's content; the reply is one frame, holding the reply's content or an error. One
job at a time: a node trains one job at a time. A request that is garbled, too large, silent for
:data:`REQUEST_TIMEOUT_S`, or whose job fails, gets an error reply, and the trainer goes on.
The socket is made mode 600 (only this user may send jobs) and removed when the trainer stops.
A trainer that dies mid-job loses that job (the ClientApp answers an error: the server counts
it lost); later jobs, finding nothing listening, train in their ClientApp processes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from flwr.app import RecordDict

from fedlora.flower import frames

Handler = Callable[[RecordDict, int], RecordDict]  # (the job's content, the partition): reply

REQUEST_TIMEOUT_S = 60.0  # a client silent this long mid-request is dropped
ACCEPT_POLL_S = 0.2  # how soon a stopped trainer notices


class ResidentError(RuntimeError):
    """The resident trainer answered a job with an error."""


def serve(
    path: Path,
    handle: Handler,
    stop: threading.Event,
    max_bytes: int = frames.MAX_FRAME_BYTES,
    listening: Callable[[], None] = lambda: None,
) -> None:
    """Answer jobs on the Unix socket ``path`` with ``handle`` until ``stop`` is set;
    ``listening`` is called once the socket is bound (clients queue from then on)."""
    with _listening(path) as listener:
        listening()
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                _answer(connection, handle, max_bytes)


@contextlib.contextmanager
def _listening(path: Path) -> Iterator[socket.socket]:
    """A listening socket at ``path`` (a stale socket file is replaced; a live one, or any
    other file, is refused), removed on exit."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        if listening_at(path):
            raise FileExistsError(f"a process already listens on {path}")
        path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        try:
            os.chmod(path, 0o600)
            listener.listen(4)
            listener.settimeout(ACCEPT_POLL_S)
            yield listener
        finally:
            path.unlink(missing_ok=True)


def listening_at(path: Path) -> bool:
    """Whether a process takes connections on the Unix socket ``path`` (a second at most)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def _answer(connection: socket.socket, handle: Handler, max_bytes: int) -> None:
    """Read one request from ``connection`` and send its reply; never raises."""
    connection.settimeout(REQUEST_TIMEOUT_S)
    try:
        header, arrays = frames.read(connection, max_bytes)
        content = frames.unpack(header["content"], arrays)
        partition = int(header["partition"])
    except Exception as error:  # garbled, too large, cut short or silent: say so, go on
        reply = _error(f"bad request: {error}")
    else:
        try:
            reply = _content(handle(content, partition))
        except Exception as error:  # the job failed: its reply says why, the trainer goes on
            reply = _error(f"{type(error).__name__}: {error}")
    with contextlib.suppress(OSError):  # the client went away: nobody to tell
        connection.sendall(reply)


def _content(content: RecordDict) -> bytes:
    header, arrays = frames.pack(content)
    return frames.encode({"content": header}, arrays)


def _error(reason: str) -> bytes:
    return frames.encode({"error": reason}, {})


def ask(
    path: Path, content: RecordDict, partition: int, timeout: float | None
) -> RecordDict | None:
    """The reply content of the resident trainer at ``path`` to the job ``content`` for
    ``partition``, waiting at most ``timeout`` seconds for each read or write; ``None`` when no
    trainer listens there (no socket file, or no process behind it). :class:`ResidentError` if
    it answers with an error."""
    header, arrays = frames.pack(content)
    request = frames.encode({"partition": partition, "content": header}, arrays)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # a trainer that refuses a request replies before it closes
        reply, reply_arrays = frames.read(sock)
    if "error" in reply:
        raise ResidentError(f"resident trainer {path}: {reply['error']}")
    return frames.unpack(reply["content"], reply_arrays)
