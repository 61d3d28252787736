"""The sweep: every cell validated up front, finished cells skipped, a table at the end."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fakes import deterministic
from summaries import ROW, a_summary, local, reaching, spread
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.config import ConfigError
from fedlora.results.events import read_events
from fedlora.results.run_summary import RunSummary
from fedlora.studies import processes
from fedlora.studies.figures import local_bars
from fedlora.studies.sweep import Cell, load_study, plan

runner = CliRunner()


def write_study(tmp_path: Path, tiny_config: dict, arms: dict) -> Path:
    tiny_config["server"]["rounds"] = 2
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config))
    study = {"name": "mini", "base": "base.yaml", "seeds": [0, 1], "arms": arms}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_plan_orders_seeds_outermost_and_names_bad_arms(tmp_path: Path, tiny_config: dict) -> None:
    path = write_study(
        tmp_path,
        tiny_config,
        {"avg": {}, "pad": {"server.aggregator": "zeropad", "clients.ranks": [2, 2, 4, 4]}},
    )
    cells = plan(load_study(path), tmp_path / "out")
    assert [(c.arm, c.seed) for c in cells] == [("avg", 0), ("pad", 0), ("avg", 1), ("pad", 1)]
    assert cells[1].config.clients.ranks == [2, 2, 4, 4] and cells[1].config.seed == 0
    assert cells[3].folder == tmp_path / "out" / "csv" / "pad" / "seed1"
    bad = write_study(tmp_path, tiny_config, {"ok": {}, "typo": {"server.aggregatr": "hlora"}})
    with pytest.raises(
        ConfigError,
        match=r"arm 'typo', seed 0: .*\n  --set server.aggregatr=hlora: server\.aggregatr: unknown",
    ):
        plan(load_study(bad), tmp_path / "out")


@pytest.mark.slow
def test_sweep_runs_skips_finished_cells_and_writes_the_table(
    tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}, "hl": {"server.aggregator": "hlora"}})
    out, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["study", str(path), "--out", str(out), "--docs", str(docs), "--seeds", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "csv" / "hl" / "seed0" / "summary.json").is_file()
    assert not (out / "csv" / "hl" / "seed1").exists()  # --seeds 0 only
    table = (docs / "table.md").read_text()
    assert "| avg | 1 |" in table and "| hl | 1 |" in table and "### CSV" in table
    assert "| virtual s to target |" in table and "speedup" not in table
    assert (docs / "accuracy.png").stat().st_size > 10_000
    assert table.startswith("Not the committed study: run with --seeds 0.\n\n2 of the study's 4")

    only = runner.invoke(app, [*args[:6], "--table-only"])  # every cell, none run
    assert only.exit_code == 0, only.output
    assert "running" not in only.output and not (out / "csv" / "hl" / "seed1").exists()
    assert (docs / "table.md").read_text().startswith("2 of the study's 4 cells finished")

    (out / "csv" / "avg" / "seed1.partial").mkdir(parents=True)  # an interrupted cell
    result = runner.invoke(
        app, ["study", str(path), "--out", str(out), "--docs", str(docs), "--arms", "avg"]
    )
    assert result.exit_code == 0, result.output
    assert "done already: " in result.output and "running: " in result.output
    assert (out / "csv" / "avg" / "seed1" / "summary.json").is_file()
    assert not (out / "csv" / "avg" / "seed1.partial").exists()
    table = (docs / "table.md").read_text()
    assert "| avg | 2 |" in table  # mean ± sd over both seeds
    assert "| hl | 1 |" in table  # the table covers every finished cell, not just those run
    plan_rte = runner.invoke(
        app, ["study", str(path), "--out", str(out), "--plan", "--tasks", "rte"]
    )
    assert plan_rte.exit_code == 0 and plan_rte.output == ""  # this study's task is csv


@pytest.mark.slow
def test_a_changed_config_runs_again(tmp_path: Path, tiny_config: dict) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}})
    out = tmp_path / "runs"
    args = ["study", str(path), "--out", str(out), "--docs", str(tmp_path / "d"), "--seeds", "0"]
    assert runner.invoke(app, args).exit_code == 0
    assert "done already" in runner.invoke(app, args).output
    result = runner.invoke(app, [*args, "--set", "train.lr=0.02"])
    assert "running: " in result.output and "done already" not in result.output


@pytest.mark.slow
def test_a_key_added_with_its_default_keeps_a_finished_cell(
    tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}})
    out = tmp_path / "runs"
    args = ["study", str(path), "--out", str(out), "--docs", str(tmp_path / "d"), "--seeds", "0"]
    args += ["--set", "eval.local_share=0.25"]
    assert runner.invoke(app, args).exit_code == 0
    assert "| local acc, own split |" in (tmp_path / "d" / "table.md").read_text()
    assert (tmp_path / "d" / "local.png").stat().st_size > 0
    stored = out / "csv" / "avg" / "seed0" / "config.yaml"
    raw = yaml.safe_load(stored.read_text())
    del raw["train"]["weight_decay"]  # as written before the key existed: its default applies
    stored.write_text(yaml.safe_dump(raw))
    assert "done already" in runner.invoke(app, args).output
    # runtime settings (threads) change how fast a cell runs, not its experiment
    assert "done already" in runner.invoke(app, [*args, "--set", "runtime.threads=1"]).output


@pytest.mark.slow
def test_a_plan_given_no_data_folder_keeps_the_cells_run_with_one(
    tmp_path: Path, tiny_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing a study or writing its table needs no data: without data.dir or $FEDLORA_DATA
    a cell run with a data folder is still done; given another folder, it runs again."""
    path = write_study(tmp_path, tiny_config, {"avg": {}})
    out = tmp_path / "runs"
    args = ["study", str(path), "--out", str(out), "--docs", str(tmp_path / "d"), "--seeds", "0"]
    assert runner.invoke(app, args).exit_code == 0
    stored = out / "csv" / "avg" / "seed0" / "config.yaml"
    raw = yaml.safe_load(stored.read_text())
    (tmp_path / "glue").mkdir()
    raw["data"]["dir"] = str(tmp_path / "glue")  # as a cell run with $FEDLORA_DATA stores it
    stored.write_text(yaml.safe_dump(raw))
    shutil.rmtree(tmp_path / "d")  # the run folder alone: its kept copy counts on any folder
    monkeypatch.delenv("FEDLORA_DATA", raising=False)
    listed = runner.invoke(app, [*args, "--plan"])
    assert listed.exit_code == 0 and listed.output.startswith("done"), listed.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("FEDLORA_DATA", str(tmp_path / "elsewhere"))
    assert runner.invoke(app, [*args, "--plan"]).output.startswith("todo")


