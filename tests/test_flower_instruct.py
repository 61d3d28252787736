"""The instruction task (a causal LM, response-only loss) on the Flower runtime over an
in-process Grid: the run folder reports what the simulator's reports for the same config."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from fakes import assert_same_global, merged_jobs, run_cli, wall_clock
from flwr.app import Context, Message
from instruct_data import instruct_config, write_questions
from local_grid import ClientCall, LocalGrid

from fedlora.config import ExperimentConfig, build_config
from fedlora.flower.client_app import EXPERIMENT
from fedlora.flower.client_app import app as client_app
from fedlora.flower.server_app import run_federation
from fedlora.results.predictions import read_predictions


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_fedavg_of_an_instruction_task_over_flower_reports_what_the_simulator_reports(
    tmp_path: Path,
) -> None:
    """Same jobs, batches and seeds under FedAvg: the same merges, global adapter, response
    loss metrics, per-evaluation predictions and readouts as the in-process simulator."""
    raw = wall_clock(instruct_config(tmp_path))
    raw["data"] |= {"max_length": 32, "max_eval_examples": 12}
    raw["eval"] |= {
        "choices": {"file": str(write_questions(tmp_path / "mc.jsonl", 4))},
        "generate": {"prompts": ["red cat"], "max_new_tokens": 3},
    }
    config = build_config(raw)
    sent: list[ExperimentConfig] = []  # the experiment as each node is sent it

    def node(message: Message, context: Context) -> Message | None:
        if message.metadata.message_type == "train":
            record = message.content.config_records[EXPERIMENT]
            sent.append(ExperimentConfig.model_validate_json(str(record["config"])))
        return client_app(message, context)

    calls: dict[int, ClientCall] = {k: node for k in range(config.clients.num)}
    flower, sim = tmp_path / "flower", tmp_path / "sim"
    summary = run_federation(LocalGrid(calls), config, flower, wait_s=1.0)
    run_cli(tmp_path, raw, sim)
    expected = json.loads((sim / "summary.json").read_text())

    assert summary.rounds == 3 and summary.jobs_lost == summary.updates_rejected == 0
    assert merged_jobs(flower) == merged_jobs(sim) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert_same_global(flower, sim)
    # response loss overall, per category and per context length, as the simulator scores it
    clock = {"wall_time_s", "virtual_time_s"}  # wall seconds under Flower
    written = summary.written()  # as summary.json lays it out, to compare with the simulator's
    final = {k: v for k, v in written["final"].items() if k not in clock}
    theirs = {k: v for k, v in expected["final"].items() if k not in clock}
    assert final.keys() == theirs.keys()
    assert {"loss", "perplexity"} <= final.keys()
    assert {k for k in final if k.startswith("category.")} == {
        f"category.{c}.loss" for c in expected["labels"]
    }
    assert {k for k in final if k.startswith("length.")} == {
        "length.short.loss", "length.middle.loss", "length.long.loss",
    }  # fmt: skip
    floats = [k for k, v in theirs.items() if isinstance(v, float)]
    assert [final[k] for k in floats] == pytest.approx([theirs[k] for k in floats], rel=1e-4)
    assert final["perplexity"] == pytest.approx(math.exp(final["loss"]), rel=1e-12)
    # every evaluation's predictions, named by its step, scoring what metrics.csv says
    ours_rows, their_rows = metrics_rows(flower), metrics_rows(sim)
    assert [r["step"] for r in ours_rows] == [r["step"] for r in their_rows]
    files = sorted(p.name for p in (flower / "predictions").iterdir())
    assert files == sorted(p.name for p in (sim / "predictions").iterdir())
    assert files == [f"step_{int(r['step']):06d}.csv" for r in ours_rows]
    for row, name in zip(ours_rows, files, strict=True):
        predictions = read_predictions(flower / "predictions" / name)
        assert not predictions.classified
        assert predictions.loss() == pytest.approx(float(row["loss"]), rel=1e-12)
        assert predictions.loss() == pytest.approx(
            read_predictions(sim / "predictions" / name).loss(), rel=1e-4
        )
    assert (flower / "predictions.csv").read_text() == (
        flower / "predictions" / files[-1]
    ).read_text()
    # the base model and the final global read on the server, as the simulator reads them
    assert {p.name for p in flower.iterdir()} == {p.name for p in sim.iterdir()}
    assert written["choices"]["start"] == expected["choices"]["start"]
    assert written["choices"]["final"]["mc_accuracy"] == pytest.approx(
        expected["choices"]["final"]["mc_accuracy"]
    )
    assert "## red cat" in (flower / "generations.md").read_text()
    # which the nodes are not asked to do: they need no questions file and build no reader
    assert len(sent) == 9
    assert all(c.eval.choices is None and c.eval.generate is None for c in sent)
