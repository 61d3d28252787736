"""Quality degradation: exactly the chosen share of clients changes, and nothing else."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.config import DegradeConfig, PartitionConfig
from fedlora.data import Example, LabelledSplit
from fedlora.data.degrade import chosen_clients, degrade, degrade_text
from fedlora.data.partition import partition
from fedlora.data.tasks import TASKS

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps", "eats", "fast"]


def make_split(count: int, seed: int) -> LabelledSplit:
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS, rng.integers(3, 8))) + "."

    examples = [
        Example(f"{sentence()} {sentence()} {sentence()}", sentence(), int(rng.integers(2)))
        for _ in range(count)
    ]
    return LabelledSplit(TASKS["mrpc"], "train", examples, "hand-made", f"degrade-{seed}")


def can_shuffle(example: Example) -> bool:
    """Whether some segment has two different sentences, so that a shuffle must change it."""
    segments = [example.text_a, example.text_b or ""]
    return any(len({s.rstrip(".") for s in segment.split(". ")}) > 1 for segment in segments)


@settings(max_examples=40, deadline=None)
@given(
    num_clients=st.integers(1, 12),
    share=st.floats(0.01, 1.0),
    kind=st.sampled_from(["dropout", "shuffle", "truncate"]),
    seed=st.integers(0, 2**16),
)
def test_exactly_the_chosen_share_of_clients_changes(
    num_clients: int, share: float, kind: Literal["dropout", "shuffle", "truncate"], seed: int
) -> None:
    split = make_split(120, seed)
    clients = partition(np.zeros(120), num_clients, PartitionConfig(method="iid"), seed)
    config = DegradeConfig(share=share, kind=kind, rate=0.5)
    degraded, chosen = degrade(split, clients, config, seed)
    assert len(chosen) == max(1, round(share * num_clients)) == len(set(chosen))
    for client, indices in enumerate(clients):
        changed = [degraded.examples[i] != split.examples[i] for i in indices]
        assert (client in chosen) == any(changed)
        if client in chosen and kind == "truncate":
            assert all(changed)
        if client in chosen and kind == "shuffle":  # only a text of one repeated sentence stays
            assert changed == [can_shuffle(split.examples[i]) for i in indices]
    assert [e.label for e in degraded.examples] == [e.label for e in split.examples]
    assert degraded.fingerprint != split.fingerprint
    again, _ = degrade(split, clients, config, seed)
    assert again.examples == degraded.examples


@pytest.mark.parametrize("kind", ["dropout", "shuffle", "truncate"])
def test_degraded_text_keeps_its_words_and_is_never_empty(
    kind: Literal["dropout", "shuffle", "truncate"],
) -> None:
    rng = np.random.default_rng(0)
    config = DegradeConfig(share=1.0, kind=kind, rate=1.0)
    text = "The cat sat. The dog ran! Birds fly?"
    out = degrade_text(text, config, rng)
    assert out and set(out.split()) <= set(text.split())
    if kind == "shuffle":
        assert sorted(out.split()) == sorted(text.split())
    assert degrade_text("", config, rng) == ""


def test_a_shuffle_never_spares_a_text_it_can_change() -> None:
    """Regression: swapping two equal sentences used to leave the text as it was."""
    config = DegradeConfig(share=1.0, kind="shuffle")
    text = "fast cat red. fast cat red. dog runs."
    for seed in range(50):
        assert degrade_text(text, config, np.random.default_rng(seed)) != text
    assert degrade_text("a b. a b.", config, np.random.default_rng(0)) == "a b. a b."


def test_truncation_keeps_the_leading_words() -> None:
    config = DegradeConfig(share=1.0, kind="truncate", rate=0.5)
    assert degrade_text("a b c d e f", config, np.random.default_rng(0)) == "a b c"


def test_chosen_clients_depend_on_the_seed() -> None:
    config = DegradeConfig(share=0.5)
    draws = {tuple(chosen_clients(10, config, seed)) for seed in range(5)}
    assert len(draws) > 1 and all(len(d) == 5 for d in draws)


@pytest.mark.parametrize(("share", "changed"), [(0.5, 5), (1.0, 10)])
def test_half_or_all_clients_at_two_doses(share: float, changed: int) -> None:
    """The study's graded quality arms: the share sets how many clients change, the rate how
    much; at the same seed the same clients change at both doses, the higher one losing more."""
    split = make_split(200, 3)
    clients = partition(np.zeros(200), 10, PartitionConfig(method="iid"), 3)
    words = {}
    for rate in (0.3, 0.6):
        config = DegradeConfig(share=share, kind="dropout", rate=rate)
        degraded, chosen = degrade(split, clients, config, 3)
        assert len(chosen) == changed
        touched = {
            c
            for c, idx in enumerate(clients)
            if any(degraded.examples[i] != split.examples[i] for i in idx)
        }
        assert touched == set(chosen)
        words[rate] = sum(len(e.text_a.split()) for e in degraded.examples)
    assert words[0.6] < words[0.3] < sum(len(e.text_a.split()) for e in split.examples)
