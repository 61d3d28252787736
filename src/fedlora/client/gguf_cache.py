"""A GGUF checkpoint dequantized once, then loaded as an ordinary model folder.

transformers reads a GGUF file by dequantizing every tensor on each load (26 s for
SmolLM2-135M on an idle 2-core machine, 84 s on a busy one): a study of forty cells would spend
most of its time there. The first load writes the dequantized weights (safetensors) and the
tokenizer to a folder keyed by the file's sha256 and the transformers version that
dequantized it; every later load reads that folder in a few seconds and scores the same.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import transformers
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file

MODEL_CACHE_ENV = "FEDLORA_MODEL_CACHE"
_FORMAT = 1  # part of the key: bump it when the folder's layout changes
_CHUNK = 1 << 20

_log = logging.getLogger(__name__)


def default_model_cache() -> Path:
    """``$FEDLORA_MODEL_CACHE``, else ``~/.cache/fedlora/models``."""
    from_env = os.environ.get(MODEL_CACHE_ENV)
    return Path(from_env) if from_env else Path.home() / ".cache" / "fedlora" / "models"


def gguf_path(name: str, gguf_file: str) -> Path:
    """Where ``gguf_file`` inside a local folder or a (locally cached) hub repo lies."""
    found = cached_file(name, gguf_file)
    if found is None:
        raise FileNotFoundError(f"model.gguf_file: no {gguf_file} in {name}")
    return Path(found)


def cache_key(path: Path) -> str:
    """The file's content and the code that dequantizes it: a new transformers may
    dequantize differently, so it gets its own folder."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    parts = f"{_FORMAT}|{transformers.__version__}|{digest.hexdigest()}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def cached_folder(name: str, gguf_file: str, cache: Path | None = None) -> Path:
    """Where ``gguf_file``'s dequantized copy is kept (it exists once it has a config.json)."""
    return (cache or default_model_cache()) / cache_key(gguf_path(name, gguf_file))


def dequantized_folder(name: str, gguf_file: str, cache: Path | None = None) -> str:
    """A model folder holding ``gguf_file``'s weights and tokenizer: the cached one, written
    now on a first use. Where the cache cannot be written the GGUF is still usable: the error
    is logged and the caller gets ``name`` back to read the GGUF itself (only time is lost)."""
    folder = cached_folder(name, gguf_file, cache)
    if (folder / "config.json").is_file():
        return str(folder)
    try:
        _write(name, gguf_file, folder)
    except OSError as error:
        _log.warning("cannot cache the dequantized %s in %s (%s); going on without it",
                     gguf_file, folder.parent, error)  # fmt: skip
        return name
    return str(folder)


def _write(name: str, gguf_file: str, folder: Path) -> None:
    """Dequantize into a temporary sibling and rename it into place: a reader never sees
    half a folder, and of two processes writing at once the second simply keeps the first's."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf_file)
        # The weights are already plain float tensors; only the config's GGUF marker makes
        # transformers refuse to save them, so the folder gets the config without it.
        config = copy.deepcopy(model.config)
        del config.quantization_config
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # tied weights stored once
        AutoTokenizer.from_pretrained(name, gguf_file=gguf_file).save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
