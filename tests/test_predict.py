"""Raw text to entities: word splitting, offsets into the original string, the CLI, and agreement with
transformers' token-classification pipeline on a model trained here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import unicodedata
from types import SimpleNamespace

import pytest
import torch

from nerlib.cli import predict_main, run, train_main
from nerlib.labels import multinerd_label_set
from nerlib.prediction import Entity, entities_from_tags, predict, predict_loaded, split_words

from conftest import write_hub_folder


def words_of(text: str) -> list[str]:
    return [text[start:end] for start, end in split_words(text)]


@pytest.mark.parametrize("text, words", [
    ("Alice met Bob in Paris.", ["Alice", "met", "Bob", "in", "Paris", "."]),
    ("Smith's dog didn't bark, they're sure.", ["Smith", "'s", "dog", "did", "n't", "bark", ",", "they", "'re", "sure", "."]),
    ("J. R. R. Tolkien moved to the U.S. in 1990, i.e. late.",
     ["J.", "R.", "R.", "Tolkien", "moved", "to", "the", "U.S.", "in", "1990", ",", "i.e.", "late", "."]),
    ("Mr. O'Neill paid $5,000 for 3.5 km/h (well-known) at 09:30.",
     ["Mr.", "O'Neill", "paid", "$", "5,000", "for", "3.5", "km/h", "(", "well-known", ")", "at", "09:30", "."]),
    ("Paris–Roubaix and R&B: “quoted” — yes!", ["Paris–Roubaix", "and", "R&B", ":", "“", "quoted", "”", "—", "yes", "!"]),
    ("Zoë  visited\tZürich\n\nand 北京。", ["Zoë", "visited", "Zürich", "and", "北", "京", "。"]),
    ("cafe\u0301 x\u200by \ufeffend", ["cafe\u0301", "x", "y", "end"]),  # combining accent kept; invisible chars dropped
    ("Ends with No.", ["Ends", "with", "No", "."]),  # a title is only an abbreviation before a word
    # Marks outside the BMP stay on their letters: Brahmi vowel signs and virama, a musical stem.
    ("\U00011005\U00011032\U0001103c\U00011013 ruled", ["\U00011005\U00011032\U0001103c\U00011013", "ruled"]),
    ("a\U0001d165b x", ["a\U0001d165b", "x"]),
    ("cafe\u0301's menu", ["cafe\u0301", "'s", "menu"]),  # a clitic after a word ending in a mark
    # Joiners stay inside words (Devanagari half form, Persian) and emoji sequences; a flag is one word.
    ("\u0915\u094d\u200d\u0937 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
     ["\u0915\u094d\u200d\u0937", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"]),
    ("\U0001f469\u200d\U0001f4bb codes \U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7 1\ufe0f\u20e3",
     ["\U0001f469\u200d\U0001f4bb", "codes", "\U0001f44d\U0001f3fd", "\U0001f1eb\U0001f1f7", "1\ufe0f\u20e3"]),
    ("", []),
    (" \n\t ", []),
])
def test_split_words_like_the_training_data(text, words):
    assert words_of(text) == words


def test_split_words_keeps_every_combining_mark_on_its_letter():
    # Every code point of categories Mn, Mc and Me that this Python's Unicode knows, in all 17 planes.
    marks = [chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)).startswith("M")]
    assert any(ord(mark) > 0xFFFF for mark in marks)
    split = [mark for mark in marks if words_of(f"x{mark}y") != [f"x{mark}y"]]
    assert split == [], f"{len(split)} marks split off their letters, e.g. {[hex(ord(m)) for m in split[:5]]}"


@pytest.mark.parametrize("text", [
    "Zoë  and\u00a0Łukasz met in São Paulo,\r\nthen 東京 🙂 (again)...",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines  and   runs of spaces",
    "punctuation!?;:--«»‘’“”…&%$#@",
])
def test_split_words_spans_cover_every_visible_character_once(text):
    spans = split_words(text)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert all(text[s:e] and not any(ch.isspace() for ch in text[s:e]) for s, e in spans)
    assert "".join(text[s:e] for s, e in spans) == "".join(ch for ch in text if not ch.isspace())


def test_entities_from_tags_offsets_and_scores():
    text = "Ann  Lee met\nBob"
    spans = split_words(text)
    tags = ["B-PER", "I-PER", "O", "I-PER"]  # an I- after O starts an entity, like seqeval and the pipeline
    entities = entities_from_tags(text, spans, tags, [0.9, 0.7, 0.99, 0.5])
    assert entities == [Entity("PER", "Ann  Lee", 0, 8, pytest.approx(0.8), 0, 2),
                        Entity("PER", "Bob", 13, 16, 0.5, 3, 4)]


class LookupTagger(torch.nn.Module):
    """A stand-in model: each sub-token's logits are a row of a table, so every tag is known in advance."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table(input_ids))  # (batch, seq, num_labels)


