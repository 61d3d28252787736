"""summary.json as a typed RunSummary: the file's layout unchanged, every committed one read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import FakeLearner, config, simulate
from summaries import HEADLINE, ROW, a_summary

from fedlora.data.tasks import generic_task
from fedlora.results.errors import RunFolderError
from fedlora.results.store import SUMMARY_FILE, read_summary, strict_json, write_run
from fedlora.results.summary import summarize

COMMITTED = sorted((Path(__file__).parents[1] / "docs" / "results").rglob(SUMMARY_FILE))


def _as_written(summary: dict) -> str:
    return json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(p.parents[4])))
def test_every_committed_summary_reads_and_writes_back_byte_for_byte(path: Path) -> None:
    summary = read_summary(path.parent)
    assert _as_written(summary.written()) == path.read_text(encoding="utf-8")


def test_committed_summaries_are_there_to_read() -> None:
    assert len(COMMITTED) >= 20


def test_what_write_run_returns_is_what_read_summary_reads(tmp_path: Path) -> None:
    cfg = config(
        server={"per_round": 2, "rounds": 4},
        eval={"target": {"metric": "accuracy", "value": 100.0, "max_loss": 0.5}},
    )
    outcome, _ = simulate(cfg, FakeLearner([5] * 4, local=True))
    summary = summarize(cfg, outcome, generic_task("t", ("a", "b"), pair=True), None, [3] * 4)
    returned = write_run(tmp_path, outcome, summary)
    assert returned == read_summary(tmp_path) and returned.written() == summary.written()
    assert returned.local is not None and returned.local.examples is not None
    target = returned.target
    assert target is not None and target.max_loss == 0.5 and target.first.at is None
    assert target.on_loss is not None and target.on_loss.at is not None  # the fake's loss: 0
    written = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert written["target"]["reached"] is False and "step" not in written["target"]
    assert written["final"]["accuracy"] == summary.final.metrics["accuracy"]


def test_a_wall_clock_summary_has_no_virtual_time_key_and_reads_none(tmp_path: Path) -> None:
    cfg = config(server={"per_round": 2, "rounds": 2})
    outcome, _ = simulate(cfg, FakeLearner([5] * 4))
    summary = summarize(cfg, outcome, generic_task("t", ("a", "b"), pair=True), clock="wall")
    write_run(tmp_path, outcome, summary, clock="wall")
    written = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert "virtual_time_s" not in written and "virtual_time_s" not in written["final"]
    read = read_summary(tmp_path)
    assert (
        read.clock == "wall" and read.virtual_time_s is None and read.final.virtual_time_s is None
    )


def test_older_and_newer_summaries_read(tmp_path: Path) -> None:
    older = {k: v for k, v in HEADLINE.items() if k != "clock"}  # before clocks were named
    newer = HEADLINE | {"a_section_from_a_later_version": {"x": 1}}
    for name, summary in (("older", older), ("newer", newer)):
        (tmp_path / name).mkdir()
        (tmp_path / name / SUMMARY_FILE).write_text(json.dumps(summary))
        read = read_summary(tmp_path / name)
        assert read.clock == "virtual" and read.local is None and read.target is None
    assert "clock" not in read_summary(tmp_path / "older").written()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds": "many"}, "rounds: input should be a valid integer"),
        ({"final": ROW | {"accuracy": "high"}}, "final.accuracy: input should be a valid number"),
        ({"final": {"accuracy": 0.5}}, "final.step: field required"),
        ({"target": {"metric": "accuracy", "value": 0.8}}, "target.reached: field required"),
        ({"staleness": None}, "staleness: input should be a valid dictionary"),
    ],
)
def test_a_damaged_entry_is_refused_naming_the_file_and_its_key(
    tmp_path: Path, change: dict, message: str
) -> None:
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(HEADLINE | change))
    with pytest.raises(RunFolderError) as refused:
        read_summary(tmp_path)
    named, problem = str(refused.value).split(": ", 1)
    assert named == str(tmp_path / SUMMARY_FILE) and problem.startswith(message)


def test_sections_added_later_are_validated_into_the_summary() -> None:
    change = {"mean": -0.1, "low": -0.2, "high": 0.0}
    block = {
        "examples": 5,
        "start": {"loss": 1.0},
        "final": {"loss": 0.9},
        "change": {"loss": change},
    }
    summary = a_summary().with_sections({"from_start": block})
    assert summary.from_start is not None and summary.from_start.change["loss"].low == -0.2
    assert summary.written()["from_start"] == block
