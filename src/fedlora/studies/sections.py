"""The paired sections of a study's table beside its main one: cells and their Holm verdicts,
contrasts of two arms, the global models at an evaluation step, and the loss by category."""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.results.store import read_metrics
from fedlora.studies.kept import has_predictions, has_step_predictions
from fedlora.studies.paired import (
    FEW_SEEDS,
    PairedDifference,
    compare_at_step,
    compare_by_category,
    compare_choices,
    compare_runs,
    holm,
)
from fedlora.studies.sweep import Cell

Contrast = tuple[str, str, str, PairedDifference | None, PairedDifference]


def contrast_lines(found: Sequence[Contrast], verdicts: dict[int, bool]) -> list[str]:
    """A table of paired contrasts (arm, against, seeds, Δ acc, Δ loss); none: no lines."""
    if not found:
        return []
    return [
        "| arm | against | seeds | Δ acc [95% CI] | Δ loss [95% CI] |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {arm} | {against} | {seeds} | {cell_text(acc, verdicts)}"
            f" | {cell_text(loss, verdicts)} |"
            for arm, against, seeds, acc, loss in found
        ),
        "",
    ]


def at_step(
    arms: dict[str, list[Cell]],
    baselines: Sequence[str],
    contrasts: Sequence[tuple[str, str]],
    step: int,
) -> list[str]:
    """The paired accuracy and loss differences of the global models evaluated at ``step``:
    each arm against each of the ``baselines``, then the ``contrasts`` (arm, reference), where
    both arms kept predictions at that step; Holm over this section's intervals."""
    pairs = [(arm, b) for b in baselines for arm in arms if arm != b]
    found = find_contrasts(arms, [*pairs, *contrasts], step)
    if not found:
        return []
    family = [d for *_, acc, loss in found for d in (acc, loss) if d is not None]
    verdicts = dict(zip(map(id, family), holm(family), strict=True))
    compared = {name for arm, against, *_ in found for name in (arm, against)}
    rounds = {
        row["round"]
        for cell in (c for name in compared for c in arms[name])
        for row in read_metrics(cell.folder)
        if row["step"] == step and "round" in row
    }
    at = f"step {step}" + (f" (round {int(rounds.pop())})" if len(rounds) == 1 else "")
    return [
        f"At {at}: the global models evaluated then, paired seed by seed and example by example.",
        "",
        *contrast_lines(found, verdicts),
        multiplicity_note(len(family)),
        "",
    ]


def cell_text(difference: PairedDifference | None, verdicts: dict[int, bool]) -> str:
    """A paired difference as shown, with its Holm verdict (by object id)."""
    return "—" if difference is None else difference.shown(verdicts[id(difference)])


def multiplicity_note(count: int) -> str:
    """What a star means under a table of ``count`` paired intervals."""
    return (
        "Intervals: 95 % bootstrap of seeds and examples, crossed where every seed scores"
        " the same examples, else of the seeds' own differences (a seeded eval subset per"
        " seed; the clients' own splits). * : the difference holds with the family-wise"
        f" error rate held at 5 % over this table's {count} intervals (Holm). Under"
        f" {FEW_SEEDS} seeds no star: each seed's difference, and how many were positive,"
        " stand beside the interval."
    )


def seed_pairs(arms: dict[str, list[Cell]], reference: str, arm: str) -> list[tuple[Cell, Cell]]:
    """(reference cell, arm cell) for every seed both finished."""
    by_seed = {c.seed: c for c in arms.get(reference, [])}
    return [(by_seed[c.seed], c) for c in arms.get(arm, []) if c.seed in by_seed]


def compared_predictions(
    pairs: Sequence[tuple[Cell, Cell]], step: int | None = None
) -> dict[str, PairedDifference]:
    """:func:`compare_runs` of the (reference, arm) cell pairs, or at ``step``
    :func:`compare_at_step`; empty when there are none or a cell has no such predictions."""
    folders = [c.folder for pair in pairs for c in pair]
    reference, arm = [a.folder for a, _ in pairs], [b.folder for _, b in pairs]
    if step is not None:
        if not pairs or not all(has_step_predictions(f, step) for f in folders):
            return {}
        return compare_at_step(reference, arm, step)
    if not pairs or not all(has_predictions(f) for f in folders):
        return {}
    return compare_runs(reference, arm) | compare_choices(reference, arm)


def find_contrasts(
    arms: dict[str, list[Cell]], contrasts: Sequence[tuple[str, str]], step: int | None = None
) -> list[Contrast]:
    """Each contrast (arm, reference) both arms finished with predictions (at ``step``, if
    given, else the final ones): the seeds, and the paired accuracy (None for a task without)
    and loss differences."""
    found = []
    for arm, reference in contrasts:
        pairs = seed_pairs(arms, reference, arm)
        differences = compared_predictions(pairs, step)
        if differences:
            seeds = ", ".join(str(b.seed) for _, b in pairs)
            accuracy = differences.get("accuracy")
            found.append((arm, reference, seeds, accuracy, differences["loss"]))
    return found


def by_category(arms: dict[str, list[Cell]], baselines: Sequence[str]) -> list[str]:
    """Each arm's paired loss difference against each of the ``baselines`` within every category
    of an instruction task's eval examples (:func:`compare_by_category`): does a skew cost
    some kinds of instruction more than others? A table per baseline, an arm a row, with its
    own Holm family; none where no arm has categorized predictions."""
    lines: list[str] = []
    for baseline in baselines:
        found = {}
        for arm in arms:
            pairs = seed_pairs(arms, baseline, arm)
            if (
                arm != baseline
                and pairs
                and all(has_predictions(c.folder) for p in pairs for c in p)
            ):
                reference, mine = [a.folder for a, _ in pairs], [b.folder for _, b in pairs]
                found[arm] = compare_by_category(reference, mine)
        found = {arm: differences for arm, differences in found.items() if differences}
        if not found:
            continue
        names = sorted({name for differences in found.values() for name in differences})
        family = [d for differences in found.values() for d in differences.values()]
        verdicts = dict(zip(map(id, family), holm(family), strict=True))
        lines += [
            f"Δ loss vs {baseline} by category of the eval examples (token-weighted), paired as"
            " above.",
            "",
            "| arm | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names),
            *(
                f"| {arm} | "
                + " | ".join(cell_text(differences.get(n), verdicts) for n in names)
                + " |"
                for arm, differences in found.items()
            ),
            "",
            multiplicity_note(len(family)),
            "",
        ]
    return lines
