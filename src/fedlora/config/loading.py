"""Config files in, configs out: YAML and ``--set`` overrides merged and validated once.

Every error names the offending key (``server.per_round``) and where its value came from: the
file and line, or the ``--set`` that gave it; an unknown key gets the nearest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

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


def with_resolved_data_dir(config: ExperimentConfig) -> ExperimentConfig:
    """The config with ``data.dir`` as the run reads it (``$FEDLORA_DATA`` written out), so a
    run folder's config.yaml reproduces the run by itself."""
    from_env = os.environ.get(DATA_ENV)
    if config.data.dir is not None or not from_env:
        return config
    return config.model_copy(
        update={"data": config.data.model_copy(update={"dir": Path(from_env)})}
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
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {pair}: not a valid YAML value: {error}") from None
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


Origins = dict[tuple[str, ...], str]  # key path -> where its value came from, for messages


def _file_origins(text: str, source: str) -> Origins:
    """``file:line`` of each key path in a YAML document; a key given twice is an error."""
    origins: Origins = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            child = (*path, key)
            if key in first:
                raise ConfigError(
                    f"{source}:{line}: duplicate key {'.'.join(child)!r}"
                    f" (first given on line {first[key]})"
                )
            first[key] = line
            origins[child] = f"{source}:{line}"
            walk(value_node, child)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return origins


def _override_origins(pairs: list[str], origins: Origins) -> Origins:
    """``origins`` with each ``--set`` blamed for its key and everything under it."""
    blamed = dict(origins)
    for pair in pairs:
        path = tuple(pair.partition("=")[0].strip().split("."))
        for key in [k for k in blamed if k[: len(path)] == path]:
            del blamed[key]
        # one line, without the document end a YAML dump of a scalar adds ("3\n...")
        shown = " ".join(line.strip() for line in pair.splitlines() if line.strip() != "...")
        blamed[path] = f"--set {shown}"
    return blamed


def _section_of(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The config section a key path ends in (union tags in the path pick the member)."""
    model: type[BaseModel] = ExperimentConfig
    parts = list(path)
    while parts:
        field = model.model_fields.get(parts.pop(0))
        models = _models_in(field.annotation) if field is not None else []
        if len(models) > 1 and parts:
            tag = parts.pop(0)
            models = [
                m for m in models if tag in get_args(m.model_fields["distribution"].annotation)
            ]
        if len(models) != 1:
            return None
        model = models[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """ "unknown key 'roundz'; did you mean 'rounds'?" from the fields of the key's section."""
    key = str(loc[-1])
    section = _section_of(tuple(str(p) for p in loc[:-1]))
    known = list(section.model_fields) if section is not None else []
    nearest = difflib.get_close_matches(key, known, n=1)
    if nearest:
        return f"unknown key {key!r}; did you mean {nearest[0]!r}?"
    return f"unknown key {key!r}; valid keys: {', '.join(known)}"


_KEY_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*): ")


def _describe(error: ValidationError, origins: Origins) -> str:
    messages = []
    for item in error.errors():
        path = tuple(str(p) for p in item["loc"] if p not in UNION_TAGS)
        if item["type"] == "extra_forbidden":
            text = _unknown_key(item["loc"])
        else:
            text = item["msg"].removeprefix("Value error, ")
            if item["type"] in _TYPE_ERRORS:
                text += f", got {item['input']!r}"
        named = _KEY_PREFIX.match(text)
        if named:  # a cross-field check names the key to change: blame where that was set
            path = tuple(named.group(1).split("."))
            message = text
        else:
            message = f"{'.'.join(path) or 'config'}: {text}"
        where = next(
            (origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None
        )
        messages.append(f"{where}: {message}" if where else message)
    return "invalid config\n  " + "\n  ".join(messages)


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type"}


def build_config(raw: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus ``--set`` overrides) into an :class:`ExperimentConfig`."""
    pairs = overrides or []
    return _validate(_merge(raw, parse_overrides(pairs)), _override_origins(pairs, {}))


def _validate(raw: dict[str, Any], origins: Origins) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, origins)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file, apply ``--set`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        raw = yaml.safe_load(text) or {}
        origins = _file_origins(text, str(path))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    pairs = overrides or []
    return _validate(_merge(raw, parse_overrides(pairs)), _override_origins(pairs, origins))


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML: reloading it reproduces the run."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
