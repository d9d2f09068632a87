"""Every data format nerlib reads, the summary it gives, and every malformed case as one line with file and line."""

import json
import os

import pytest

from nerlib import formats
from nerlib.cli import convert_main, run
from nerlib.convert import convert
from nerlib.data import ReadOptions, load_split
from nerlib.errors import ConfigError, DataError
from nerlib.prediction import _text_and_spans

from conftest import write_hub_folder


def _write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


def _pairs(split):
    return [(s.tokens, s.tags) for s in split.sentences]


# --- column files -----------------------------------------------------------------------------

CONLL_2003 = """\
-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

# a comment line
Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
-DOCSTART- -X- -X- O
#Brussels NNP B-NP I-LOC
"""


def test_conll_2003_four_columns_iob1_docstart_and_comments(tmp_path, caplog):
    path = _write(tmp_path / "eng.train", CONLL_2003)
    with caplog.at_level("INFO", logger="nerlib.data"):
        split = load_split(str(tmp_path), "train")
    assert _pairs(split) == [
        (("EU", "rejects", "German", "call", "."), ("B-ORG", "O", "B-MISC", "O", "O")),
        # IOB1: B-PER directly after I-PER splits two adjacent persons.
        (("Peter", "Blackburn", "Smith"), ("B-PER", "I-PER", "B-PER")),
        # A line starting with # that reads as a token line (4 columns, a tag last) is a token.
        (("#Brussels",), ("B-LOC",)),
    ]
    assert split.sentences[1].locate(2) == f"{path}:12"  # the comment line is counted in the line numbers
    summary = split.summary[0]
    for fragment in ("token 1, tag 4 of 4", "scheme IOB1, converted to BIO", "3 sentences, 9 words",
                     "entities: LOC 1, MISC 1, ORG 1, PER 2", "2 documents (-DOCSTART-)", "1 comment lines"):
        assert fragment in summary, summary
    assert summary in caplog.text


def test_index_column_and_tokens_holding_spaces(tmp_path):
    _write(tmp_path / "train.tsv", "1\tNew York\tB-LOC\n2\tis\tO\n\n0\tOslo\tB-LOC\n")
    with pytest.raises(DataError, match=r"train.tsv:4: expected 1 .*index column, got '0'"):
        load_split(str(tmp_path), "train")  # one file counts from 1, not sometimes from 0
    _write(tmp_path / "train.tsv", "1\tNew York\tB-LOC\n2\tis\tO\n\n1\tOslo\tB-LOC\n")
    assert _pairs(load_split(str(tmp_path), "train")) == [(("New York", "is"), ("B-LOC", "O")), (("Oslo",), ("B-LOC",))]


def test_token_and_tag_columns_by_flag(tmp_path):
    path = _write(tmp_path / "data.txt", "B-PER Alice NNP\nO saw VBD\n")
    split = load_split(path, "train", options=ReadOptions(token_column=2, tag_column=1))
    assert _pairs(split) == [(("Alice", "saw"), ("B-PER", "O"))]
    with pytest.raises(DataError, match=r"data.txt:1: no tag column 5: the file's lines have 3 columns"):
        load_split(path, "train", options=ReadOptions(tag_column=5))
    with pytest.raises(ConfigError, match="--token-column counts columns from 1"):
        ReadOptions(token_column=0)


def test_a_trailing_tab_is_no_extra_column(tmp_path):
    # Issue 11: this was misdiagnosed as a bad index column.
    _write(tmp_path / "train.txt", "Alice\tB-PER\t\nsaw\tO\t\n\nOslo\tB-LOC \t\n")
    assert _pairs(load_split(str(tmp_path), "train")) == [(("Alice", "saw"), ("B-PER", "O")), (("Oslo",), ("B-LOC",))]


