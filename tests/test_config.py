"""Config loading: overrides, and errors that name the key (and file:line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedlora.config import (
    ConfigError,
    build_config,
    dump_config,
    load_config,
    parse_overrides,
    resolve_data_dir,
)
from fedlora.preflight import check_setup
from fedlora.studies.sweep import load_study, plan

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
        (
            "server:\n  roundz: 3\n",
            r"exp.yaml:2: server.roundz: unknown key 'roundz'; did you mean 'rounds'\?",
        ),
        ("zzz: 3\n", r"exp.yaml:1: zzz: unknown key 'zzz'; valid keys: name, seed, data"),
        (
            "seed: 0\nlora:\n  r: 0\n",
            r"exp.yaml:3: lora.r: Input should be greater than or equal to 1",
        ),
        (
            "server:\n  rounds: many\n",
            r"exp.yaml:2: server.rounds: Input should be a valid integer",
        ),
        (
            "clients:\n  speed: {distribution: pareto, alpah: 1}\n",
            r"exp.yaml:2: clients.speed.alpah: unknown key 'alpah'; did you mean 'alpha'\?",
        ),
        ("server:\n  rounds: true\n", r"exp.yaml:2: server.rounds: .* valid integer, got True"),
        ("server:\n  rounds: '3'\n", r"exp.yaml:2: server.rounds: .* valid integer, got '3'"),
        ("lora:\n  alpha: .inf\n", r"exp.yaml:2: lora.alpha: Input should be a finite number"),
        ("train:\n  lr: .nan\n", r"exp.yaml:2: train.lr: Input should be a finite number"),
        ("eval:\n  target: {value: .inf}\n", r"exp.yaml:2: eval.target.value: .* finite"),
        ("server:\n  rounds: 2\n  rounds: 3\n", r"exp.yaml:3: duplicate key 'server.rounds'"),
        (
            "clients: {num: 2, ranks: [2, 4, 8]}\n",
            r"exp.yaml:1: clients.ranks: 3 ranks listed for 2 clients",
        ),
        (
            "lora: {r: 8}\nserver:\n  global_rank: 4\n",
            r"exp.yaml:3: server.global_rank: 4 is below the largest client rank 8",
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("server.rounds=-1", r"\n  --set server.rounds=-1: server.rounds: Input should be greater"),
        (
            "clients.speed={distribution: pareto, alpha: -1}",
            r"\n  --set clients.speed=\{distribution: pareto, alpha: -1\}: clients.speed.alpha:",
        ),
        ("server.rounds=[1", r"--set server.rounds=\[1: not a valid YAML value"),
    ],
)
def test_override_errors_blame_the_set_not_the_file(
    tmp_path: Path, override: str, message: str
) -> None:
    text = "clients:\n  num: 4\n  speed: {distribution: pareto, alpha: 1}\nserver:\n  rounds: 3\n"
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), [override])


@pytest.mark.parametrize(
    ("yaml_text", "override", "message"),
    [
        (
            "clients:\n  num: 3\nserver:\n  per_round: 5\n",
            None,
            r"exp.yaml:4: server.per_round: 5 clients per round but clients.num is 3",
        ),
        (
            "clients: {num: 4}\n",
            "server.per_round=9",
            r"\n  --set server.per_round=9: server.per_round: 9 clients",
        ),
        (
            "server:\n  policy: nope\n",
            None,
            r"exp.yaml:2: server.policy: unknown policy 'nope'; available: fedasync, fedavg,",
        ),
        (
            "server:\n  aggregator: nope\n",
            None,
            r"exp.yaml:2: server.aggregator: unknown aggregator 'nope'",
        ),
        ("eval: {shadow: [nope]}\n", None, r"exp.yaml:1: eval.shadow: unknown aggregator 'nope'"),
        (
            "clients:\n  num: 2\nserver:\n  policy: fedfa\n  concurrency: 3\n",
            None,
            r"exp.yaml:5: server.concurrency: 3 clients training at once but clients.num is 2",
        ),
        (
            "server:\n  policy: fedfa\n  mixing: 0.3\n",
            None,
            r"exp.yaml:3: server.mixing: policy fedfa does not read it \(read by fedasync\)",
        ),
    ],
)
def test_setup_errors_after_parsing_name_the_key_and_where(
    tmp_path: Path, yaml_text: str, override: str | None, message: str
) -> None:
    """The registries are asked after parsing (preflight), and still blame the line or --set."""
    config = load_config(write(tmp_path, yaml_text), [override] if override else [])
    with pytest.raises(ConfigError, match=message):
        check_setup(config)


def test_an_int_where_a_float_is_meant_stays_fine(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "lora: {alpha: 16}\ntrain: {lr: 1}\n"))
    assert (cfg.lora.alpha, cfg.train.lr) == (16.0, 1.0)


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
    cfg = build_config(
        {
            "name": "x",
            "data": {"dir": str(tmp_path)},
            "clients": {"ranks": {2: 0.5, 8: 0.5}, "speed": {"distribution": "pareto", "cap": 60}},
        }
    )
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    load_config(path)


STUDIES = [p for p in sorted(CONFIGS.glob("*/*.yaml")) if "arms" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_studies_plan_every_cell(path: Path, tmp_path: Path) -> None:
    """Every cell of a shipped study validates, so a sweep cannot stop halfway on a typo."""
    cells = plan(load_study(path), tmp_path)
    assert cells and len({c.folder for c in cells}) == len(cells)
