"""Config files in, configs out: YAML and ``--set`` overrides merged and validated once.

Every error names the offending key (``server.per_round``) and where its value came from: the
file and line, or the ``--set`` that gave it; an unknown key gets the nearest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from fedlora.config.clients import UNION_TAGS
from fedlora.config.data import GENERIC_TASKS
from fedlora.config.schema import ExperimentConfig, Origins
from fedlora.config.section import ConfigError

DATA_ENV = "FEDLORA_DATA"

# YAML 1.1 reads ``1e-4`` and ``1.0e5`` as text (its floats need a dot and a signed exponent);
# every ML config writes them as numbers, as YAML 1.2 reads them.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus exponent floats without a dot or an exponent sign."""


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes text :class:`_Loader` would read as a number."""


for _yaml_class in (_Loader, _Dumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
    )

# Far above any config (a rank for each of 10,000 clients), far below what a "billion laughs"
# document of nested aliases expands to: it is refused before anything expands it.
MAX_YAML_VALUES = 100_000


def read_yaml(text: str, source: str, what: str = "valid YAML") -> tuple[Any, yaml.Node | None]:
    """The YAML document in ``text`` and its node tree (for lines); ``source`` names it in
    errors, ``what`` is what it is not when it does not parse. Aliases that would expand it
    past :data:`MAX_YAML_VALUES` values are refused."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_expansion(root, source)
        return loader.construct_document(root), root
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not {what}: {error}") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases make it larger than :data:`MAX_YAML_VALUES` values,
    or make a value contain itself; counted on the node graph, each shared node once."""
    sizes: dict[int, int] = {}  # node id -> values under it, aliases expanded; -1: counting

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known == -1:
            line = node.start_mark.line + 1
            raise ConfigError(f"{source}:{line}: a YAML alias makes this value contain itself")
        if known is not None:
            return known
        sizes[id(node)] = -1
        children = _children(node)
        sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    if size(root) <= MAX_YAML_VALUES:
        return
    path: list[str] = []
    line, node = 0, root
    while isinstance(node, yaml.MappingNode):
        heavy = [(k, v) for k, v in node.value if sizes[id(v)] > MAX_YAML_VALUES]
        if not heavy:
            break
        key, node = heavy[0]
        path.append(str(key.value))
        line = key.start_mark.line + 1
    where = f"{source}:{line}: {'.'.join(path)}" if path else source
    raise ConfigError(
        f"{where}: more than {MAX_YAML_VALUES:,} values once its YAML aliases (*name) are"
        " expanded; no config is that large"
    )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def unreadable(path: Path) -> bool:
    """Whether ``path`` exists but this process may not read it (a folder: list and enter it).

    ``os.access`` decides, as the OS would for this user (root may read anything); a path
    that does not exist is not unreadable: its caller says where it was expected.
    """
    try:
        is_folder = stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:  # a folder on the way may not be entered
        return True
    return not os.access(path, os.R_OK | (os.X_OK if is_folder else 0))


def _data_folder(path: Path, key: str) -> Path:
    """``path`` if it is a folder the run can read, else a message saying what it is instead."""
    if unreadable(path):
        raise ConfigError(f"{key}: {str(path)!r} cannot be read (permission denied)")
    if path.is_file():
        raise ConfigError(f"{key}: {str(path)!r} is a file; give the folder that holds the data")
    if not path.is_dir():
        raise ConfigError(f"{key}: folder {str(path)!r} does not exist")
    return path


def resolve_data_dir(config: ExperimentConfig) -> Path | None:
    """The data folder: ``data.dir``, else ``$FEDLORA_DATA``, else an error saying how to set it.

    Hub datasets need no folder, nor do csv/jsonl tasks whose ``data.files`` are given as is.
    """
    data = config.data
    if data.dir is not None:
        return _data_folder(data.dir, "data.dir")
    from_env = os.environ.get(DATA_ENV)
    if from_env:
        return _data_folder(Path(from_env), f"${DATA_ENV}")
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
        node[leaf] = read_yaml(raw, f"--set {pair}", "a valid YAML value")[0]
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _file_origins(root: yaml.Node, source: str) -> Origins:
    """``file:line`` of each key path in a YAML document; a key given twice is an error."""
    origins = Origins()

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

    walk(root, ())
    return origins


def _override_origins(pairs: list[str], origins: Origins) -> Origins:
    """``origins`` with each ``--set`` blamed for its key and everything under it."""
    blamed = Origins(origins)
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
            if item["type"] in _TYPE_ERRORS:  # reprlib: a huge value is shown in brief
                text += f", got {reprlib.repr(item['input'])}"
        named = _KEY_PREFIX.match(text)
        if named:  # a cross-field check names the key to change: blame where that was set
            messages.append(_located(text, origins))
        else:
            message = f"{'.'.join(path) or 'config'}: {text}"
            messages.append(_located(message, origins, path))
    return "invalid config\n  " + "\n  ".join(messages)


def _located(message: str, origins: Origins, path: tuple[str, ...] | None = None) -> str:
    """``message`` after where its key (``path``, else the key it starts with) was set."""
    if path is None:
        named = _KEY_PREFIX.match(message)
        path = tuple(named.group(1).split(".")) if named else ()
    where = next((origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None)
    return f"{where}: {message}" if where else message


def setup_error(config: ExperimentConfig, message: str) -> ConfigError:
    """A check after parsing found ``message``, which starts with the key at fault: the error
    names where the config set that key (file and line, or ``--set``), as a parse error does."""
    return ConfigError("invalid config\n  " + _located(message, config.origins))


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type"}


def build_config(raw: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus ``--set`` overrides) into an :class:`ExperimentConfig`."""
    pairs = overrides or []
    return _validate(_merge(raw, parse_overrides(pairs)), _override_origins(pairs, Origins()))


def _validate(raw: dict[str, Any], origins: Origins) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw, context={"origins": origins})
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
    raw, root = read_yaml(text, str(path))
    if root is None:
        raise ConfigError(
            f"{path}: the file is empty; write the keys that differ from the defaults"
            " (an empty mapping, {}, runs every default)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    origins = _file_origins(root, str(path))
    pairs = overrides or []
    return _validate(_merge(raw, parse_overrides(pairs)), _override_origins(pairs, origins))


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML: reloading it reproduces the run."""
    return yaml.dump(config.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False)
