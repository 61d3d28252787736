"""Per-example context scores: how long, how many sentences, how varied the words.

CLLoRA measures non-IID data by the length and the quality of text contexts. ``length`` counts
tokens under the run's tokenizer over both segments, before truncation (a context's length is
what it is, not what the model keeps); ``sentences`` counts sentences, the paper's most likely
reading of quality; ``lexical`` is the moving-average type-token ratio, a lexical diversity
that, unlike the plain ratio, does not fall just because a text is longer; ``column`` is a
numeric column of the data file (``data.score_column``). Scores are computed once, with the
tokenization, and cached with it. Instruction rows add ``prompt``, ``context`` and ``response``
(their tokens, before any cut) and one model-based score, ``perplexity``: exp of the mean
cross-entropy of the response tokens under the base model (no adapter), the usual data-quality
proxy of instruction tuning; it needs the model, so :mod:`fedlora.client.quality` computes it,
only for a partition by it, and caches it beside the encoding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedlora.data.examples import Example

SCORES = ("length", "sentences", "lexical", "column", "prompt", "context", "response", "perplexity")
LEXICAL_WINDOW = 25  # words per window of the moving-average type-token ratio

# A sentence ends at . ! or ? (runs of them, and closing quotes or brackets) before a space.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")
_WORD = re.compile(r"\w+")

Scores = npt.NDArray[np.float64]


def sentence_count(text: str) -> int:
    """Sentences in a text; a non-empty text without an end mark is one sentence."""
    stripped = text.strip()
    return len(_SENTENCE_END.findall(stripped)) + 1 if stripped else 0


def lexical_diversity(text: str, window: int = LEXICAL_WINDOW) -> float:
    """Moving-average type-token ratio of the lower-cased words (plain ratio for short texts)."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    if len(words) <= window:
        return len(set(words)) / len(words)
    ratios = [len(set(words[i : i + window])) / window for i in range(len(words) - window + 1)]
    return float(np.mean(ratios))


def _texts(example: Example) -> list[str]:
    return [example.text_a] if example.text_b is None else [example.text_a, example.text_b]


def text_scores(examples: Sequence[Example]) -> dict[str, Scores]:
    """The scores read from the text alone, plus the data file's column when it has one."""
    scores = {
        "sentences": np.array(
            [sum(sentence_count(t) for t in _texts(e)) for e in examples], dtype=np.float64
        ),
        "lexical": np.array(
            [lexical_diversity(" ".join(_texts(e))) for e in examples], dtype=np.float64
        ),
    }
    if examples and examples[0].score is not None:
        scores["column"] = np.array([e.score for e in examples], dtype=np.float64)
    return scores


def quantile_buckets(
    scores: Scores, buckets: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Bucket id of every example: equal-sized buckets by score rank, ties split at random.

    Ranks rather than score values keep buckets equal when many examples share a score (most
    MRPC pairs have exactly two sentences).
    """
    order = np.lexsort((rng.random(len(scores)), scores))
    ids = np.empty(len(scores), dtype=np.int64)
    ids[order] = np.arange(len(scores)) * buckets // max(1, len(scores))
    return ids