@pytest.mark.parametrize("names", [
    ("eng.train", "eng.testa", "eng.testb"),
    ("train.txt", "dev.tsv", "test.conll"),
    ("train", "valid.iob2", "test.bio"),
    ("wnut_train.conll", "wnut_dev.conll", "wnut_test.conll"),
    ("train.jsonl", "validation.json", "test.jsonl"),
])
def test_file_names_as_people_have_them(tmp_path, names):
    for name, token in zip(names, ("a", "b", "c")):
        if name.endswith((".jsonl", ".json")):
            _write(tmp_path / name, json.dumps({"tokens": [token], "ner_tags": ["B-PER"]}) + "\n")
        else:
            _write(tmp_path / name, f"{token}\tB-PER\n")
    _write(tmp_path / "README.md", "not data\n")
    for split, token in zip(("train", "val", "test"), ("a", "b", "c")):
        assert load_split(str(tmp_path), split).sentences[0].tokens == (token,)


@pytest.mark.parametrize("files, listed", [
    (["val/val_en.jsonl", "validation/validation_en.jsonl"], ["val/val_en.jsonl", "validation/validation_en.jsonl"]),
    (["val/val_en.jsonl", "dev.txt"], ["val/val_en.jsonl", "dev.txt"]),
    (["dev.txt", "eng.testa"], ["dev.txt", "eng.testa"]),
])
def test_two_sources_for_one_split_are_refused_naming_both(tmp_path, files, listed):
    for name in files:
        content = json.dumps({"tokens": ["x"], "ner_tags": [0]}) + "\n" if name.endswith(".jsonl") else "x\tO\n"
        _write(tmp_path / name, content)
    with pytest.raises(DataError, match="two sources for the val split") as caught:
        load_split(str(tmp_path), "val")
    assert all(name in str(caught.value) for name in listed) and "\n" not in str(caught.value)


def test_shards_of_one_split_are_read_in_order(tmp_path):
    for index, token in enumerate(("first", "second")):
        _write(tmp_path / "data" / f"train-0000{index}-of-00002.jsonl", json.dumps({"tokens": [token], "ner_tags": ["O"]}))
    assert [s.tokens for s in load_split(str(tmp_path), "train").sentences] == [("first",), ("second",)]


def test_lang_lists_and_all(tmp_path):
    folder = write_hub_folder(tmp_path / "hub")
    english, german = load_split(folder, "test", "en"), load_split(folder, "test", "de")
    both = load_split(folder, "test", "all")
    assert both.langs == ["de", "en"] and english.langs == ["en"]
    assert len(both.sentences) == len(english.sentences) + len(german.sentences) == 27
    assert sorted(_pairs(load_split(folder, "test", "en,de"))) == sorted(_pairs(both))
    with pytest.raises(DataError, match="expected a language code"):
        load_split(folder, "test", " , ")


# --- character spans ---------------------------------------------------------------------------

TEXT = "Marie Curie visited Paris in 1898."
SPAN_RECORDS = {
    "entities": {"text": TEXT, "entities": [{"start": 0, "end": 11, "label": "PER"}, {"start": 20, "end": 25, "label": "LOC"}]},
    "spans": {"text": TEXT, "spans": [{"start": 20, "end": 25, "label": "LOC"}, {"start": 0, "end": 11, "label": "PER"}]},
    "triples": {"text": TEXT, "entities": [[0, 11, "PER"], [20, 25, "LOC"]]},
    "doccano": {"id": 7, "text": TEXT, "label": [[0, 11, "PER"], [20, 25, "LOC"]]},
    "doccano-offsets": {"text": TEXT, "entities": [{"id": 1, "start_offset": 0, "end_offset": 11, "label": "PER"},
                                                   {"id": 2, "start_offset": 20, "end_offset": 25, "label": "LOC"}]},
    "spacy": [TEXT, {"entities": [[0, 11, "PER"], [20, 25, "LOC"]]}],
    "label-studio": {"id": 1, "data": {"text": TEXT}, "annotations": [{"result": [
        {"value": {"start": 0, "end": 11, "text": "Marie Curie", "labels": ["PER"]}, "from_name": "label",
         "to_name": "text", "type": "labels"},
        {"value": {"start": 20, "end": 25, "text": "Paris", "labels": ["LOC"]}, "type": "labels"},
        {"type": "relation", "from_id": "a", "to_id": "b"}]}]},
}
EXPECTED = (("Marie", "Curie", "visited", "Paris", "in", "1898", "."), ("B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"))


