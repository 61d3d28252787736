"""Multiple-choice accuracy of a causal LM, scored as evaluation harnesses score it.

Each choice is a continuation of the question: the model's log-likelihood of the choice's
tokens after ``{query}\\nAnswer:`` (the zero-shot ARC prompt of lm-evaluation-harness, no chat
template), and the most likely choice is the answer. ``accuracy`` takes the plain sum, which
favours short choices; ``accuracy_norm`` divides it by the choice's length in characters, as
the harness's ``acc_norm`` does. Context and choice are tokenized apart, so every choice of one
question is scored after exactly the same context tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedlora.adapters import AdapterState
from fedlora.client.model import ResidentModel
from fedlora.client.trainer import autocast
from fedlora.data.choices import Question
from fedlora.readout import ChoiceScores

ANSWER_CUE = "\nAnswer:"


def _sequences(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[Question]
) -> list[tuple[list[int], list[int]]]:
    """(context ids, choice ids) for every choice of every question, in order."""
    start = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    contexts = tokenizer([q.query + ANSWER_CUE for q in questions], add_special_tokens=False)
    choices = tokenizer(
        [" " + choice for q in questions for choice in q.choices], add_special_tokens=False
    )
    ids = iter(choices["input_ids"])
    return [
        (start + list(context), list(next(ids)))
        for q, context in zip(questions, contexts["input_ids"], strict=True)
        for _ in q.choices
    ]


@torch.no_grad()
def score_choices(
    model: ResidentModel,
    state: AdapterState,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    batch_size: int,
    bf16: bool,
) -> ChoiceScores:
    """Every choice's summed log-probability under ``state``, in batches of similar length."""
    model.load(state)
    model.model.eval()
    sequences = _sequences(tokenizer, questions)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    totals = np.zeros(len(sequences), dtype=np.float64)
    order = np.argsort([len(c) + len(x) for c, x in sequences], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        joined = [sequences[i][0] + sequences[i][1] for i in rows]
        width = max(map(len, joined))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, tokens in enumerate(joined):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        with autocast(bf16, model.device):
            logits = model.forward({"input_ids": ids, "attention_mask": mask}).logits
        for row, index in enumerate(rows):
            context, choice = sequences[index]
            first = len(context)
            # the choice's tokens, each predicted from the position before it
            log_p = F.log_softmax(logits[row, first - 1 : first - 1 + len(choice)].float(), -1)
            picked = log_p.gather(1, torch.tensor(choice, device=log_p.device)[:, None])
            totals[index] = float(picked.sum())
    loglik, lengths, position = [], [], 0
    for question in questions:
        count = len(question.choices)
        loglik.append(totals[position : position + count])
        lengths.append(np.array([len(choice) for choice in question.choices], dtype=np.float64))
        position += count
    return ChoiceScores(loglik, lengths, np.array([q.gold for q in questions], dtype=np.int64))
