"""Config files in, configs out: YAML and ``--set`` overrides merged and validated once.

Every error names the offending key (``server.per_round``) and, when the value came from a
YAML file, the file and line, so a bad config stops a run before any training starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedlora.config.schema import GENERIC_TASKS, UNION_TAGS, ConfigError, ExperimentConfig

DATA_ENV = "FEDLORA_DATA"


def resolve_data_dir(config: ExperimentConfig) -> Path | None:
    """The data folder: ``data.dir``, else ``$FEDLORA_DATA``, else an error saying how to set it.

    Hub datasets need no folder, nor do csv/jsonl tasks whose ``data.files`` are given as is.
    """
    data = config.data
    if data.dir is not None:
        if not data.dir.is_dir():
            raise ConfigError(f"data.dir: folder {str(data.dir)!r} does not exist")
        return data.dir
    from_env = os.environ.get(DATA_ENV)
    if from_env:
        if not Path(from_env).is_dir():
            raise ConfigError(f"${DATA_ENV}: folder {from_env!r} does not exist")
        return Path(from_env)
    if data.source == "hub" or (data.task in GENERIC_TASKS and data.files):
        return None
    raise ConfigError(
        "data.dir: no data folder given; set data.dir in the config, pass"
        f" --set data.dir=/path/to/glue, or export {DATA_ENV}=/path/to/glue"
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["server.rounds=3", "data.dir=/x"]`` into a nested dict; values parse as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. server.rounds=3")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part!r} is set both as a value and a section")
        node[leaf] = yaml.safe_load(raw)
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _describe(error: ValidationError, source: str | None, lines: dict[tuple[str, ...], int]) -> str:
    messages = []
    for item in error.errors():
        path = tuple(str(p) for p in item["loc"] if p not in UNION_TAGS)
        key = ".".join(path) or "config"
        text = item["msg"].removeprefix("Value error, ")
        if text.startswith(f"{key}:") or (key == "config" and ":" in text.split(" ")[0]):
            message = text
        else:
            message = f"{key}: {text}"
        where = lines.get(path)  # keys set by --set overrides have no line
        if source is not None and where is not None:
            message = f"{source}:{where}: {message}"
        messages.append(message)
    return "invalid config\n  " + "\n  ".join(messages)


def build_config(
    raw: dict[str, Any], overrides: list[str] | None = None, source: str | None = None
) -> ExperimentConfig:
    """Validate a raw mapping (plus ``--set`` overrides) into an :class:`ExperimentConfig`."""
    return _validate(_merge(raw, parse_overrides(overrides or [])), source, {})


def _validate(
    raw: dict[str, Any], source: str | None, lines: dict[tuple[str, ...], int]
) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source, lines)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file, apply ``--set`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return _validate(_merge(raw, parse_overrides(overrides or [])), str(path), _key_lines(text))


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML: reloading it reproduces the run."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
