"""Config loading: overrides, and errors that name the key (and file:line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.config import (
    ConfigError,
    build_config,
    dump_config,
    load_config,
    parse_overrides,
    resolve_data_dir,
)

CONFIGS = Path(__file__).parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_design() -> None:
    cfg = build_config({})
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (8, 16.0, ["query", "value"])
    assert cfg.server.policy == "fedavg" and cfg.cohort_size == cfg.clients.num


def test_overrides_parse_as_yaml_and_nest() -> None:
    assert parse_overrides(
        ["server.rounds=3", "model.bf16=true", "lora.target_modules=[query]"]
    ) == {
        "server": {"rounds": 3},
        "model": {"bf16": True},
        "lora": {"target_modules": ["query"]},
    }
    cfg = build_config({"server": {"rounds": 9, "policy": "fedavg"}}, ["server.rounds=3"])
    assert cfg.server.rounds == 3 and cfg.server.policy == "fedavg"


@pytest.mark.parametrize("bad", ["server.rounds", "=3", ""])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides([bad])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("server:\n  roundz: 3\n", r"exp.yaml:2: server.roundz: Extra inputs are not permitted"),
        (
            "seed: 0\nlora:\n  r: 0\n",
            r"exp.yaml:3: lora.r: Input should be greater than or equal to 1",
        ),
        (
            "clients:\n  num: 3\nserver:\n  per_round: 5\n",
            r"server.per_round: 5 clients per round but clients.num is 3",
        ),
        (
            "server:\n  rounds: many\n",
            r"exp.yaml:2: server.rounds: Input should be a valid integer",
        ),
        (
            "server:\n  policy: nope\n",
            r"server.policy: unknown policy 'nope'; available: fedasync, fedavg, fedbuff, fedfa",
        ),
        ("server:\n  aggregator: nope\n", r"server.aggregator: unknown aggregator 'nope'"),
        (
            "clients:\n  speed: {distribution: pareto, alpah: 1}\n",
            r"exp.yaml:2: clients.speed.alpah: Extra inputs",
        ),
        ("clients:\n  speed: {distribution: gamma}\n", r"clients.speed: .*'constant', 'uniform'"),
        ("train:\n  local_epochs: 1\n", r"train: set exactly one of local_steps and local_epochs"),
        (
            "data:\n  partition: {method: dirichlet, alpha: -1}\n",
            r"data.partition.alpha: Input should be greater than 0",
        ),
    ],
)
def test_errors_name_the_key_and_line(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, yaml_text))


def test_override_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora\.r: Input should be greater"):
        load_config(write(tmp_path, "seed: 1\n"), ["lora.r=-2"])


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "server: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_data_folder_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLORA_DATA", raising=False)
    with pytest.raises(ConfigError, match=r"data.dir: no data folder.*FEDLORA_DATA"):
        resolve_data_dir(build_config({}))
    with pytest.raises(ConfigError, match=r"data\.dir: folder .* does not exist"):
        resolve_data_dir(build_config({"data": {"dir": str(tmp_path / "nope")}}))
    monkeypatch.setenv("FEDLORA_DATA", str(tmp_path))
    assert resolve_data_dir(build_config({})) == tmp_path
    monkeypatch.setenv("FEDLORA_DATA", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"\$FEDLORA_DATA: folder .* does not exist"):
        resolve_data_dir(build_config({}))


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config({"name": "x", "clients": {"speed": {"distribution": "pareto", "cap": 60}}})
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    load_config(path)
