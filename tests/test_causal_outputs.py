"""A causal LM scored and read: multiple-choice log-likelihoods (batched or not), greedy answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import run_cli
from instruct_data import instruct_config, tiny_llama
from transformers import AutoTokenizer
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora.client.choices import ANSWER_CUE, score_choices
from fedlora.client.generation import answer_end_tokens, greedy_answer
from fedlora.client.model import ResidentModel, build_resident_model
from fedlora.config import LoraConfig, ModelConfig
from fedlora.data.choices import Question, read_questions
from fedlora.data.prompts import PromptBuilder
from fedlora.data.rows import DataError
from fedlora.readout import ChoiceScores

runner = CliRunner()
ARC_EASY = Path(__file__).parents[1].parent / "shared/data/mc/arc/arc_easy_test.jsonl"
# A choice's log-likelihood sums ≤ 6 log-probabilities of magnitude ≤ ln(30,522) ≈ 10.3 (MiniLM's
# vocabulary); batching with right padding changes only the rounding of float32 matmuls of
# width ≤ 64 (relative ~1e-6 each): 6 × 10.3 × 1e-6 ≈ 6e-5, so 1e-4 absolute.
SAME_LOGLIK = 1e-4


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResidentModel, AutoTokenizer]:
    folder = tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model, tokenizer = build_resident_model(
        ModelConfig(name=str(folder), init="random"), lora, None, seed=0
    )
    return model, tokenizer


def _direct_loglik(
    model: ResidentModel, tokenizer: AutoTokenizer, query: str, choice: str
) -> float:
    """The choice's log-likelihood from one unpadded sequence, token by token."""
    context = tokenizer(query + ANSWER_CUE, add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + answer])
    with torch.no_grad():
        log_p = F.log_softmax(model.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(log_p[len(context) + i - 1, token]) for i, token in enumerate(answer))


def test_batched_scores_are_each_choice_alone(tiny_lm: tuple[ResidentModel, AutoTokenizer]) -> None:
    model, tokenizer = tiny_lm
    questions = [
        Question("Question: Which is a planet?", ("Mars", "the Moon is not one", "Sun"), 0),
        Question("Question: What do plants need?", ("light", "a long dark winter night"), 1),
    ]
    state = model.state()
    scores = score_choices(model, state, tokenizer, questions, batch_size=2, bf16=False)
    for question, loglik in zip(questions, scores.loglik, strict=True):
        direct = [_direct_loglik(model, tokenizer, question.query, c) for c in question.choices]
        np.testing.assert_allclose(loglik, direct, rtol=0, atol=SAME_LOGLIK)
    assert set(scores.metrics()) == {"mc_accuracy", "mc_accuracy_norm"}


def test_the_normalised_accuracy_divides_by_the_choice_length() -> None:
    """A long right choice with more total log-likelihood lost, but less per character."""
    scores = ChoiceScores(
        loglik=[np.array([-4.0, -12.0]), np.array([-1.0, -2.0])],
        lengths=[np.array([2.0, 12.0]), np.array([5.0, 5.0])],
        gold=np.array([1, 0]),
    )
    assert scores.correct.tolist() == [0.0, 1.0]
    assert scores.correct_norm.tolist() == [1.0, 1.0]
    assert scores.metrics() == {"mc_accuracy": 0.5, "mc_accuracy_norm": 1.0}


@pytest.mark.skipif(not ARC_EASY.is_file(), reason="../shared/data/mc/arc not found")
def test_questions_are_read_in_order_up_to_the_limit() -> None:
    questions = read_questions(ARC_EASY, limit=3)
    assert len(questions) == 3 and all(len(q.choices) == 4 for q in questions)
    assert questions[0].query.startswith("Question: ") and questions[1].gold == 1


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"query": 1, "choices": ["a", "b"], "gold": 0}, "'query' must be text"),
        ({"query": "q", "choices": ["a"], "gold": 0}, "at least 2 texts"),
        ({"query": "q", "choices": ["a", ""], "gold": 0}, "non-empty text"),
        ({"query": "q", "choices": ["a", "b"], "gold": 2}, "one of its 2 choices"),
        ({"query": "q", "choices": ["a", "b"], "gold": True}, "one of its 2 choices"),
    ],
)
def test_a_bad_question_is_refused_naming_its_line(tmp_path: Path, row: dict, problem: str) -> None:
    good = {"query": "q", "choices": ["a", "b"], "gold": 1}
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: .*{problem}"):
        read_questions(path)


def test_greedy_answers_repeat_and_stop_where_training_ends_an_answer(
    tiny_lm: tuple[ResidentModel, AutoTokenizer],
) -> None:
    """MiniLM's tokenizer has no chat template and no end-of-sequence token: the plain
    template ends a trained answer with [SEP], so that is where generation stops."""
    model, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, "auto")
    assert answer_end_tokens(builder) == [tokenizer.sep_token_id]
    first = greedy_answer(model.model, builder, "Name a colour.", max_new_tokens=5)
    assert greedy_answer(model.model, builder, "Name a colour.", max_new_tokens=5) == first
    assert len(tokenizer(first, add_special_tokens=False)["input_ids"]) <= 5


@pytest.mark.slow
def test_generate_answers_from_a_run_folder_and_from_its_merged_export(
    tmp_path: Path, tiny_run: Path
) -> None:
    """The run's final global and the merged model it exports give the same greedy answer;
    a classifier's run and a folder holding no model are refused by name."""
    raw = instruct_config(tmp_path)
    run_cli(tmp_path, raw, tmp_path / "run")
    merged = tmp_path / "merged"
    assert (
        runner.invoke(app, ["export", str(tmp_path / "run"), str(merged), "--merge"]).exit_code == 0
    )
    ask = ["red cat runs", "--max-new-tokens", "6"]
    from_run = runner.invoke(app, ["generate", str(tmp_path / "run"), *ask])
    assert from_run.exit_code == 0, from_run.output
    assert runner.invoke(app, ["generate", str(merged), *ask]).output == from_run.output
    refused = runner.invoke(app, ["generate", str(tiny_run), *ask])
    assert refused.exit_code == 2 and "trains a classifier" in refused.output
    refused = runner.invoke(app, ["generate", str(tmp_path), *ask])
    assert refused.exit_code == 2 and "neither a run folder" in refused.output
