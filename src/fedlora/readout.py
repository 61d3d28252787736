"""What an instruction run's global model was read for, as data: a :class:`Readout` (its
multiple-choice scores, :class:`ChoiceScores`, and its answers to fixed instructions).

The client side reads a model (:mod:`fedlora.client.readouts`, :mod:`fedlora.client.choices`)
and ``results/`` writes the readout to the run folder (:mod:`fedlora.results.readouts`). The
record lives below both so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ChoiceScores:
    """Per question: each choice's log-likelihood and length in characters, and the right
    choice."""

    loglik: list[npt.NDArray[np.float64]]
    lengths: list[npt.NDArray[np.float64]]
    gold: npt.NDArray[np.int64]

    @property
    def correct(self) -> npt.NDArray[np.float64]:
        picked = [int(np.argmax(scores)) for scores in self.loglik]
        return (np.asarray(picked) == self.gold).astype(np.float64)

    @property
    def correct_norm(self) -> npt.NDArray[np.float64]:
        picked = [int(np.argmax(s / n)) for s, n in zip(self.loglik, self.lengths, strict=True)]
        return (np.asarray(picked) == self.gold).astype(np.float64)

    def metrics(self) -> dict[str, float]:
        return {
            "mc_accuracy": float(self.correct.mean()),
            "mc_accuracy_norm": float(self.correct_norm.mean()),
        }


@dataclass(frozen=True)
class Readout:
    """One model's answers: per question its choices' scores, per instruction its answer."""

    version: int
    choices: ChoiceScores | None
    answers: list[tuple[str, str]]  # (instruction, answer)
    choice_counts: list[int]  # choices per question: chance is the mean of 1/count