@pytest.fixture(scope="module")
def lookup(tiny_tokenizer):
    """A tagger that reads the tag off each first sub-token: alice, carol B-PER; bob I-PER; paris B-LOC; oslo I-LOC."""
    label_set = multinerd_label_set("PER,LOC")
    vocab = tiny_tokenizer.get_vocab()
    table = torch.zeros(len(vocab), label_set.num_labels)
    table[:, 0] = 4.0  # O
    for word, tag in {"alice": "B-PER", "carol": "B-PER", "bob": "I-PER", "paris": "B-LOC", "oslo": "I-LOC"}.items():
        table[vocab[word], label_set.label2id[tag]] = 6.0
    return tiny_tokenizer, LookupTagger(table), label_set


def test_predict_offsets_point_into_the_original_text(lookup):
    text = "ALICE  bob met Zoë in Paris,\nnear\t\toslo!  Carol…"
    (entities,) = predict_loaded(*lookup, [text])
    expected = [("PER", "ALICE  bob"), ("LOC", "Paris"), ("LOC", "oslo"), ("PER", "Carol")]
    assert [(e.type, e.text) for e in entities] == expected
    assert [(e.start, e.end) for e in entities] == [(0, 10), (22, 27), (35, 39), (42, 47)]
    assert all(text[e.start:e.end] == e.text for e in entities)
    # softmax of a row with 6 on the tag and 0 or 4 elsewhere (the tag's logit vs. O's 4 and four 0s)
    p = torch.softmax(torch.tensor([6.0, 4.0, 0, 0, 0]), 0)[0].item()
    assert all(e.score == pytest.approx(p, abs=1e-6) for e in entities)


def test_predict_windows_long_texts_without_truncating(lookup):
    unit = "alice bob met carol in paris ."
    text = " ".join([unit] * 40)  # 280 words: windows of 6 sub-tokens need dozens of windows
    expected = []
    for k in range(40):
        base = k * (len(unit) + 1)
        expected += [("PER", base, base + 9), ("PER", base + 14, base + 19), ("LOC", base + 23, base + 28)]
    for max_length in (8, 64):
        (entities,) = predict_loaded(*lookup, [text], max_length=max_length, batch_size=5)
        assert [(e.type, e.start, e.end) for e in entities] == expected


def test_predict_pre_split_words_and_empty_texts(lookup):
    results = predict_loaded(*lookup, [["Alice", "bob", "saw", "Oslo", "."], "", "  \n ", []])
    assert [(e.type, e.text, e.start, e.end, e.word_start, e.word_end) for e in results[0]] == [
        ("PER", "Alice bob", 0, 9, 0, 2), ("LOC", "Oslo", 14, 18, 3, 4)]
    assert results[1:] == [[], [], []]


