"""Paired differences between arms: exact on hand-made predictions, antisymmetric in the arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.predictions import Predictions
from fedlora.results.predictions import read_predictions, write_predictions
from fedlora.results.run_summary import LocalClient, LocalSummary
from fedlora.studies.paired import (
    PairedDifference,
    compare_by_category,
    compare_local,
    compare_runs,
    holm,
    nested_difference,
    paired_difference,
)


def test_identical_arms_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    seeds = [rng.integers(0, 2, 50).astype(float) for _ in range(3)]
    difference = paired_difference(seeds, seeds)
    assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert not difference.real


def test_a_constant_shift_is_that_shift_with_no_width() -> None:
    rng = np.random.default_rng(1)
    losses = [rng.integers(0, 16, 40) / 8 for _ in range(2)]  # eighths: the shift is exact
    difference = paired_difference(losses, [seed + 0.25 for seed in losses])
    assert difference.low == difference.estimate == difference.high == 0.25
    assert difference.real


def test_a_noisy_gain_is_real_and_a_coin_flip_is_not() -> None:
    rng = np.random.default_rng(2)
    reference = [rng.integers(0, 2, 400).astype(float) for _ in range(4)]
    better = [np.maximum(r, rng.random(400) < 0.3) for r in reference]  # fixes ~30 % of errors
    assert paired_difference(reference, better).real
    coin = [rng.integers(0, 2, 400).astype(float) for _ in range(4)]
    noise = paired_difference(reference, coin)
    assert noise.low < 0 < noise.high


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(2, 30),
    st.integers(0, 2**32 - 1),
)
def test_swapping_the_arms_negates_the_interval(seeds: int, examples: int, data_seed: int) -> None:
    rng = np.random.default_rng(data_seed)
    a = [rng.normal(size=examples) for _ in range(seeds)]
    b = [rng.normal(size=examples) for _ in range(seeds)]
    forward, backward = (
        paired_difference(a, b, resamples=500),
        paired_difference(b, a, resamples=500),
    )
    assert backward.estimate == pytest.approx(-forward.estimate, abs=1e-12)
    assert backward.low == pytest.approx(-forward.high, abs=1e-12)
    assert backward.high == pytest.approx(-forward.low, abs=1e-12)


def test_mismatched_seeds_or_examples_are_named() -> None:
    with pytest.raises(ValueError, match="2 reference seeds against 1 arm seeds"):
        paired_difference([np.zeros(3), np.zeros(3)], [np.zeros(3)])
    with pytest.raises(ValueError, match="different numbers of examples"):
        paired_difference([np.zeros(3), np.zeros(4)], [np.zeros(3), np.zeros(4)])


def _run(
    folder: Path, logits: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None
) -> Path:
    folder.mkdir()
    predictions = Predictions.from_logits(logits, labels, ids=ids)
    write_predictions(folder / "predictions.csv", predictions)
    return folder


def test_compare_runs_reads_predictions_and_checks_the_examples(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 0])
    wrong = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # every prediction wrong
    right = wrong[:, ::-1]
    reference = _run(tmp_path / "ref", wrong, labels)
    arm = _run(tmp_path / "arm", right, labels)
    round_trip = read_predictions(arm / "predictions.csv")
    assert list(round_trip.predicted) == list(labels)
    differences = compare_runs([reference], [arm])
    assert (differences["accuracy"].low, differences["accuracy"].high) == (1.0, 1.0)
    assert differences["loss"].high < 0
    other = _run(tmp_path / "other", right, 1 - labels)
    with pytest.raises(ValueError, match="other: its eval examples differ"):
        compare_runs([reference], [other])
    shifted = _run(tmp_path / "shifted", right, labels, ids=np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="shifted: its eval examples differ"):
        compare_runs([reference], [shifted])  # the same labels, other examples
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "predictions.csv").write_text("index,label\n0,x\n")
    with pytest.raises(ValueError, match=r"bad/predictions\.csv: not a readable"):
        compare_runs([reference], [tmp_path / "bad"])


def _local(own: list[float], losses: list[float] | None = None) -> LocalSummary:
    clients = {
        str(c): LocalClient(started_from=0, own=o, own_loss=None if losses is None else losses[c])
        for c, o in enumerate(own)
    }
    return LocalSummary(metric="accuracy", evaluations=len(own), global_dev=0.5, clients=clients)


def test_compare_local_pairs_clients_by_id_within_each_seed() -> None:
    reference = [_local([0.5, 0.75], [1.0, 0.5]), _local([0.25, 0.5], [2.0, 1.0])]
    arm = [_local([0.75, 1.0], [0.75, 0.25]), _local([0.5, 0.75], [1.75, 0.75])]
    differences = compare_local(reference, arm)
    assert differences["local"].low == differences["local"].high == 0.25  # every client +0.25
    assert differences["local loss"].estimate == -0.25 and differences["local loss"].real
    without_loss = compare_local([_local([0.5, 0.5])], [_local([0.5, 0.5], [1.0, 1.0])])
    assert set(without_loss) == {"local"} and without_loss["local"].estimate == 0.0


def test_seeds_may_score_different_clients_and_a_loss_metric_is_compared_once() -> None:
    """Clients are nested in seeds: a seed whose partition left a client unscored still
    compares; the estimate is the mean of the seeds' client means."""
    reference = [_local([0.5, 0.5, 0.5]), _local([0.5, 0.5])]
    arm = [_local([0.75, 1.0, 0.5]), _local([0.25, 0.75])]
    local = compare_local(reference, arm)["local"]
    assert local.per_seed == pytest.approx((0.25, 0.0)) and local.estimate == pytest.approx(0.125)
    for summary in (*reference, *arm):
        summary.metric = "loss"  # an instruction task's: "own" is the loss
    assert set(compare_local(reference, arm)) == {"local loss"}