@pytest.mark.slow
def test_settings_are_an_axis_and_speedups_pair_seeds(tmp_path: Path, tiny_config: dict) -> None:
    path = write_study(
        tmp_path,
        tiny_config,
        {"sync": {}, "fa": {"server.policy": "fedfa", "server.concurrency": 4}},
    )
    study = yaml.safe_load(path.read_text())
    study |= {
        "settings": {
            "iid": {"data.partition.method": "iid"},
            "skew": {"data.partition.alpha": 0.3},
        },
        "baselines": ["sync"],
        "contrasts": [["sync", "fa"]],
    }
    study["arms"] = {"sync": study["arms"]["sync"], "fa": study["arms"]["fa"]}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    cells = plan(load_study(path), tmp_path / "out")
    assert [(c.setting, c.arm) for c in cells[:4]] == [
        ("iid", "sync"), ("iid", "fa"), ("skew", "sync"), ("skew", "fa"),
    ]  # fmt: skip
    assert cells[1].folder == tmp_path / "out" / "csv" / "iid" / "fa" / "seed0"
    assert cells[1].config.name == "mini-iid-fa" and cells[2].config.data.partition.alpha == 0.3
    docs = tmp_path / "docs"
    args = ["study", str(path), "--out", str(tmp_path / "out"), "--docs", str(docs)]
    result = runner.invoke(app, [*args, "--seeds", "0", "--set", "eval.target.value=0.0"])
    assert result.exit_code == 0, result.output
    table = (docs / "table.md").read_text()
    assert "### CSV, iid" in table and "### CSV, skew" in table
    # target 0 is first crossed at the start, time 0: no ratio to take, so no speedup column;
    # the running mean of 3 evaluations crosses later, so that one has its speedup; no loss
    # target and no local test splits either
    assert "| rounds to target |" in table and "| speedup vs sync |" not in table
    assert "| s to smoothed target |" in table and "| speedup vs sync (smoothed) |" in table
    assert "loss target" not in table and "(loss)" not in table
    assert "local acc" not in table
    # paired against the baseline on the same seed's predictions: the baseline's own row is "—"
    assert "| Δ acc vs sync [95% CI] | Δ loss vs sync [95% CI] |" in table
    rows = [line for line in table.splitlines() if line.startswith(("| sync", "| fa"))]
    sync_row, fa_row = rows[:2]
    assert sync_row.endswith("| — | — | — | — | — |") and fa_row.count("[") == 5
    assert (
        "| Δ acc short vs sync [95% CI] |" in table and "| Δ acc long vs sync [95% CI] |" in table
    )
    assert "| update spread |" in table and "Δ local acc" not in table

    # the contrast is the baseline comparison turned round: the same interval, negated (one
    # seed: no star, the seed's own difference beside it)
    def interval(cell: str) -> list[float]:
        shown = cell.split(" (seeds")[0]
        return [float(x) for x in shown.translate(str.maketrans("", "", "[],*|")).split()]

    contrast = next(line for line in table.splitlines() if line.startswith("| sync | fa | 0 |"))
    fa_acc, fa_loss = fa_row.split(" | ")[-5:-3]
    for against_sync, cell in zip((fa_acc, fa_loss), contrast.split(" | ")[3:5], strict=True):
        estimate, low, high = interval(against_sync)
        assert interval(cell) == pytest.approx([-estimate, -high, -low], abs=1e-9)

    for key, value in (("baselines", ["nope"]), ("contrasts", [["fa", "nope"]])):
        path.write_text(yaml.safe_dump({**study, key: value}))
        with pytest.raises(ConfigError, match=f"{key}: nope not among the arms"):
            load_study(path)


