"""What an instruction run's global model is read for beyond its eval loss: multiple-choice
accuracy (``eval.choices``) and greedy answers to fixed instructions (``eval.generate``).

Read twice, at the run's start (the base model: a fresh LoRA adds nothing) and at its end, so
the change is paired on the same questions and prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from fedlora.adapters import AdapterState
from fedlora.client.choices import score_choices
from fedlora.client.generation import greedy_answer
from fedlora.client.model import ResidentModel
from fedlora.config import ExperimentConfig
from fedlora.data.choices import Question
from fedlora.data.prompts import PromptBuilder
from fedlora.readout import Readout


class Reader:
    """Reads a global state on the resident model, with the run's tokenizer and template."""

    def __init__(
        self,
        model: ResidentModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ExperimentConfig,
        questions: Sequence[Question],
        bf16: bool,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.questions = list(questions)
        self.bf16 = bf16
        self.builder = PromptBuilder(tokenizer, config.data.instruct.template)

    def read(self, state: AdapterState, version: int) -> Readout:
        choices = None
        if self.questions:
            batch = self.config.eval.batch_size
            choices = score_choices(
                self.model, state, self.tokenizer, self.questions, batch, self.bf16
            )
        answers: list[tuple[str, str]] = []
        generate = self.config.eval.generate
        if generate is not None:
            self.model.load(state)
            answers = [
                (
                    prompt,
                    greedy_answer(
                        self.model.model, self.builder, prompt, "", generate.max_new_tokens
                    ),
                )
                for prompt in generate.prompts
            ]
        counts = [len(question.choices) for question in self.questions]
        return Readout(version, choices, answers, counts)