def test_the_nested_bootstrap_covers_a_known_effect_at_its_level() -> None:
    """1,000 simulated studies of 6 seeds, each scoring its own 8–12 clients (nested): client
    differences δ + u_s + e_sc with δ = 0.1, seed effects u_s of variance 0.25 and client
    noise e_sc of variance 1. The 95 % interval must cover δ 93–97 % of the time (measured:
    0.943; 0.939 at 3 seeds, 0.953 at 8; resampling the clients within the seeds as well
    covered 0.971)."""
    rng = np.random.default_rng(2)
    seeds, effect, covered = 6, 0.1, 0
    for study in range(1000):
        shifts = rng.normal(0, 0.5, seeds)
        arm = [effect + u + rng.normal(0, 1, rng.integers(8, 13)) for u in shifts]
        found = nested_difference([np.zeros(len(a)) for a in arm], arm, resamples=1000, seed=study)
        covered += found.low <= effect <= found.high
    assert 0.93 <= covered / 1000 <= 0.97


def test_compare_runs_slices_the_eval_split_by_length_tercile(tmp_path: Path) -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    lengths = np.array([10.0, 20, 30, 40, 50, 60])
    wrong = np.array([[0.0, 1.0], [1.0, 0.0]] * 3)  # every prediction wrong
    right_on_long = wrong.copy()
    right_on_long[4:] = wrong[4:, ::-1]
    for name, logits in (("ref", wrong), ("arm", right_on_long)):
        (tmp_path / name).mkdir()
        predictions = Predictions.from_logits(logits, labels, lengths)
        write_predictions(tmp_path / name / "predictions.csv", predictions)
    differences = compare_runs([tmp_path / "ref"], [tmp_path / "arm"])
    assert differences["accuracy, long"].estimate == 1.0
    assert differences["accuracy, short"].estimate == differences["accuracy, middle"].high == 0
    assert differences["accuracy"].estimate == pytest.approx(1 / 3)


def test_seeds_scoring_their_own_examples_are_compared_nested(tmp_path: Path) -> None:
    """A study that scores a seeded eval subset per seed has its examples nested in the seeds:
    compare_runs then resamples the seeds' differences (nested_difference), and a length
    tercile is compared although it holds a different number of examples in each seed."""
    rng = np.random.default_rng(4)
    folders: dict[str, list[Path]] = {"ref": [], "arm": []}
    values: dict[str, list[np.ndarray]] = {"ref": [], "arm": []}
    for seed, lengths in enumerate((np.arange(10.0, 70, 10), np.array([10.0, 10, 10, 10, 40, 40]))):
        labels = rng.integers(0, 2, 6)
        ids = np.arange(6) + 6 * seed  # each seed its own examples
        for name in folders:
            logits = rng.normal(size=(6, 2))
            folder = tmp_path / f"{name}{seed}"
            folder.mkdir()
            predictions = Predictions.from_logits(logits, labels, lengths, ids=ids)
            write_predictions(folder / "predictions.csv", predictions)
            folders[name].append(folder)
            values[name].append(predictions.correct)
    differences = compare_runs(folders["ref"], folders["arm"])
    assert differences["accuracy"] == nested_difference(values["ref"], values["arm"])
    assert "accuracy, short" in differences  # 2 short examples in seed 0, 4 in seed 1
    assert "accuracy, middle" not in differences  # seed 1 has none


