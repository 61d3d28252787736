"""Every bad input in README's "Bad input → message" table, run through the CLI.

Each case must stop with exit code 2, print its message, print no traceback and write nothing:
all of these are found before any file is written or any weights load. Each runs in its own
temporary folder, so paths in messages are short and the same on every machine.

The tests run as root here, which the OS lets read and write anything: a case about a path
without permission makes ``os.access`` (which the checks ask, as the OS would for any other
user) deny that one path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from summaries import HEADLINE
from typer.testing import CliRunner

from fedlora.cli import app

README = Path(__file__).parents[1] / "README.md"

Build = Callable[[Path, dict], list[str]]  # writes the case's files, returns the CLI arguments


@dataclass(frozen=True)
class Case:
    input: str  # the README's "bad input" column
    message: str  # what the CLI prints (a fragment free of paths that vary)
    build: Build
    denied: str | None = None  # a path (in the case's folder) this process may not use


def _config(tmp_path: Path, raw: dict, head: str = "") -> Path:
    """``raw`` as YAML, after ``head``: YAML text whose own keys (and lines) come first."""
    given = yaml.safe_load(head) or {}
    path = tmp_path / "exp.yaml"
    rest = {key: value for key, value in raw.items() if key not in given}
    path.write_text(head + yaml.safe_dump(rest, sort_keys=False), encoding="utf-8")
    return path


def _run(*sets: str, head: str = "") -> Build:
    def build(tmp_path: Path, raw: dict) -> list[str]:
        options = [part for value in sets for part in ("--set", value)]
        config = _config(tmp_path, raw, head)
        return ["run", str(config), "--out", str(tmp_path / "out"), "--quiet", *options]

    return build


def _with_file(split: str, content: bytes) -> Build:
    """A run whose ``split`` file is replaced by ``content``."""

    def build(tmp_path: Path, raw: dict) -> list[str]:
        Path(raw["data"]["files"][split]).write_bytes(content)
        return _run()(tmp_path, raw)

    return build


def _partition(tmp_path: Path, raw: dict) -> list[str]:
    config = _config(tmp_path, raw, "clients: {num: 40}\nserver: {per_round: 2, rounds: 1}\n")
    return ["partition", str(config), "--out", str(tmp_path / "out")]


def _study(tmp_path: Path, raw: dict) -> list[str]:
    """A study whose second arm cannot be partitioned: found before the first arm runs."""
    _config(tmp_path, raw)
    study = {"name": "s", "base": "exp.yaml", "arms": {"ok": {}, "many": {"clients.num": 40}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    root = ["--out", str(tmp_path / "out"), "--docs", str(tmp_path / "out" / "docs")]
    return ["study", str(tmp_path / "study.yaml"), *root]


def _out_is_a_file(tmp_path: Path, raw: dict) -> list[str]:
    args = _run()(tmp_path, raw)
    (tmp_path / "out").write_text("notes\n", encoding="utf-8")
    return args


def _glue_with_one_class(tmp_path: Path, raw: dict) -> list[str]:
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    rows = [f"{i}\ta cat sat\ta cat\tentailment" for i in range(30)]
    for name in ("train.tsv", "dev.tsv"):
        text = "\n".join(["index\tsentence1\tsentence2\tlabel", *rows]) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    raw["data"] = {"task": "rte", "dir": str(tmp_path / "glue"), "max_length": 32}
    return _run()(tmp_path, raw)


def _jsonl_labels(*labels: object) -> Build:
    """A JSONL task whose train file's labels are ``labels``, in turn."""

    def build(tmp_path: Path, raw: dict) -> list[str]:
        rows = [{"a": f"text {i}", "label": labels[i % len(labels)]} for i in range(40)]
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        for split in ("train", "dev"):
            (tmp_path / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        raw["data"] |= {"task": "jsonl", "text_columns": ["a"], "files": {
            "train": "train.jsonl", "dev": "dev.jsonl"}, "dir": "."}  # fmt: skip
        return _run()(tmp_path, raw)

    return build


def _empty_config(tmp_path: Path, raw: dict) -> list[str]:
    args = _run()(tmp_path, raw)
    (tmp_path / "exp.yaml").write_text("# to do\n", encoding="utf-8")
    return args


def _glue_folder(tmp_path: Path, raw: dict) -> list[str]:
    (tmp_path / "glue").mkdir()
    return _run("data.task=rte", "data.dir=glue")(tmp_path, raw)


def _out_in_locked(tmp_path: Path, raw: dict) -> list[str]:
    (tmp_path / "locked").mkdir()
    return ["run", str(_config(tmp_path, raw)), "--out", "locked/run", "--quiet"]


SUMMARY = HEADLINE | {"name": "tiny", "task": "csv", "policy": "fedavg", "aggregator": "fedavg"}
METRICS = "step,round,virtual_time_s,wall_time_s,accuracy,loss\n1,1,1.0,0.1,0.5,0.69\n"


def _report(summary: str = json.dumps(SUMMARY), metrics: str = METRICS, events: str = "") -> Build:
    """``fedlora report`` on a run folder holding these summary.json, metrics.csv and
    events.jsonl."""

    def build(tmp_path: Path, raw: dict) -> list[str]:
        run = tmp_path / "run"
        run.mkdir()
        for name, text in (("summary.json", summary), ("metrics.csv", metrics),
                           ("events.jsonl", events)):  # fmt: skip
            (run / name).write_text(text, encoding="utf-8")
        return ["report", "run", "--out", "out"]

    return build


# Six levels of ten: a million values from six short lines (a "billion laughs" goes on to 10^9).
ALIAS_BOMB = "".join(
    f"x{level}: &x{level} [{', '.join([f'*x{level - 1}' if level else 'lol'] * 10)}]\n"
    for level in range(6)
)

HEADER = b"first,second,label\n"
CASES = [
    Case(
        "too few training examples for the clients (`--set data.max_train_examples=5`)",
        "clients.num: 4 clients with at least 4 examples each (data.partition.min_size) need 16"
        " training examples",
        _run("data.max_train_examples=5"),
    ),
    Case(
        "a train file with a header and no rows",
        "0 distinct label(s) in column 'label' (no rows); a classifier needs at least two",
        _with_file("train", HEADER),
    ),
    Case(
        "too few examples, in `fedlora partition`",
        "clients.num: 40 clients with at least 4 examples each",
        _partition,
    ),
    Case(
        "too few examples in one cell of a study (every cell is checked before the first runs)",
        "many/seed0: clients.num: 40 clients with at least 4 examples each",
        _study,
    ),
    Case(
        "a Dirichlet partition that no draw can give every client `min_size` examples",
        "data.partition.min_size: no Dirichlet draw in 100 gave all 20 clients (clients.num)"
        " at least 4 of 120 examples with data.partition.alpha=0.01",
        _run("clients.num=20", "data.partition.alpha=0.01"),
    ),
    Case(
        "an empty dev split",
        "the 'dev' split has no examples",
        _with_file("dev", HEADER),
    ),
    Case(
        "a model path that does not exist (`--set model.name=/no/such/model`)",
        "model.name: '/no/such/model': no such model folder",
        _run("model.name=/no/such/model"),
    ),
    Case(
        "`lora.target_modules` naming no module of the model",
        "lora.target_modules: 'qproj' matches no module of model all-MiniLM-L6-v2;"
        " the layers LoRA can adapt are named classifier, dense, key,",
        _run("lora.target_modules=[query, qproj]"),
    ),
    Case(
        "`data.max_length` above the model's positions",
        "data.max_length: 1024 tokens, but model all-MiniLM-L6-v2 has 512 positions",
        _run("data.max_length=1024"),
    ),
    Case("`--out` naming a file", "is a file, not a folder", _out_is_a_file),
    Case(
        "a bad `--set` value (`--set server.rounds=-1`)",
        "--set server.rounds=-1: server.rounds: Input should be greater than or equal to 1",
        _run("server.rounds=-1"),
    ),
    Case(
        "more clients per round than clients (in the YAML file)",
        "exp.yaml:1: server.per_round: 9 clients per round but clients.num is 4",
        _run(head="server: {per_round: 9, rounds: 1}\n"),
    ),
    Case(
        "more clients training at once than clients (`--set`)",
        "--set server.concurrency=5: server.concurrency: 5 clients training at once but"
        " clients.num is 4",
        _run("server.policy=fedfa", "server.concurrency=5"),
    ),
    Case(
        "a global rank below a client's rank",
        "exp.yaml:1: server.global_rank: 2 is below the largest client rank 4",
        _run(head="server: {per_round: 3, rounds: 1, global_rank: 2}\n"),
    ),
    Case(
        "an option the aggregator does not have",
        "server.aggregator_options.foo: Extra inputs are not permitted (aggregator fedavg)",
        _run("server.aggregator_options={foo: 1}"),
    ),
    Case(
        "clients of mixed ranks under a same-rank aggregator",
        "server.aggregator: fedavg merges same-rank LoRA only, client ranks are [2, 4]",
        _run("clients.ranks=[2, 2, 4, 4]"),
    ),
    Case(
        "a typo in a key",
        "exp.yaml:1: sever: unknown key 'sever'; did you mean 'server'?",
        _run(head="sever: {rounds: 1}\n"),
    ),
    Case(
        "`true` where a number is meant",
        "exp.yaml:1: seed: Input should be a valid integer, got True",
        _run(head="seed: true\n"),
    ),
    Case(
        'text where a number is meant (`rounds: "3"`)',
        "exp.yaml:2: server.rounds: Input should be a valid integer, got '3'",
        _run(head="server:\n  rounds: '3'\n  per_round: 2\n"),
    ),
    Case(
        "a key given twice",
        "exp.yaml:2: duplicate key 'seed' (first given on line 1)",
        _run(head="seed: 0\nseed: 1\n"),
    ),
    Case(
        "an infinite number (`--set lora.alpha=.inf`)",
        "--set lora.alpha=.inf: lora.alpha: Input should be a finite number",
        _run("lora.alpha=.inf"),
    ),
    Case(
        "a target metric the task does not report",
        "eval.target.metric: 'bleu' is not reported for task 'csv'",
        _run("eval.target.metric=bleu"),
    ),
    Case(
        "a GLUE train file with one class",
        "1 distinct label(s) in column 'label' ('entailment'); a classifier needs at least two",
        _glue_with_one_class,
    ),
    Case(
        "a data file that is not UTF-8",
        "train.csv:3: not UTF-8 text (invalid start byte)",
        _with_file("train", HEADER + b"a b,c d,same\n\xff\xfe,c,same\n"),
    ),
    Case(
        "a data folder that does not exist",
        "data.dir: folder 'no-such-folder' does not exist",
        _run("data.task=rte", "data.dir=no-such-folder"),
    ),
    Case(
        "`data.dir` naming a file",
        "data.dir: 'train.csv' is a file; give the folder that holds the data",
        _run("data.task=rte", "data.dir=train.csv"),
    ),
    Case(
        "a data folder without permission to read it",
        "data.dir: 'glue' cannot be read (permission denied)",
        _glue_folder,
        denied="glue",
    ),
    Case(
        "a data file without permission to read it",
        "data.files.train: train.csv cannot be read (permission denied)",
        _run("data.dir=.", "data.files={train: train.csv, dev: dev.csv}"),
        denied="train.csv",
    ),
    Case(
        "`--out` inside a folder without permission to write",
        "--out: cannot write in locked (permission denied)",
        _out_in_locked,
        denied="locked",
    ),
    Case(
        "a learning rate no optimizer can take (`--set train.lr=1.0e+300`)",
        "--set train.lr=1.0e+300: train.lr: Input should be less than or equal to 1",
        _run("train.lr=1.0e+300"),
    ),
    Case(
        "a LoRA rank above the adapted layers' size (`--set lora.r=50000000`)",
        "lora.r: rank 50000000, but layer bert.encoder.layer.0.attention.self.query of model"
        " all-MiniLM-L6-v2 allows at most 32 (the smaller of its input and output sizes)",
        _run("lora.r=50000000"),
    ),
    Case(
        "more torch threads than cores (`--set runtime.threads=100000`)",
        "runtime.threads: 100000 torch threads, but this machine gives the run",
        _run("runtime.threads=100000"),
    ),
    Case(
        'a YAML alias bomb ("billion laughs")',
        "exp.yaml:5: x4: more than 100,000 values once its YAML aliases (*name) are expanded;"
        " no config is that large",
        _run(head=ALIAS_BOMB),
    ),
    Case(
        "an empty config file",
        "exp.yaml: the file is empty; write the keys that differ from the defaults",
        _empty_config,
    ),
    Case(
        "a name that is not a plain folder name (`name: ../../escaped`)",
        "exp.yaml:1: name: '../../escaped' is not a plain folder name",
        _run(head="name: ../../escaped\n"),
    ),
    Case(
        'JSONL labels that mix numbers and text (`1` and `"x"`)',
        "train.jsonl:2: label 'x' in column 'label' is text, but line 1 gives a number (1)",
        _jsonl_labels(1, "x", 0),
    ),
    Case(
        "a FedFa window the run's jobs can never fill",
        "--set server.window=7: server.window: fedfa first merges once 7 results are in, but"
        " the run ends after server.rounds × server.concurrency = 3 × 2 = 6 finished jobs",
        _run("server.policy=fedfa", "server.concurrency=2", "server.window=7"),
    ),
    Case(
        "a FedBuff buffer the run's jobs can never fill",
        "server.window: fedbuff first merges once 7 results are in",
        _run("server.policy=fedbuff", "server.concurrency=2", "server.window=7"),
    ),
    Case(
        "a key the chosen policy never reads (`--set server.mixing=0.3` under `fedfa`)",
        "--set server.mixing=0.3: server.mixing: policy fedfa does not read it (read by fedasync)",
        _run("server.policy=fedfa", "server.mixing=0.3"),
    ),
    Case(
        "greedy answers asked of a classifier (`--set eval.generate={prompts: [hello]}`)",
        "eval.generate: needs an instruction task (data.task: instruct), but task 'csv' trains"
        " a classifier",
        _run("eval.generate={prompts: [hello]}"),
    ),
    Case(
        "a partition by response perplexity for a classifier",
        "data.partition.by: 'perplexity' is a response's perplexity under the base causal LM, a"
        " score of instruction rows (data.task: instruct); task 'csv' trains a classifier",
        _run("data.partition={method: sorted, by: perplexity}"),
    ),
    Case(
        "`fedlora report` on a summary.json cut short",
        "run/summary.json: line 1: not valid JSON (Expecting ':' delimiter); the run folder is"
        " damaged",
        _report(summary=json.dumps(SUMMARY)[:40]),
    ),
    Case(
        "`fedlora report` on a metrics.csv with a field that is no number",
        "run/metrics.csv: could not convert string to float: 'x'; the run folder is damaged",
        _report(metrics=METRICS + "2,2,x,0.2,0.5,0.69\n"),
    ),
    Case(
        "`fedlora report` on an events.jsonl whose last line was cut short",
        "run/events.jsonl: a line that is not JSON (Unterminated string starting at); the run"
        " folder is damaged",
        _report(events='{"type": "dispatch", "t": 0.0}\n{"type": "mer'),
    ),
]


def _deny(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """``os.access`` says no for ``path``, as it would to a user without permission."""
    real = os.access

    def access(where: object, mode: int, **options: object) -> bool:
        return Path(str(where)).resolve() != path.resolve() and real(where, mode, **options)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("case", CASES, ids=[case.input for case in CASES])
def test_bad_input_is_a_message(
    tmp_path: Path, tiny_config: dict, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if case.denied is not None:
        _deny(monkeypatch, tmp_path / case.denied)
    result = CliRunner().invoke(app, case.build(tmp_path, tiny_config))
    assert isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert case.message in result.output
    out = tmp_path / "out"
    assert not out.is_dir() or not any(out.iterdir()), "nothing may be written"


def test_readme_lists_every_case() -> None:
    text = README.read_text(encoding="utf-8")
    for case in CASES:
        assert f"| {case.input} | `{case.message}` |" in text, case.input


def test_a_failed_check_leaves_an_overwritable_folder_alone(
    tmp_path: Path, tiny_config: dict
) -> None:
    args = _run("data.task=rte", "data.dir=no-such-folder")(tmp_path, tiny_config)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.txt").write_text("x\n", encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and "data.dir: folder" in result.output
    assert (tmp_path / "out" / "thesis.txt").read_text(encoding="utf-8") == "x\n"


@pytest.mark.slow
def test_exponent_floats_are_numbers(
    tmp_path: Path, tiny_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lr: 1e-2`` as ML configs write it (YAML 1.1 reads it as text): the run takes it."""
    monkeypatch.chdir(tmp_path)
    head = "train: {local_steps: 2, batch_size: 8, lr: 1e-2}\nserver: {per_round: 3, rounds: 1}\n"
    result = CliRunner().invoke(app, _run(head=head)(tmp_path, tiny_config))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text(encoding="utf-8"))
    assert config["train"]["lr"] == 0.01


@pytest.mark.slow
def test_a_cache_folder_without_permission_costs_only_time(
    tmp_path: Path, tiny_config: dict
) -> None:
    """The tokenized-data cache only saves time: a cache folder the run may neither read nor
    write is warned about, and the run finishes. The run is a process that really lacks the
    permission: as root (whom the OS lets read anything) it drops that power with setpriv."""
    command = [sys.executable, "-m", "fedlora", *_run()(tmp_path, tiny_config)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: nothing can deny root a folder")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *command]
    cache = Path(tiny_config["data"]["cache_dir"])
    cache.mkdir()
    cache.chmod(0)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    finally:
        cache.chmod(0o755)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot write cache file {cache}" in result.stderr
    assert (tmp_path / "out" / "summary.json").is_file()
