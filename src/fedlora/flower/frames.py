"""Frames on the resident trainer's socket, and the Flower message contents they carry.

A frame is a fixed prefix (the 4 bytes ``FLR1``, the header's length as 4 bytes and the
arrays' length as 8, big-endian), a UTF-8 JSON header, then the arrays as one safetensors
buffer. A ``RecordDict``'s config records travel in the header (str, int, float, bool and
their lists), its array records as the header's lists of keys, record by record, and the
safetensors arrays, named by their place in those lists (0, 1, ...). Nothing is pickled, and
both lengths are checked against the reader's limits before anything else is read: a frame
that is not one, or is too large, is a :class:`FrameError`.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

MAGIC = b"FLR1"
PREFIX = struct.Struct(">4sIQ")  # magic, header bytes, array bytes
MAX_HEADER_BYTES = 16 << 20  # config values: job fields, alphas and the experiment's JSON
MAX_FRAME_BYTES = 2**31 - 1  # as large as a Flower message may be (its gRPC limit)


class FrameError(ValueError):
    """Bytes that are not a well-formed frame, or a frame larger than the reader allows."""


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """One frame of ``header`` (JSON) and ``arrays``."""
    text = json.dumps(header).encode()
    tensors = safetensors.numpy.save({k: np.ascontiguousarray(a) for k, a in arrays.items()})
    return PREFIX.pack(MAGIC, len(text), len(tensors)) + text + tensors


def read(
    sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and arrays of the next frame on ``sock``; :class:`FrameError` if what comes is
    not a frame, or larger than ``max_bytes`` in all."""
    magic, header_bytes, array_bytes = PREFIX.unpack(_exactly(sock, PREFIX.size))
    if magic != MAGIC:
        raise FrameError(f"not a fedlora frame (it starts {magic!r}, not {MAGIC!r})")
    size = PREFIX.size + header_bytes + array_bytes
    if header_bytes > MAX_HEADER_BYTES or size > max_bytes:
        raise FrameError(
            f"a frame of {size:,} bytes (header {header_bytes:,}) exceeds the limit of"
            f" {max_bytes:,} bytes (header {MAX_HEADER_BYTES:,})"
        )
    try:
        header = json.loads(_exactly(sock, header_bytes))
        arrays = safetensors.numpy.load(_exactly(sock, array_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError, safetensors.SafetensorError) as error:
        raise FrameError(f"unreadable frame: {error}") from None
    if not isinstance(header, dict):
        raise FrameError(f"the frame's header is a JSON {type(header).__name__}, not an object")
    return header, arrays


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        received = sock.recv_into(view[got:])
        if received == 0:
            raise FrameError(f"the frame ended after {got:,} of {size:,} bytes")
        got += received
    return bytes(buffer)


def pack(content: RecordDict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``content`` as a header and arrays for :func:`encode`; its array and config records
    only (a metric record is refused: no message here carries one)."""
    if content.metric_records:
        raise FrameError(f"metric records cannot travel: {sorted(content.metric_records)}")
    keys = {name: list(record) for name, record in content.array_records.items()}
    places = [(name, key) for name, record in keys.items() for key in record]
    arrays = {str(i): content.array_records[n][k].numpy() for i, (n, k) in enumerate(places)}
    configs = {name: dict(record) for name, record in content.config_records.items()}
    for name, values in configs.items():
        if any(isinstance(v, bytes) for v in values.values()):
            raise FrameError(f"config record {name!r} holds bytes, which cannot travel in JSON")
    return {"arrays": keys, "configs": configs}, arrays


def unpack(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> RecordDict:
    """The ``RecordDict`` that :func:`pack` made ``header`` and ``arrays`` of."""
    try:
        keys = {
            str(name): [str(key) for key in record] for name, record in header["arrays"].items()
        }
        places = [(name, key) for name, record in keys.items() for key in record]
        if sorted(arrays) != sorted(str(i) for i in range(len(places))):
            raise FrameError(f"{len(arrays)} arrays for {len(places)} places in the header")
        content = RecordDict()
        for name in keys:
            content.array_records[name] = ArrayRecord()
        for i, (name, key) in enumerate(places):
            content.array_records[name][key] = Array(arrays[str(i)])
        for name, values in header["configs"].items():
            content.config_records[str(name)] = ConfigRecord(dict(values))
    except FrameError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise FrameError(f"unreadable content: {type(error).__name__}: {error}") from None
    return content
