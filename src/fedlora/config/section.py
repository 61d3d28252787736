"""What every config section shares: strict parsing, and the error that names a key.

Validators raise messages that start with the key they are about (``server.per_round: …``), so
the loader can add the file and line and the user sees which key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Strict


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key (and file:line if known)."""


class Section(BaseModel):
    """Strict where YAML is loose: no unknown keys, no ``inf``/``nan``, no ``true`` or ``"3"``
    where a number is meant (an int where a float is meant is fine)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# YAML has no path type: a path is written as text.
FilePath = Annotated[Path, Strict(False)]