def test_the_loss_is_compared_within_each_category_token_weighted(tmp_path: Path) -> None:
    """An instruction task's rows by category: the arm's loss is higher on closed_qa rows
    only, so only closed_qa moves, by the token-weighted mean of its rows' differences."""
    categories = ("closed_qa", "closed_qa", "open_qa", "open_qa", "summarization")
    tokens = np.array([10, 30, 5, 5, 8])
    folders = []
    for name, extra in (("ref", np.zeros(5)), ("arm", np.array([1.0, 2.0, 0, 0, 0]))):
        losses = np.array([1.0, 2.0, 0.5, 1.5, 3.0]) + extra  # per response token
        predictions = Predictions.from_response_losses(
            losses * tokens, tokens, np.array([0, 0, 1, 1, 2]), categories
        )
        (tmp_path / name).mkdir()
        write_predictions(tmp_path / name / "predictions.csv", predictions)
        folders.append(tmp_path / name)
    differences = compare_by_category([folders[0]], [folders[1]])
    assert set(differences) == {"closed_qa", "open_qa", "summarization"}
    assert differences["closed_qa"].estimate == pytest.approx((10 * 1 + 30 * 2) / 40)
    assert differences["open_qa"].estimate == differences["summarization"].high == 0
    (tmp_path / "classifier").mkdir()
    write_predictions(
        tmp_path / "classifier" / "predictions.csv",
        Predictions.from_logits(np.zeros((2, 2)), np.array([0, 1])),
    )
    classifier = [tmp_path / "classifier"]
    assert compare_by_category(classifier, classifier) == {}  # no categories: no section


@pytest.mark.slow
def test_the_crossed_bootstrap_covers_a_known_effect_at_its_level() -> None:
    """1,000 simulated studies of 8 seeds × 200 shared examples: per-example differences
    δ + u_s + v_i + e_si with δ = 0.1, seed effects u_s of variance 0.25 (a quarter of the
    per-example variance, 1), example effects v_i of variance 0.5 shared by every seed, and
    noise e_si of variance 0.5. The 95 % interval must cover δ 93–97 % of the time (measured:
    0.946; at 3 seeds 0.945; with seed effects of variance 0.04 or none, 0.963 and 0.974)."""
    rng = np.random.default_rng(1)
    seeds, examples, effect, covered = 8, 200, 0.1, 0
    for study in range(1000):
        differences = (
            effect
            + rng.normal(0, 0.5, (seeds, 1))
            + rng.normal(0, np.sqrt(0.5), (1, examples))
            + rng.normal(0, np.sqrt(0.5), (seeds, examples))
        )
        found = paired_difference(
            [np.zeros(examples)] * seeds, list(differences), resamples=1000, seed=study
        )
        covered += found.low <= effect <= found.high
    assert 0.93 <= covered / 1000 <= 0.97


def test_few_seeds_show_each_seeds_difference_instead_of_a_verdict() -> None:
    found = paired_difference([np.zeros(4), np.zeros(4)], [np.ones(4), np.full(4, -0.5)])
    assert found.per_seed == (1.0, -0.5) and found.few_seeds
    assert str(found).endswith("(seeds +1.000, -0.500: 1/2 > 0)")


def test_holm_holds_the_family_wise_rate_step_by_step() -> None:
    """Sorted p-values 0.01, 0.02, 0.04 of three tests face 0.05/3, 0.05/2 and 0.05/1: all
    three hold; raise the smallest above 0.05/3 and none does (the procedure stops at once)."""

    def difference(p: float) -> PairedDifference:
        return PairedDifference(0.1, 0.05, 0.15, p_value=p)

    assert holm([difference(0.04), difference(0.01), difference(0.02)]) == [True, True, True]
    assert holm([difference(0.04), difference(0.02), difference(0.02)]) == [False] * 3
    assert holm([difference(0.5), difference(0.001)]) == [False, True]


def test_the_p_value_is_small_for_a_clear_effect_and_large_for_none() -> None:
    rng = np.random.default_rng(0)
    clear = [rng.normal(0.5, 1, 300) for _ in range(6)]
    none = [rng.normal(0.0, 1, 300) for _ in range(6)]
    zeros = [np.zeros(300)] * 6
    assert paired_difference(zeros, clear).p_value < 0.01
    assert paired_difference(zeros, none).p_value > 0.05