def _summary(reached_at: float | None, length: float = 60.0) -> RunSummary:
    return reaching(reached_at, virtual_time_s=length)


def test_a_run_that_never_reached_the_target_bounds_the_speedup_by_its_length() -> None:
    """A straggler can keep FedAvg from the target for the whole run: the arm that reached it
    at 15 s of a 60 s run is at least 4x sooner, not "no speedup"."""
    from fedlora.studies.table import _speedups

    exact = [(_summary(60.0), _summary(30.0)), (_summary(40.0), _summary(10.0))]
    assert _speedups(exact, None) == "2.83× ×/÷ 1.63"  # √(2·4), on the log scale
    assert _speedups(
        [(_summary(20.0), _summary(10.0)), (_summary(10.0), _summary(20.0))], None
    ) == (
        "1.00× ×/÷ 2.67"  # 2× and 0.5×: no speedup
    )
    neither = [*exact, (_summary(None, 60.0), _summary(None, 60.0))]
    assert _speedups(neither, None) == "2.83× ×/÷ 1.63 (1 neither)"
    assert _speedups([*neither, (_summary(None), _summary(15.0))], None) == (
        "2.00×, 4.00×, neither, ≥4.00×"
    )
    assert _speedups([(_summary(None), _summary(15.0))], None) == "≥4.00×"
    assert _speedups([(_summary(30.0), _summary(None, 50.0))], None) == "≤0.60×"
    mixed = [(_summary(30.0), _summary(15.0)), (_summary(None), _summary(20.0))]
    assert _speedups(mixed, None) == "2.00×, ≥3.00×"
    assert _speedups([(_summary(None), _summary(None))], None) == "— (1 neither)"
    assert _speedups([(_summary(5.0), _summary(0.0))], None) == "—"  # reached at the start


def test_local_bars_leave_out_a_series_no_cell_scored() -> None:
    def run(accuracy: float, own: float, dev: float | None = None) -> RunSummary:
        scores = {"own": spread(own)} | ({} if dev is None else {"dev": spread(dev)})
        return a_summary(final=ROW | {"accuracy": accuracy}, local=local(**scores))

    no_dev = {"iid": [run(0.7, 0.8), run(0.72, 0.81)], "skew": [run(0.6, 0.9), run(0.61, 0.88)]}
    assert local_bars(no_dev) == {
        "global model, dev": [[0.7, 0.72], [0.6, 0.61]],
        "client models, own split": [[0.8, 0.81], [0.9, 0.88]],
    }
    with_dev = {"iid": [run(0.7, 0.8, 0.65), run(0.72, 0.81)]}
    assert len(local_bars(with_dev)) == 3


