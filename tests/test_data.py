import json
import os

import pytest

from nerlib.data import SplitNotFound, canonical_split, load_split, tag_ids
from nerlib.errors import DataError
from nerlib.labels import auto_label_set, multinerd_label_set

from conftest import write_column_folder, write_jsonl


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as handle:
        handle.write(text)


def test_hub_layout_reads_one_language(hub_folder):
    english = load_split(hub_folder, "train", "en")
    german = load_split(hub_folder, "train", "de")
    assert len(english.sentences) == 96 and len(german.sentences) == 3
    assert english.source.endswith(os.path.join("train", "train_en.jsonl"))
    first = english.sentences[0]
    assert len(first.tokens) == len(first.tags) and all(t == "O" or t[1] == "-" for t in first.tags)


def test_records_of_another_language_are_dropped(tmp_path):
    write_jsonl(str(tmp_path / "test" / "test_en.jsonl"), [
        {"tokens": ["a"], "ner_tags": [0], "lang": "en"},
        {"tokens": ["b"], "ner_tags": [1], "lang": "de"},
        {"tokens": ["c"], "ner_tags": [5]},
    ])
    split = load_split(str(tmp_path), "test", "en")
    assert [s.tokens for s in split.sentences] == [("a",), ("c",)]
    assert [s.tags for s in split.sentences] == [("O",), ("B-LOC",)]


@pytest.mark.parametrize("alias", ["val", "validation", "dev"])
def test_split_aliases(tmp_path, alias):
    write_jsonl(str(tmp_path / "validation" / "validation_en.jsonl"), [{"tokens": ["x"], "ner_tags": [0]}])
    assert canonical_split(alias) == "val"
    assert load_split(str(tmp_path), alias).sentences[0].tokens == ("x",)


@pytest.mark.parametrize("index_column", [False, True])
def test_column_files_with_and_without_index(tmp_path, index_column):
    folder = write_column_folder(tmp_path / "c", index_column=index_column)
    train = load_split(folder, "train")
    assert len(train.sentences) == 64
    assert train.sentences[0].path.endswith("train.txt") and train.sentences[0].line == 1
    assert any("B-MISC" in s.tags for s in train.sentences)


def test_column_file_missing_test_split(column_folder):
    with pytest.raises(SplitNotFound, match="no test split"):
        load_split(column_folder, "test")


def test_crlf_reads_exactly_like_lf(tmp_path):
    text = "-DOCSTART-\tO\n\nAlice\tB-PER\nslept\tO\n\nOslo\tB-LOC\n"
    _write(str(tmp_path / "lf" / "train.txt"), text)
    _write(str(tmp_path / "crlf" / "train.txt"), text.replace("\n", "\r\n"), mode="w")
    with open(tmp_path / "crlf" / "train.txt", "wb") as handle:
        handle.write(text.replace("\n", "\r\n").encode())
    lf, crlf = load_split(str(tmp_path / "lf"), "train"), load_split(str(tmp_path / "crlf"), "train")
    assert [(s.tokens, s.tags, s.line) for s in lf.sentences] == [(s.tokens, s.tags, s.line) for s in crlf.sentences]
    assert lf.sentences[0].tokens == ("Alice", "slept") and lf.sentences[1].line == 6


def test_jsonl_crlf_and_empty_sentences(tmp_path):
    path = tmp_path / "train" / "train_en.jsonl"
    os.makedirs(path.parent)
    lines = [json.dumps({"tokens": ["a"], "ner_tags": [0]}), json.dumps({"tokens": [], "ner_tags": []}),
             json.dumps({"tokens": ["b"], "ner_tags": [3]})]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    split = load_split(str(tmp_path), "train")
    assert len(split.sentences) == 2 and split.empty_skipped == 1
    assert split.sentences[1].line == 3


