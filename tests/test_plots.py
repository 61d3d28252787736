"""Learning-curve figures: which panels they hold, and the titles that name runs."""

from __future__ import annotations

from pathlib import Path

from summaries import a_summary

from fedlora.results.plots import curve_figure, curve_metrics, plot_curves, run_title

SUMMARY = a_summary(name="try1", policy="fedfa", aggregator="hlora", task="mrpc")


def rows(*metrics: str) -> list[dict[str, float]]:
    return [
        {"step": s, "round": s, "virtual_time_s": 10.0 * s, "wall_time_s": 1.0}
        | {m: 0.5 + 0.01 * s for m in metrics}
        for s in (1, 2, 3)
    ]


def test_loss_comes_last_and_only_metrics_every_run_has_are_plotted() -> None:
    assert curve_metrics({"a": rows("loss", "accuracy", "f1")}) == ["accuracy", "f1", "loss"]
    assert curve_metrics({"a": rows("accuracy", "f1", "loss"), "b": rows("loss", "accuracy")}) == [
        "accuracy",
        "loss",
    ]


def test_run_title_names_the_run_policy_aggregator_and_task() -> None:
    assert run_title(SUMMARY) == "try1: fedfa × hlora on mrpc"


def test_one_column_per_metric_with_the_target_on_its_metric(tmp_path: Path) -> None:
    target = a_summary(target={"metric": "accuracy", "value": 0.52, "reached": False})
    figure = curve_figure({"try1": rows("accuracy", "f1", "loss")}, [target], "the title")
    assert figure.get_suptitle() == "the title"
    assert [ax.get_ylabel() for ax in figure.axes] == ["accuracy", "f1", "loss"] * 2
    for ax in figure.axes:
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        expected = [[0.52, 0.52]] if ax.get_ylabel() == "accuracy" else []
        assert [list(line.get_ydata()) for line in dashed] == expected
    plot_curves({"try1": rows("accuracy", "loss")}, [SUMMARY], tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
