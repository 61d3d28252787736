"""load_split on the real GLUE files and on small synthetic ones; errors name file:line or key."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from fedlora.config import DataConfig
from fedlora.data import DataError, available_tasks, load_split

QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def generic(
    task: str, files: dict[str, str], text_columns: list[str], label_column: str = "label"
) -> DataConfig:
    return DataConfig(
        task=task,
        files={split: Path(name) for split, name in files.items()},
        text_columns=text_columns,
        label_column=label_column,
    )


# --- the real GLUE files ---------------------------------------------------------------------


def test_mrpc_sizes_and_labels(glue_dir: Path) -> None:
    mrpc = DataConfig(task="mrpc")
    train = load_split(mrpc, glue_dir, "train")
    dev = load_split(mrpc, glue_dir, "dev")
    test = load_split(mrpc, glue_dir, "test")
    assert (len(train.examples), len(dev.examples), len(test.examples)) == (3668, 408, 1725)
    assert sum(example.label for example in dev.examples) == 279
    assert test.origin.endswith("msr_paraphrase_test.txt")
    assert train.task.label_names == ("not_equivalent", "equivalent")
    assert train.task.metrics == ("accuracy", "f1") and train.task.pair
    assert len(train.fingerprint) == 64 and train.fingerprint != dev.fingerprint


def test_mrpc_bom_and_quotes_survive(glue_dir: Path) -> None:
    train = load_split(DataConfig(task="mrpc"), glue_dir, "train")
    first = train.examples[0]
    # Read as a header, a BOM would hide the "Quality" column; as data, it would start a text.
    assert first.label == 1 and not first.text_a.startswith("\ufeff")
    assert first.text_a.startswith('Amrozi accused his brother, whom he called "the witness"')
    dev = load_split(DataConfig(task="mrpc"), glue_dir, "dev")
    # An unbalanced quote: a quoting CSV reader would swallow the following rows.
    assert dev.examples[0].text_b == (
        '"The foodservice pie business does not fit our long-term growth strategy.'
    )


def test_mrpc_task_folder_given_directly(glue_dir: Path) -> None:
    split = load_split(DataConfig(task="mrpc"), glue_dir / "MRPC", "dev")
    assert len(split.examples) == 408


def test_rte_sizes_and_label_ids(glue_dir: Path) -> None:
    rte = DataConfig(task="rte")
    train = load_split(rte, glue_dir, "train")
    dev = load_split(rte, glue_dir, "dev")
    assert (len(train.examples), len(dev.examples)) == (2490, 277)
    assert sum(example.label == 0 for example in dev.examples) == 146  # entailment = 0
    assert dev.task.label_names[0] == "entailment" and dev.task.metrics == ("accuracy",)


def test_rte_test_split_has_no_labels(glue_dir: Path) -> None:
    with pytest.raises(DataError, match=r"RTE/test\.tsv:1: the test split has no labels"):
        load_split(DataConfig(task="rte"), glue_dir, "test")


# --- GLUE layouts on synthetic files ---------------------------------------------------------


def test_qqp_layout(tmp_path: Path) -> None:
    write(
        tmp_path / "QQP" / "train.tsv",
        QQP_HEADER + '1\t11\t12\tHow do "I" learn?\tHow to learn?\t1\n2\t13\t14\tA?\tB?\t0\n\n',
    )
    split = load_split(DataConfig(task="qqp"), tmp_path, "train")
    assert [(e.text_a, e.text_b, e.label) for e in split.examples] == [
        ('How do "I" learn?', "How to learn?", 1),
        ("A?", "B?", 0),
    ]
    assert split.task.label_names == ("not_duplicate", "duplicate")


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("3\t15\t16\tonly four fields\n", r"train\.tsv:4: 4 fields, but the header has 6"),
        ("3\t15\t16\tC?\tD?\t\n", r"train\.tsv:4: empty label in column 'is_duplicate'"),
        ("3\t15\t16\tC?\tD?\t2\n", r"train\.tsv:4: label '2' in column 'is_duplicate' is not one"),
    ],
)
def test_qqp_malformed_row_names_file_and_line(tmp_path: Path, bad_row: str, message: str) -> None:
    rows = "1\t11\t12\tA?\tB?\t1\n2\t13\t14\tA?\tB?\t0\n"
    write(tmp_path / "QQP" / "train.tsv", QQP_HEADER + rows + bad_row)
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(task="qqp"), tmp_path, "train")


def test_sst2_single_sentence_in_lowercase_folder(tmp_path: Path) -> None:
    write(tmp_path / "sst2" / "dev.tsv", 'sentence\tlabel\na gem " of a film\t1\ndull\t0\n')
    split = load_split(DataConfig(task="sst2"), tmp_path, "dev")
    assert [(e.text_a, e.text_b, e.label) for e in split.examples] == [
        ('a gem " of a film', None, 1),
        ("dull", None, 0),
    ]
    assert not split.task.pair and split.task.num_labels == 2


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"SST-2/train\.tsv:1: missing column 'sentence'"):
        load_split(DataConfig(task="sst2"), tmp_path, "train")


def test_missing_folder_says_how_to_point_at_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MRPC") as error:
        load_split(DataConfig(task="mrpc"), tmp_path, "train")
    assert str(tmp_path) in str(error.value)
    assert "data.dir" in str(error.value) and "FEDLORA_DATA" in str(error.value)


def test_no_data_dir_names_the_key() -> None:
    with pytest.raises(DataError, match=r"data\.dir.*FEDLORA_DATA"):
        load_split(DataConfig(task="rte"), None, "train")


def test_unknown_task_and_split() -> None:
    with pytest.raises(DataError, match=r"data\.task: unknown task 'cola'"):
        load_split(DataConfig(task="cola"), None, "train")
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_split(DataConfig(task="rte"), None, "validation")
    assert {"mrpc", "rte", "qqp", "sst2", "csv", "jsonl", "instruct"} == set(available_tasks())


# --- generic CSV / JSONL ---------------------------------------------------------------------


def test_csv_pairs_with_string_labels(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", 'q,a,y\n"Hi, there",Hello,pos\nBye,"See ""you""",neg\n')
    write(tmp_path / "dev.csv", "q,a,y\nHm,Ok,neg\n")
    data = generic("csv", {"train": "train.csv", "dev": "dev.csv"}, ["q", "a"], label_column="y")
    train = load_split(data, tmp_path, "train")
    assert train.task.label_names == ("neg", "pos") and train.task.metrics == ("accuracy", "f1")
    assert [(e.text_a, e.text_b, e.label) for e in train.examples] == [
        ("Hi, there", "Hello", 1),
        ("Bye", 'See "you"', 0),
    ]
    assert load_split(data, tmp_path, "dev").examples[0].label == 0