@pytest.mark.parametrize("kind", sorted(SPAN_RECORDS))
def test_character_span_records_of_every_tool(tmp_path, kind):
    _write(tmp_path / "train.jsonl", json.dumps(SPAN_RECORDS[kind]) + "\n")
    split = load_split(str(tmp_path), "train")
    assert _pairs(split) == [EXPECTED]
    assert "made from the character spans" in split.summary[0] and "0 words split" in split.summary[0]


def test_label_studio_json_export_is_an_array_with_its_line_numbers(tmp_path):
    tasks = [SPAN_RECORDS["label-studio"], {"id": 2, "data": {"text": "Nobody"}, "annotations": []},
             {"id": 3, "data": {"text": "Oslo 😀 Bob"}, "annotations": [
                 {"was_cancelled": True, "result": []},
                 # Offsets counted in UTF-16 code units, as JavaScript counts them: Bob is at 8..11 there.
                 {"result": [{"value": {"start": 8, "end": 11, "text": "Bob", "labels": ["PER"]}}]}]}]
    path = _write(tmp_path / "export.json", json.dumps(tasks, indent=1))
    split = load_split(path, "train")
    assert _pairs(split) == [EXPECTED, (("Oslo", "😀", "Bob"), ("O", "O", "B-PER"))]
    assert split.sentences[0].line == 2 and split.sentences[1].line > split.sentences[0].line
    assert "skipped 1 Label Studio tasks without an annotation" in split.summary[0]
    assert "Label Studio results that are no labelled span (ignored): 1" in split.summary[0]


TEXTS = ["Mr. Smith's U.S. trip cost $5,000.", "Dr. J. R. R. Tolkien wrote it (well-known).", "Zürich–Genève  im Jahr 1900",
         "北京大学 is in Beijing", "They don't\tknow O'Neill", "café naïve ​hidden", "e.g. km/h R&B 3.5"]


@pytest.mark.parametrize("text", TEXTS)
def test_span_text_is_cut_into_the_words_predict_cuts(tmp_path, text):
    _write(tmp_path / "train.jsonl", json.dumps({"text": text, "entities": []}, ensure_ascii=False) + "\n")
    read = load_split(str(tmp_path), "train").sentences[0].tokens
    predicted_text, spans = _text_and_spans(text)
    assert list(read) == [predicted_text[s:e] for s, e in spans]


def test_a_span_boundary_inside_a_word_splits_it_and_is_counted(tmp_path):
    record = {"text": "Paris-based Acmecorp", "entities": [[0, 5, "LOC"], [12, 16, "ORG"]]}
    _write(tmp_path / "train.jsonl", json.dumps(record) + "\n")
    split = load_split(str(tmp_path), "train")
    assert _pairs(split) == [(("Paris", "-based", "Acme", "corp"), ("B-LOC", "O", "B-ORG", "O"))]
    assert "2 words split at a span boundary" in split.summary[0]


def test_overlapping_spans_keep_longest(tmp_path):
    record = {"text": "New York City Hall", "entities": [[0, 8, "LOC"], [0, 13, "LOC"], [9, 18, "ORG"], [0, 8, "LOC"]]}
    path = _write(tmp_path / "train.jsonl", json.dumps(record) + "\n")
    split = load_split(path, "train", options=ReadOptions(on_overlap="keep-longest"))
    assert _pairs(split) == [(("New", "York", "City", "Hall"), ("B-LOC", "I-LOC", "I-LOC", "O"))]
    assert "overlapping spans dropped (--on-overlap keep-longest): 2" in split.summary[0]
    assert "duplicate spans merged: 1" in split.summary[0]


# --- datasets: Parquet, Arrow, save_to_disk ----------------------------------------------------

LABEL_NAMES = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER"]  # not MultiNERD's ids: the names must come from the feature


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("datasets")
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=LABEL_NAMES))})
    train = datasets.Dataset.from_dict({"tokens": [["Ann", "Lee", "is", "Dutch"], ["hi"]], "ner_tags": [[3, 4, 0, 1], [0]]},
                                       features=features)
    test = datasets.Dataset.from_dict({"tokens": [["Bo", "Kim"]], "ner_tags": [[3, 4]]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "saved"))
    train.to_parquet(str(root / "parquet" / "train.parquet"))
    return root


