"""A checkpoint's contents: JSON-ready state plus named tensors, as the bytes of one
safetensors file. No pickle: loading a checkpoint runs no code.

A snapshot carries the sha256 of everything it restores, and reading one verifies it: a file
damaged on disk is refused, never resumed into a different run.

The server core and the runtimes fill a snapshot in and restore from one; ``results/`` writes
it to the run folder (atomically: :func:`fedlora.results.atomic.write_atomically`) and reads it
back. It lives below both so that neither package imports the other."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedlora.adapters import AdapterState

_META_KEY = "fedlora.snapshot"
_DIGEST_KEY = "fedlora.sha256"


class SnapshotError(ValueError):
    """Bytes that are not a snapshot as it was written: truncated, torn or changed since."""


@dataclass
class Snapshot:
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def put_state(self, name: str, state: AdapterState) -> None:
        """An adapter, kept bit-exact as its own safetensors bytes."""
        self.tensors[name] = torch.frombuffer(bytearray(state.to_bytes()), dtype=torch.uint8)

    def get_state(self, name: str) -> AdapterState:
        return AdapterState.from_bytes(self.tensors[name].numpy().tobytes())

    def to_bytes(self) -> bytes:
        # copies: tensors of the live state may share memory, which safetensors refuses
        tensors = {k: v.detach().clone().contiguous() for k, v in self.tensors.items()}
        meta = json.dumps(self.meta)
        metadata = {_META_KEY: meta, _DIGEST_KEY: _digest(meta, tensors)}
        return save_safetensors(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """The snapshot ``data`` holds; :class:`SnapshotError` unless it verifies."""
        try:
            tensors = load_safetensors(data)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
            meta, digest = metadata[_META_KEY], metadata.get(_DIGEST_KEY)
        except (SafetensorError, ValueError, KeyError, TypeError, AttributeError):
            raise SnapshotError("it is cut short or its header is damaged") from None
        if digest is None:
            raise SnapshotError("it carries no checksum (written by an older fedlora)")
        if _digest(meta, tensors) != digest:
            raise SnapshotError("its checksum does not match its contents: damaged since written")
        return cls(meta=json.loads(meta), tensors=tensors)


def _digest(meta: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of all a snapshot restores: the meta text and each tensor's name, dtype, shape
    and bytes (a damaged header can change any of them and still parse)."""
    sha = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return sha.hexdigest()
