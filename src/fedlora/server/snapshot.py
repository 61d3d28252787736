"""A checkpoint: JSON-ready state plus named tensors, in one safetensors file written
atomically (temporary file, fsync, rename), so a crash at any moment leaves either the previous
checkpoint or the new one, never a torn file. No pickle: loading a checkpoint runs no code."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedlora.adapters import AdapterState

_META_KEY = "fedlora.snapshot"


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
        return save_safetensors(tensors, metadata={_META_KEY: json.dumps(self.meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
        return cls(meta=json.loads(metadata[_META_KEY]), tensors=load_safetensors(data))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