# Each bad input: (file name relative to the data folder, content, expected message fragment).
BAD_JSONL = [
    ('{"tokens": ["a", "b"], "ner_tags": [0]}', r"train_en.jsonl:2: 2 tokens but 1 ner_tags"),
    ('{"tokens": ["a"], "ner_tags": [31]}', r"train_en.jsonl:2 \(token 0\): unknown tag id 31"),
    ('{"tokens": ["a"], "ner_tags": ["X-PER"]}', r"train_en.jsonl:2 \(token 0\): malformed tag 'X-PER'"),
    ('{"tokens": ["a"], "ner_tags": [0]', r"train_en.jsonl:2: malformed JSON"),
    ('{"tokens": ["a"]}', r"train_en.jsonl:2: record has no ner_tags field"),
    ('[1, 2]', r"train_en.jsonl:2: expected a JSON object"),
    ('{"tokens": "abc", "ner_tags": [0]}', r"train_en.jsonl:2: tokens must be a list of strings"),
]


@pytest.mark.parametrize("bad_line, message", BAD_JSONL)
def test_bad_jsonl_names_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"tokens": ["ok"], "ner_tags": [0]})
    _write(str(tmp_path / "train" / "train_en.jsonl"), good + "\n" + bad_line + "\n" + good + "\n")
    with pytest.raises(DataError, match=message):
        load_split(str(tmp_path), "train")


BAD_COLUMNS = [
    ("Bob\tB-PER\n", "Alice\tB-PER\tx\ty\n", r"train.txt:2: 4 columns where line 1 has 2"),
    ("Bob\tB-PER\n", "Alice\n", r"train.txt:2: 1 column where line 1 has 2"),
    ("Bob\tB-PER\n", "Alice\tPERSON\n", r"train.txt:2: malformed tag 'PERSON'"),
    ("1\tBob\tB-PER\n", "x\tAlice\tB-PER\n", r"train.txt:2: expected 2 in the index column, got 'x'"),
    ("1\tBob\tB-PER\n", "3\tAlice\tB-PER\n", r"train.txt:2: expected 2 in the index column, got '3'"),
]


@pytest.mark.parametrize("first_line, bad_line, message", BAD_COLUMNS)
def test_bad_column_lines_name_file_and_line(tmp_path, first_line, bad_line, message):
    _write(str(tmp_path / "train.txt"), first_line + bad_line + "\n")
    with pytest.raises(DataError, match=message):
        load_split(str(tmp_path), "train")


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"Bob\tB-PER\n\nZ\xfcrich\tB-LOC\n")
    with pytest.raises(DataError, match=r"train.txt:3: not valid UTF-8 \(byte 0xfc at column 2\)"):
        load_split(str(tmp_path), "train")


def test_empty_split_is_an_error(tmp_path):
    _write(str(tmp_path / "train" / "train_en.jsonl"), "\n\n")
    with pytest.raises(DataError, match="holds no sentences"):
        load_split(str(tmp_path), "train")


def test_missing_folder_file_and_non_data_folder(tmp_path):
    with pytest.raises(DataError, match="no such data folder or file"):
        load_split(str(tmp_path / "nope"), "train")
    _write(str(tmp_path / "file.txt"), "x\tO\n")
    assert load_split(str(tmp_path / "file.txt"), "test").sentences[0].tokens == ("x",)  # a file is read whole
    with pytest.raises(DataError, match="not a data folder"):
        load_split(str(tmp_path), "train")
    with pytest.raises(DataError, match="unknown split"):
        load_split(str(tmp_path), "holdout")


def test_unknown_tag_for_label_set_lists_known_tags(column_folder):
    sentence = next(s for s in load_split(column_folder, "train").sentences if "B-MISC" in s.tags)
    with pytest.raises(DataError, match=r"train.txt:\d+: unknown tag 'B-MISC' for label set five; known: O B-PER"):
        tag_ids(sentence, multinerd_label_set("five"))
    assert tag_ids(sentence, auto_label_set([sentence.tags]))  # auto knows every tag it read


def test_hub_unreachable_says_which_flags_to_use(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot load the train split of nerlib-test/absent.*--data FOLDER"):
        load_split("nerlib-test/absent", "train", "en")