def test_save_to_disk_folder_with_class_label_names(saved_dataset):
    split = load_split(str(saved_dataset / "saved"), "train")
    assert _pairs(split) == [(("Ann", "Lee", "is", "Dutch"), ("B-PER", "I-PER", "O", "B-MISC")), (("hi",), ("O",))]
    assert "tag names from the ClassLabel feature (5)" in split.summary[0]
    assert split.sentences[1].locate(0) == f"{saved_dataset / 'saved' / 'train'} row 2 (token 0)"
    assert _pairs(load_split(str(saved_dataset / "saved"), "test")) == [(("Bo", "Kim"), ("B-PER", "I-PER"))]


def test_parquet_and_arrow_files_with_class_label_names(saved_dataset):
    parquet = load_split(str(saved_dataset / "parquet"), "train")
    arrow = load_split(str(saved_dataset / "saved" / "train" / "data-00000-of-00001.arrow"), "train")
    assert _pairs(parquet) == _pairs(arrow) == _pairs(load_split(str(saved_dataset / "saved"), "train"))


def test_a_damaged_parquet_file_is_one_line(tmp_path):
    path = _write(tmp_path / "train.parquet", "not parquet at all")
    with pytest.raises(DataError, match=r"train.parquet: cannot read as Parquet") as caught:
        load_split(path, "train")
    assert "\n" not in str(caught.value)


# --- malformed input: one line naming file and line --------------------------------------------

NESTED = "[" * 100_000 + "]" * 100_000
MALFORMED = [
    ("train.txt", "Alice\tS-PER\n\nBob\tU-PER\n", r"train.txt:3: 'U-PER' mixes tag schemes with 'S-PER'.*train.txt:1"),
    ("train.txt", "Alice\tI-PER\nBob\tB-PER\n", r"train.txt:2: 'B-PER' in tags read as IO", "io"),
    ("train.txt", "Alice\tB-PER\nsaw\tI-PER\nit\tS-PER\n", r"train.txt:3: 'S-PER' where the BIOES entity"),
    ("train.jsonl", json.dumps({"text": "Oslo", "entities": [[0, 9, "LOC"]]}),
     r"train.jsonl:2: span \[0, 9\) LOC ends past the end of the text \(4 characters\)"),
    ("train.jsonl", json.dumps({"text": "New York", "entities": [[0, 8, "LOC"], [4, 8, "ORG"]]}),
     r"train.jsonl:2: spans \[0, 8\) LOC and \[4, 8\) ORG overlap.*--on-overlap keep-longest"),
    ("train.jsonl", json.dumps({"text": "a  b", "entities": [[1, 3, "LOC"]]}), r"train.jsonl:2: .* covers no word"),
    ("train.jsonl", json.dumps({"text": "ab", "entities": [[1, 1, "LOC"]]}), r"train.jsonl:2: span \[1, 1\) LOC is empty"),
    ("train.jsonl", json.dumps({"text": "ab", "entities": [{"start": 0, "end": 2}]}), r"train.jsonl:2: span label must be"),
    ("train.jsonl", json.dumps({"text": "ab"}), r"train.jsonl:2: record has text but no entities"),
    ("train.jsonl", json.dumps({"data": {"content": "Oslo"}, "annotations": [{"result": []}]}),
     r"train.jsonl:2: Label Studio task has no text \(data.text; data has: content\)"),
    ("train.jsonl", json.dumps({"text": "Bo", "entities": [{"start": 0, "end": 2, "label": "PER", "text": "Al"}]}),
     r"train.jsonl:2: span \[0, 2\) PER says 'Al' but the text there is 'Bo'"),
    ("train.jsonl", NESTED, r"train.jsonl:2: malformed JSON: nested too deeply"),
    ("train.jsonl", '{"tokens": ["a"], "ner_tags": [' + "9" * 5000 + "]}", r"train.jsonl:2: malformed JSON: ValueError"),
    ("train.jsonl", '{"tokens": ["ok", "\\ud800"], "ner_tags": ["O", "O"]}',
     r"train.jsonl:2: token 1 is not valid Unicode \(lone surrogate U\+D800\)"),
    ("train.jsonl", '{"tokens": ["ok"], "ner_tags": ["B-\\udfff"]}', r"train.jsonl:2: tag of token 0 is not valid Unicode"),
    ("train.jsonl", '{"text": "Oslo \\udc80", "entities": []}', r"train.jsonl:2: text 0 is not valid Unicode"),
    ("train.json", json.dumps({"text": "a", "entities": []}) + "\n" + json.dumps({"tokens": ["a"], "ner_tags": ["O"]}),
     r"train.json:2: a tokens record in a file of spans records"),
    ("train.json", '[\n{"text": "a", "entities": []},\n{"text": "b", "entities": [}\n]',
     r"train.json:3: malformed JSON: Expecting value"),
    ("train.json", '[\n{"text": "a", "entities": []}\n{"text": "b"}]', r"train.json:3: malformed JSON: expected , or \]"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(MALFORMED)])