def test_jsonl_single_text_with_int_labels(tmp_path: Path) -> None:
    rows = [
        '{"text": "a", "label": 10}',
        "",
        '{"text": "b", "label": 2}',
        '{"text": "c", "label": 1}',
    ]
    write(tmp_path / "train.jsonl", "\n".join(rows) + "\n")
    data = generic("jsonl", {"train": str(tmp_path / "train.jsonl")}, ["text"])
    split = load_split(data, None, "train")
    assert split.task.label_names == ("1", "2", "10")  # integers sort numerically
    assert split.task.metrics == ("accuracy",) and not split.task.pair
    assert [(e.text_a, e.text_b, e.label) for e in split.examples] == [
        ("a", None, 2),
        ("b", None, 1),
        ("c", None, 0),
    ]


def test_unseen_dev_label_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "text,label\nx,0\ny,1\n")
    # The quoted text spans lines 2-3: the bad row starts on line 4.
    write(tmp_path / "dev.csv", 'text,label\n"two\nlines",1\nz,7\n')
    data = generic("csv", {"train": "train.csv", "dev": "dev.csv"}, ["text"])
    with pytest.raises(DataError, match=r"dev\.csv:4: label '7' in column 'label'"):
        load_split(data, tmp_path, "dev")


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    data = generic("jsonl", {"train": "train.jsonl"}, ["text"])
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid JSON"):
        load_split(data, tmp_path, "train")


def test_generic_config_errors_name_the_key(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "text,label\nx,0\ny,1\n")
    with pytest.raises(DataError, match=r"data\.text_columns"):
        load_split(DataConfig(task="csv", files={"train": Path("train.csv")}), tmp_path, "train")
    with pytest.raises(DataError, match=r"data\.files:"):
        load_split(DataConfig(task="csv", text_columns=["text"]), tmp_path, "train")
    with pytest.raises(DataError, match=r"data\.files\.test: no file for split 'test'"):
        load_split(generic("csv", {"train": "train.csv"}, ["text"]), tmp_path, "test")
    with pytest.raises(DataError, match=r"data\.files\.train: file .*nope\.csv does not exist"):
        load_split(generic("csv", {"train": "nope.csv"}, ["text"]), tmp_path, "train")


# --- the hub (offline only) ------------------------------------------------------------------


def test_hub_without_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"pip install fedlora\[hub\]"):
        load_split(DataConfig(task="mrpc", source="hub"), None, "dev")


def test_hub_offline_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"hub is offline.*hub:nyu-mll/glue/mrpc/validation"):
        load_split(DataConfig(task="mrpc", source="hub"), None, "dev")


@pytest.mark.parametrize("length", [131_072, 131_073, 1_000_000])
def test_a_field_over_the_csv_default_limit_is_read(tmp_path: Path, length: int) -> None:
    long = "word " * (length // 5) + "x" * (length % 5)
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text(f"sentence\tlabel\n{long}\t1\nshort\t0\n")
    split = load_split(DataConfig(task="sst2"), tmp_path, "train")
    assert [len(e.text_a) for e in split.examples] == [length, 5]
