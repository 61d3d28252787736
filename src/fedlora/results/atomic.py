"""Replacing a file so that a crash at any moment leaves the old file or the new one, never a
torn one: temporary file, fsync, rename, fsync of the folder. Checkpoints and readouts are
written this way."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, keep: Path | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one; with
    ``keep``, the old file moves there (a fallback, should the new one be damaged later)."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if keep is not None and path.is_file():
        os.replace(path, keep)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the renames themselves survive a power cut
    finally:
        os.close(directory)