def test_malformed_data_is_one_line_naming_file_and_line(tmp_path, case):
    name, content, message = case[:3]
    scheme = case[3] if len(case) > 3 else "auto"
    spans = '"text"' in content or '"data"' in content
    first = json.dumps({"text": "fine", "entities": []} if spans else {"tokens": ["fine"], "ner_tags": ["O"]}) + "\n"
    first = "" if name.endswith((".txt", ".json")) else first
    path = _write(tmp_path / name, first + content + "\n")
    with pytest.raises(DataError, match=message) as caught:
        load_split(path, "train", options=ReadOptions(tag_scheme=scheme))
    assert "\n" not in str(caught.value)


def test_any_exception_while_reading_a_record_names_it(tmp_path, monkeypatch):
    def broken(text):
        raise ZeroDivisionError("a bug in the splitter")

    monkeypatch.setattr(formats, "split_words", broken)
    path = _write(tmp_path / "train.jsonl", json.dumps({"text": "a", "entities": []}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: cannot read the record \(ZeroDivisionError: a bug"):
        load_split(path, "train")


def test_the_cli_reports_a_lone_surrogate_in_one_line(tmp_path, capsys):
    from nerlib.cli import train_main

    train = _write(tmp_path / "train.jsonl", '{"tokens": ["\\ud800"], "ner_tags": ["O"]}\n')
    # The data is read before the model is looked for.
    code = run(train_main, ["--train", train, "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o"),
                            "--labels", "auto", "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("train.jsonl:1: token 0 is not valid Unicode (lone surrogate U+D800)")


# --- convert -----------------------------------------------------------------------------------

def _entities(split):
    """Each sentence's entities as (type, its words without spaces): independent of how words were cut."""
    result = []
    for sentence in split.sentences:
        found, current = [], None
        for token, tag in zip(sentence.tokens, sentence.tags):
            if tag.startswith("B-") or tag == "O":
                if current:
                    found.append(tuple(current))
                current = [tag[2:], token] if tag != "O" else None
            else:
                current[1] += token
        if current:
            found.append(tuple(current))
        result.append(found)
    return result


SOURCES = {
    "iob1-conll": ("eng.train", CONLL_2003),
    "bioes-tsv": ("train.tsv", "Ann\tB-PER\nLee\tE-PER\nin\tO\nOslo\tS-LOC\n\nGo\tO\n"),
    "bilou-tsv": ("train.bilou", "Ann\tB-PER\nLee\tL-PER\nin\tO\nOslo\tU-LOC\n"),
    "multinerd-jsonl": ("train/train_en.jsonl", json.dumps({"tokens": ["Ann", "in", "Oslo"], "ner_tags": [1, 0, 5],
                                                             "lang": "en"}) + "\n"),
    "spans": ("train.jsonl", json.dumps(SPAN_RECORDS["doccano"]) + "\n"),
    "label-studio": ("train.json", json.dumps([SPAN_RECORDS["label-studio"]])),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("to", ["bio-tsv", "jsonl", "spans"])
def test_convert_there_and_back_keeps_every_entity(tmp_path, source, to):
    name, content = SOURCES[source]
    _write(tmp_path / "in" / name, content)
    original = load_split(str(tmp_path / "in"), "train")
    written = convert(str(tmp_path / "in"), str(tmp_path / "out"), to)
    there = load_split(str(tmp_path / "out"), "train")
    convert(str(tmp_path / "out"), str(tmp_path / "back"), "bio-tsv")
    back = load_split(str(tmp_path / "back"), "train")
    assert _entities(there) == _entities(back) == _entities(original)
    assert sum(len(e) for e in _entities(original)) > 0
    if to != "spans":  # words are kept as they are; span text is cut into words again
        assert _pairs(there) == _pairs(back) == _pairs(original)
    assert list(written) == ["train"]


@pytest.mark.parametrize("to", ["jsonl", "spans"])
def test_converted_json_lines_stay_one_line_a_sentence_for_every_line_splitter(tmp_path, to):
    # U+2028, U+2029 and U+0085 are raw in json.dumps(ensure_ascii=False) but end a line for
    # Python's str.splitlines and for JavaScript: a reader splitting so would cut the records.
    records = [{"tokens": ["Ann\u2028Lee", "in", "Oslo"], "ner_tags": [1, 0, 5], "lang": "en"},
               {"tokens": ["Bo\u2029", "left", "Lima\x85"], "ner_tags": [1, 0, 5], "lang": "en"}]
    _write(tmp_path / "in" / "train" / "train_en.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    convert(str(tmp_path / "in"), str(tmp_path / "out"), to)
    (written,) = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path / "out") for name in names]
    with open(written, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    assert len(lines) == len(records), lines
    read = [json.loads(line) for line in lines]
    if to == "jsonl":  # nothing lost: the same words, escapes and all
        assert [r["tokens"] for r in read] == [r["tokens"] for r in records]
    else:
        assert read[0]["text"] == "Ann\u2028Lee in Oslo"


def test_convert_cli_writes_a_file_and_refuses_to_overwrite(tmp_path, capsys):
    source = _write(tmp_path / "eng.testb", CONLL_2003)
    target = str(tmp_path / "test.jsonl")
    assert run(convert_main, [source, target, "--to", "spans"]) == 0
    assert _entities(load_split(target, "test")) == _entities(load_split(source, "test"))
    assert f"test: {target}" in capsys.readouterr().out
    assert run(convert_main, [source, target, "--to", "spans"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"{target}: exists; pass --overwrite to replace it")


def test_a_hub_dataset_with_class_label_tags(monkeypatch, saved_dataset):
    # Offline stand-in for the hub: what datasets.load_dataset returns for wnut_17 or conll2003 is a
    # DatasetDict like this one; nerlib names the tags from its features and maps the split names.
    import datasets

    loaded = datasets.load_from_disk(str(saved_dataset / "saved"))
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args) or loaded)
    split = load_split("someone/tiny-ner:en", "train")
    assert calls == [("someone/tiny-ner", "en")]
    assert _pairs(split) == _pairs(load_split(str(saved_dataset / "saved"), "train"))
    assert split.summary[0].startswith("train: hub:someone/tiny-ner:en/train: hub dataset: token records, tag names")
    with pytest.raises(DataError, match=r"hub:someone/tiny-ner: no val split \(the dataset has train, test\)"):
        load_split("someone/tiny-ner", "val")


def test_training_refuses_one_file_as_data_and_reads_named_files(tmp_path):
    import nerlib

    path = _write(tmp_path / "all.conll", "Ann\tB-PER\n")
    with pytest.raises(DataError, match=r"all.conll: is one file \(one split\); name the files with --train FILE"):
        nerlib.train(nerlib.TrainConfig(data=path, model=str(tmp_path / "unused"), output_dir=str(tmp_path / "o")))
    config = nerlib.TrainConfig(train_file=path, test_file=path, model="m", output_dir="o")
    assert config.split_sources() == {"train": path, "val": None, "test": path}  # the hub default is not consulted
    assert nerlib.TrainConfig(data="folder", val_file=path).split_sources() == {"train": "folder", "val": path,
                                                                               "test": "folder"}
