"""Context scores on hand-made examples, and the length score under the real tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.client.model import load_tokenizer
from fedlora.config import ModelConfig
from fedlora.data import Example, LabelledSplit
from fedlora.data.context import lexical_diversity, quantile_buckets, sentence_count, text_scores
from fedlora.data.encoding import encode_split
from fedlora.data.tasks import TASKS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   ", 0),
        ("No end mark at all", 1),
        ("One sentence.", 1),
        ("Hello world. How are you? Fine!", 3),
        ('He said "stop." Then he left.', 2),
        ("Wait... what?! Really.", 3),
        ("Version 3.5 is out.", 1),  # a dot inside a number ends nothing
    ],
)
def test_sentence_count(text: str, expected: int) -> None:
    assert sentence_count(text) == expected


def test_lexical_diversity() -> None:
    assert lexical_diversity("") == 0.0
    assert lexical_diversity("the cat sat") == 1.0
    assert lexical_diversity("A a a A") == 0.25  # case-folded
    # 50 words cycling through 5: every 25-word window holds 5 types.
    assert lexical_diversity(" ".join(["a", "b", "c", "d", "e"] * 10)) == pytest.approx(0.2)
    # The moving average does not fall with length the way the plain ratio does.
    varied = " ".join(f"w{i % 20}" for i in range(400))
    assert lexical_diversity(varied) == pytest.approx(20 / 25)


def test_text_scores_cover_both_segments_and_the_file_column() -> None:
    examples = [
        Example("One. Two.", "Three.", 0, score=1.5),
        Example("dog dog dog dog", "cat", 1, score=-2.0),
    ]
    scores = text_scores(examples)
    assert scores["sentences"].tolist() == [3, 2]
    assert scores["lexical"].tolist() == pytest.approx([1.0, 0.4])
    assert scores["column"].tolist() == [1.5, -2.0]
    assert "column" not in text_scores([Example("a", None, 0)])


@given(
    scores=st.lists(st.integers(0, 5), min_size=1, max_size=200).map(np.array),
    buckets=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_quantile_buckets_are_equal_sized_and_ordered(
    scores: np.ndarray, buckets: int, seed: int
) -> None:
    ids = quantile_buckets(scores.astype(float), buckets, np.random.default_rng(seed))
    sizes = np.bincount(ids, minlength=buckets)
    assert sizes.max() - sizes[sizes > 0].min() <= 1 and ids.max() < buckets
    for low, high in zip(range(buckets), range(1, buckets), strict=False):
        if sizes[low] and sizes[high]:  # every score of a lower bucket is ≤ any of a higher
            assert scores[ids == low].max() <= scores[ids == high].min()


def test_length_score_counts_tokens_before_truncation(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ModelConfig())
    texts = [("a short one", "and its pair"), (" ".join(["word"] * 40), "tail")]
    examples = [Example(a, b, 0) for a, b in texts]
    split = LabelledSplit(TASKS["mrpc"], "train", examples, "hand-made", "length-test")
    encoded = encode_split(split, tokenizer, 16, tmp_path)
    expected = [len(tokenizer(a, b)["input_ids"]) for a, b in texts]
    assert encoded.scores["length"].tolist() == expected
    assert expected[1] > 16 and encoded.lengths.tolist()[1] == 16  # the model sees 16
    assert encoded.scores["sentences"].tolist() == [2, 2]