@pytest.mark.slow
def test_jobs_run_cells_in_processes_as_one_process_would(
    tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}, "hl": {"server.aggregator": "hlora"}})
    args = ["study", str(path), "--seeds", "1"]  # each its own docs: a kept cell is not rerun
    alone = runner.invoke(
        app, [*args, "--out", str(tmp_path / "alone"), "--docs", str(tmp_path / "d1")]
    )
    assert alone.exit_code == 0, alone.output
    parallel = runner.invoke(
        app,
        [*args, "--out", str(tmp_path / "parallel"), "--docs", str(tmp_path / "d"), "--jobs", "2"],
    )
    assert parallel.exit_code == 0, parallel.output
    assert parallel.output.count("finished: ") == 2
    for cell in ["avg/seed1", "hl/seed1"]:
        one, two = (tmp_path / run / "csv" / cell / "events.jsonl" for run in ("alone", "parallel"))
        assert deterministic(read_events(two)) == deterministic(read_events(one))
    assert "| avg | 1 |" in (tmp_path / "d" / "table.md").read_text()


def _fake_cells(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: dict, scripts: dict[str, str]
) -> list[Cell]:
    """The study's cells, each "run" by a short Python script per arm instead of fedlora."""

    def launch(cell: Cell, partial: Path, resume: bool, scratch: Path) -> subprocess.Popen:
        partial.mkdir(parents=True)
        return subprocess.Popen([sys.executable, "-c", scripts[cell.arm], str(partial / "up")])

    monkeypatch.setattr(processes, "_launch", launch)
    return plan(
        load_study(write_study(tmp_path, tiny_config, {arm: {} for arm in scripts})), tmp_path
    )


@pytest.mark.slow
def test_a_failing_cell_is_named_and_nothing_new_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: dict
) -> None:
    scripts = {"ok": "import time; time.sleep(2)", "bad": "raise SystemExit(3)"}
    cells = _fake_cells(monkeypatch, tmp_path, tiny_config, scripts)  # bad/0, ok/0, bad/1, ok/1
    with pytest.raises(processes.CellsFailed, match=r"1 cells failed.*bad/seed0 \(exit 3\)"):
        processes.run_sweep_in_processes(cells, 2, lambda c, s: None, lambda: False, 0.05)
    assert cells[1].folder.is_dir()  # the running one finished and moved into place
    assert not any(c.folder.with_name(c.folder.name + ".partial").exists() for c in cells[2:])


@pytest.mark.slow
def test_a_stop_request_reaches_every_running_cell_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: dict
) -> None:
    stops_at_sigint = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)"
    )
    scripts = {"a": stops_at_sigint, "b": stops_at_sigint}
    cells = _fake_cells(monkeypatch, tmp_path, tiny_config, scripts)  # a/0, b/0, a/1, b/1
    partials = [c.folder.with_name(c.folder.name + ".partial") for c in cells]
    started = time.monotonic()
    with pytest.raises(processes.CellsInterrupted):
        processes.run_sweep_in_processes(
            cells,
            2,
            lambda c, s: None,
            lambda: all((p / "up").exists() for p in partials[:2]),
            0.05,
        )
    assert time.monotonic() - started < 30  # the sleeping cells stopped on their signal
    assert partials[0].is_dir() and partials[1].is_dir()  # left for the next study to resume
    assert not partials[2].exists() and not partials[3].exists()  # nothing new started


@pytest.mark.slow
def test_runtime_overrides_keep_the_study_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_config: dict
) -> None:
    path = write_study(tmp_path, tiny_config, {"avg": {}})
    monkeypatch.chdir(tmp_path)
    args = ["study", str(path), "--seeds", "0", "--set", "runtime.threads=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = tmp_path / "results" / "studies"
    assert [p.name for p in root.iterdir()] == ["mini"]  # no folder of its own
    table = (root / "mini" / "report" / "table.md").read_text()
    assert table.startswith("Not the committed study: run with --seeds 0.\n")  # no --set named
    changed = runner.invoke(app, [*args, "--set", "train.lr=0.02", "--plan"])
    assert "results/studies/mini-set-" in changed.output  # an experiment override still moves