TRAIN_ARGS = ["--labels", "PER,LOC,DIS", "--epochs", "10", "--lr", "5e-3", "--batch-size", "8", "--max-length", "64",
              "--num-threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory, tiny_encoder):
    """A model trained by the train CLI on a subset of MultiNERD's classes (about 3 s on one thread)."""
    root = tmp_path_factory.mktemp("subset-run")
    data = write_hub_folder(root / "multinerd")
    output_dir = str(root / "model")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run(train_main, ["--data", data, "--model", tiny_encoder, "--output-dir", output_dir, *TRAIN_ARGS])
    assert code == 0
    return SimpleNamespace(model_dir=output_dir, printed=printed.getvalue(), data=data)


def test_train_on_a_subset_of_classes(subset_run):
    with open(os.path.join(subset_run.model_dir, "config.json"), encoding="utf-8") as handle:
        id2label = json.load(handle)["id2label"]
    assert [id2label[str(i)] for i in range(len(id2label))] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-DIS", "I-DIS"]
    with open(os.path.join(subset_run.model_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    assert metrics["label_set"] == "PER,LOC,DIS"
    # ORG, ANIM, FOOD and TIME entities of the data were read as O: only the subset is scored.
    assert set(metrics["test"]["per_type"]) == {"PER", "LOC", "DIS"}
    assert metrics["test"]["words"] == metrics["test_words_in_split"]
    entities = predict(subset_run.model_dir, "alice and bob saw acme , an eagle and measles in paris .", device="cpu")
    assert entities and {e.type for e in entities} <= {"PER", "LOC", "DIS"}
    for name in ("README.md", "metrics.json", "training_curves.png", "confusion.png"):
        assert os.path.join(subset_run.model_dir, name) in subset_run.printed


# Both sides split these the same way: words are letters, each punctuation mark a word of its own,
# and words outside the vocabulary ([UNK]) stand alone. See notes/README-predict.md for when they differ.
PIPELINE_TEXTS = [
    "Alice saw Bob in Paris, and acme likes Oslo.",
    "dave  was with flu near lima .\n\ncarol and alice likes zurich",
    "Über the eagle, Carol met Dave in Oslo! measles in Lima? malaria with bob",
]


def test_predict_agrees_with_the_transformers_pipeline(subset_run):
    from transformers import pipeline

    ours = predict(subset_run.model_dir, PIPELINE_TEXTS, device="cpu")
    tagger = pipeline("token-classification", model=subset_run.model_dir, aggregation_strategy="first", device="cpu")
    theirs = tagger(PIPELINE_TEXTS)
    assert sum(len(entities) for entities in ours) >= 5  # the model trained enough to find entities
    for text, mine, reference in zip(PIPELINE_TEXTS, ours, theirs):
        assert [(e.type, e.start, e.end) for e in mine] == [(r["entity_group"], r["start"], r["end"]) for r in reference]
        assert [e.score for e in mine] == pytest.approx([float(r["score"]) for r in reference], abs=1e-5)
        assert all(text[e.start:e.end] == e.text for e in mine)


def test_predict_cli_reads_arguments_files_and_standard_input(subset_run, tmp_path, capsys, monkeypatch):
    texts = ["Alice saw Bob in Paris,  twice.", "", "Zoë: flu\tnear Lima…"]
    model = [subset_run.model_dir, "--device", "cpu"]
    expected = predict(subset_run.model_dir, texts, device="cpu")

    def read_lines(text: str) -> list[dict]:
        return [json.loads(line) for line in text.splitlines()]

    def as_dicts(entities):
        return [e.to_dict() for e in entities]

    assert run(predict_main, model + texts) == 0
    records = read_lines(capsys.readouterr().out)
    assert [r["text"] for r in records] == texts
    assert [r["entities"] for r in records] == [as_dicts(e) for e in expected]

    path = tmp_path / "texts.txt"
    path.write_bytes("\r\n".join(texts).encode("utf-8"))  # CRLF endings are not part of the texts
    out = tmp_path / "entities.jsonl"
    assert run(predict_main, model + ["--file", str(path), "--output", str(out)]) == 0
    assert read_lines(out.read_text(encoding="utf-8")) == records

    stdin = io.TextIOWrapper(io.BytesIO("\n".join(texts).encode("utf-8")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run(predict_main, model) == 0
    assert read_lines(capsys.readouterr().out) == records

    # The whole file as one text: offsets index the file's characters, line endings included.
    assert run(predict_main, model + ["--file", str(path), "--document"]) == 0
    (record,) = read_lines(capsys.readouterr().out)
    document = path.read_bytes().decode("utf-8")
    assert record["text"] == document and record["entities"]
    assert all(document[e["start"]:e["end"]] == e["text"] for e in record["entities"])


def test_predict_cli_errors_are_one_line(subset_run, tmp_path, capsys):
    assert run(predict_main, [str(tmp_path / "nowhere"), "text"]) == 2
    assert "model folder does not exist" in capsys.readouterr().err
    assert run(predict_main, [subset_run.model_dir, "--file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbad \xff byte\n")
    assert run(predict_main, [subset_run.model_dir, "--device", "cpu", "--file", str(bad)]) == 2
    assert "bad.txt:2: not valid UTF-8" in capsys.readouterr().err
