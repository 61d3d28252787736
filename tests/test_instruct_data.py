"""Instruction rows: reading, prompts, masking, truncation, caching, partitions, batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from instruct_data import CATEGORIES, instruct_config, write_instruct_jsonl
from transformers import AutoTokenizer

from fedlora.client.model import model_path
from fedlora.client.trainer import plan_batches
from fedlora.config import ConfigError, TrainConfig, build_config
from fedlora.data import DataError, Example, load_split
from fedlora.data.encoding import IGNORE, clear_memo, collate, encode_split
from fedlora.data.examples import LabelledSplit
from fedlora.data.federated import prepare_data
from fedlora.data.prompts import CUT_CONTEXT, CUT_RESPONSE, PromptBuilder, cut_counts
from fedlora.data.tasks import instruction_task


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(model_path(None))


def _split(examples: list[Example], template: str = "plain") -> LabelledSplit:
    task = instruction_task("instruct", ("all",), template)
    return LabelledSplit(task, "train", examples, "memory", f"rows:{examples!r}")


def _data(raw: dict) -> tuple:  # (DataConfig, folder)
    config = build_config({"data": raw})
    return config.data, None


def test_dolly_and_alpaca_rows_read_with_their_field_names(tmp_path: Path) -> None:
    dolly = write_instruct_jsonl(tmp_path / "dolly.jsonl", 6, clients=2)
    data, _ = _data(
        {
            "task": "instruct",
            "files": {"train": str(dolly)},
            "client_column": "fedit_client",
            "partition": {"method": "given"},
        }
    )
    split = load_split(data, None, "train")
    assert split.task.label_names == tuple(sorted(CATEGORIES))
    first = json.loads(dolly.read_text().splitlines()[0])
    example = split.examples[0]
    assert (example.text_a, example.text_b, example.response, example.client) == (
        first["instruction"],
        first["context"],
        first["response"],
        0,
    )
    assert split.task.label_names[example.label] == first["category"]
    alpaca = tmp_path / "alpaca.json"  # one JSON array, Alpaca's fields, no category
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
    ]
    alpaca.write_text(json.dumps(rows))
    data, _ = _data(
        {
            "task": "instruct",
            "files": {"train": str(alpaca)},
            "instruct": {"context": "input", "response": "output", "category": None},
        }
    )
    split = load_split(data, None, "train")
    assert split.task.label_names == ("all",)
    assert [(e.text_a, e.text_b, e.response, e.label) for e in split.examples] == [
        ("Say hi", "", "hi", 0),
        ("Add", "1 and 2", "3", 0),
    ]


@pytest.mark.parametrize(
    ("row", "dev_row", "message"),
    [
        (
            {"instruction": "a", "context": "", "category": "x"},
            None,
            r"train\.jsonl:2: no field 'response' \(data\.instruct\.response",
        ),
        (
            {"instruction": " ", "context": "", "response": "r", "category": "x"},
            None,
            r"train\.jsonl:2: field 'instruction' \(data\.instruct\.instruction\) holds ' '",
        ),
        (
            {
                "instruction": "a",
                "context": "",
                "response": "r",
                "category": "x",
                "fedit_client": -1,
            },
            None,
            r"train\.jsonl:2: field 'fedit_client' \(data\.client_column\) holds -1",
        ),
        (
            None,
            {"instruction": "a", "context": "", "response": "r", "category": "new"},
            r"dev\.jsonl:1: category 'new' is not one of the train file's \('x'\)",
        ),
    ],
)
def test_bad_rows_name_the_file_line_and_key(
    tmp_path: Path, row: dict | None, dev_row: dict | None, message: str
) -> None:
    good = {"instruction": "a", "context": "", "response": "r", "category": "x", "fedit_client": 0}
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in [good, row or good]) + "\n")
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps(dev_row or good) + "\n")
    data, _ = _data(
        {
            "task": "instruct",
            "files": {"train": str(train), "dev": str(dev)},
            "client_column": "fedit_client",
            "partition": {"method": "given"},
        }
    )
    with pytest.raises(DataError, match=message):
        load_split(data, None, "dev" if dev_row else "train")


def test_the_plain_template_is_the_documented_one(tokenizer) -> None:  # type: ignore[no-untyped-def]
    builder = PromptBuilder(tokenizer, "auto")  # MiniLM's tokenizer has no chat template
    assert builder.template == "plain"
    assert builder.texts("Add", "1 and 2", "3") == (
        "### Instruction:\nAdd\n\n### Context:\n1 and 2\n\n### Response:\n",
        "3[SEP]",
    )
    assert builder.texts("Say hi", "", "hi")[0] == "### Instruction:\nSay hi\n\n### Response:\n"
    with pytest.raises(DataError, match=r"data\.instruct\.template: chat, but tokenizer"):
        PromptBuilder(tokenizer, "chat")


def test_a_chat_template_makes_the_prompt_and_the_rest_is_the_response(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chat = tokenizer.__class__.from_pretrained(model_path(None))
    chat.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    builder = PromptBuilder(chat, "auto")
    assert builder.template == "chat"
    assert builder.texts("Add", "1 and 2", "3") == (
        "<user>Add\n\n1 and 2</user><assistant>",
        "3</assistant>",
    )


def test_only_response_tokens_carry_labels(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    examples = [
        Example("reverse: red cat", "", 0, response="cat red"),
        Example("reverse: dog", "some context words here", 0, response="dog"),
    ]
    encoded = encode_split(_split(examples), tokenizer, 64, tmp_path)
    batch = collate(encoded, [0, 1], tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        prompt = int(encoded.prompt_lengths[row])
        length = len(encoded.input_ids[row])
        labels = batch["labels"][row]
        assert (labels[:prompt] == IGNORE).all() and (labels[length:] == IGNORE).all()
        assert torch.equal(labels[prompt:length], batch["input_ids"][row, prompt:length])
        response = tokenizer.decode(batch["input_ids"][row, prompt:length])
        assert response == f"{example.response} [SEP]"
    assert int(batch["attention_mask"].sum()) == sum(len(ids) for ids in encoded.input_ids)


def test_truncation_cuts_the_context_first_then_the_response(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long_context = " ".join(["green"] * 60)
    examples = [
        Example("reverse: red cat", long_context, 0, response="cat red"),  # context cut
        Example("reverse: dog", "", 0, response=" ".join(["dog"] * 60)),  # response cut
        Example("reverse: dog", "short", 0, response="dog"),  # fits
    ]
    encoded = encode_split(_split(examples), tokenizer, 32, tmp_path)
    assert [len(ids) for ids in encoded.input_ids[:2]] == [32, 32]
    assert encoded.cut.tolist() == [CUT_CONTEXT, CUT_RESPONSE, 0]  # type: ignore[union-attr]
    kept = tokenizer.decode(encoded.input_ids[0][int(encoded.prompt_lengths[0]) :])
    assert kept == "cat red [SEP]"  # the whole response survives a cut context
    greens = " ".join(["green"] * 10)  # as many as fit in 32 tokens (BERT's decode lower-cases)
    assert tokenizer.decode(encoded.input_ids[0]) == (
        f"# # # instruction : reverse : red cat # # # context : {greens}"
        " # # # response : cat red [SEP]"
    )
    assert cut_counts(encoded.cut.tolist()) == {  # type: ignore[union-attr]
        "rows": 2,
        "context": 1,
        "instruction": 0,
        "response": 1,
    }
    # the scores are the rows' own lengths, before any cut
    assert encoded.scores["context"][0] == 60 and encoded.scores["response"][1] == 61
    clear_memo()  # the cache file keeps prompt lengths and cuts
    again = encode_split(_split(examples), tokenizer, 32, tmp_path)
    assert again is not encoded
    assert torch.equal(again.prompt_lengths, encoded.prompt_lengths)  # type: ignore[arg-type]
    assert torch.equal(again.cut, encoded.cut)  # type: ignore[arg-type]


def test_every_partition_works_on_instruction_rows(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = instruct_config(tmp_path)
    raw["data"]["client_column"] = "fedit_client"
    raw["data"]["partition"] = {"method": "given"}
    given = prepare_data(build_config(raw), tokenizer)
    rows = [
        json.loads(line) for line in Path(raw["data"]["files"]["train"]).read_text().splitlines()
    ]
    for client, indices in enumerate(given.client_train):
        assert indices.tolist() == [i for i, r in enumerate(rows) if r["fedit_client"] == client]
    raw["data"]["client_column"] = None  # names the clients only of a given partition
    raw["data"]["partition"] = {"method": "sorted", "by": "context"}
    bands = prepare_data(build_config(raw), tokenizer)
    contexts = bands.train.scores["context"]
    assert max(contexts[bands.client_train[0]]) <= min(contexts[bands.client_train[-1]])
    raw["data"]["partition"] = {"method": "dirichlet", "by": "label", "alpha": 0.1, "min_size": 2}
    skewed = prepare_data(build_config(raw), tokenizer)  # categories are the labels
    assert sorted(np.concatenate(skewed.client_train).tolist()) == list(range(len(rows)))
    raw["data"]["partition"] = {"method": "given"}
    with pytest.raises(
        ConfigError, match=r"data\.partition\.method: 'given' and data\.client_column"
    ):
        build_config(raw)


def test_length_grouped_batches_pad_less_and_train_the_same_examples() -> None:
    lengths = np.random.default_rng(0).integers(10, 300, 200)
    train = TrainConfig(local_steps=10, batch_size=8)

    def padding(batches: list[np.ndarray]) -> float:
        computed = sum(len(b) * lengths[b].max() for b in batches)
        return 1 - sum(lengths[b].sum() for b in batches) / computed

    plain = plan_batches(np.arange(200), train, np.random.default_rng(1))
    grouped = plan_batches(np.arange(200), train, np.random.default_rng(1), lengths)
    assert sorted(np.concatenate(grouped).tolist()) == sorted(np.concatenate(plain).tolist())
    assert padding(grouped) < 0.1 < padding(plain)


def test_degradation_reaches_the_part_of_the_rows_the_config_names() -> None:
    from fedlora.config import DegradeConfig
    from fedlora.data.degrade import degrade

    examples = [
        Example(
            f"instruction {i} one two three", f"context {i} a b c d", 0, response=f"r {i} x y z"
        )
        for i in range(8)
    ]
    clients = [np.arange(4), np.arange(4, 8)]
    for part, changed in (("response", {"response"}), ("context", {"text_b"})):
        config = DegradeConfig(share=0.5, kind="truncate", rate=0.5, part=part)
        split, chosen = degrade(_split(examples), clients, config, seed=0)
        for index, (before, after) in enumerate(zip(examples, split.examples, strict=True)):
            touched = index in clients[chosen[0]]
            for field in ("text_a", "text_b", "response"):
                same = getattr(before, field) == getattr(after, field)
                assert same != (touched and field in changed), (part, index, field)
    with pytest.raises(ConfigError, match=r"data\.degrade\.part: 'response' is a part of"):
        build_config({"data": {"task": "mrpc", "degrade": {"share": 0.5, "part": "response"}}})
