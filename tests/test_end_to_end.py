"""Train tiny models end to end through the library and the CLIs."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import nerlib
from nerlib.config import TrainConfig

from conftest import run_cli, run_script, write_column_folder

def tiny_config(data, model, out, **overrides):
    values = dict(labels="five", data=data, model=model, output_dir=str(out), epochs=2, lr=5e-3, batch_size=8,
                  eval_batch_size=16, max_length=16, progress=False, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def test_train_then_evaluate_gives_the_same_metrics(hub_folder, tiny_encoder, tmp_path):
    metrics = nerlib.train(tiny_config(hub_folder, tiny_encoder, tmp_path / "run", epochs=3))
    test = metrics["test"]
    assert test["words"] == metrics["test_words_in_split"] > 0
    assert len(metrics["epochs"]) == 3 and all("val" in e for e in metrics["epochs"])
    assert metrics["train_words_per_s"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"] == json.loads(json.dumps(test))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["id2label"]["7"] == "B-ANIM" and len(config["id2label"]) == 11
    again = nerlib.evaluate(str(tmp_path / "run"))
    for key in ("precision", "recall", "f1", "accuracy", "words"):
        assert again[key] == pytest.approx(test[key]), key
    for name, row in test["per_type"].items():
        assert again["per_type"][name] == pytest.approx(row), name
    assert test["f1"] > 0.3, "the tiny model should learn the fixture's entity words"


def test_seeded_cpu_runs_are_identical(hub_folder, tiny_encoder, tmp_path):
    for name in ("a", "b"):
        nerlib.train(tiny_config(hub_folder, tiny_encoder, tmp_path / name, epochs=1))
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_a_larger_batch(hub_folder, tiny_encoder_no_dropout, tmp_path):
    # The loss is normalised by the labelled words of the whole accumulation group, so 2 x 4
    # accumulated equals 8 at once when the steps hold the same windows (plain shuffle: the
    # order does not depend on the batch size) and dropout is off.
    common = dict(epochs=1, group_by_length=False, max_train_samples=48, max_eval_samples=8)
    nerlib.train(tiny_config(hub_folder, tiny_encoder_no_dropout, tmp_path / "big", batch_size=8, **common))
    nerlib.train(tiny_config(hub_folder, tiny_encoder_no_dropout, tmp_path / "acc", batch_size=4, grad_accum=2, **common))
    big = load_file(str(tmp_path / "big" / "model.safetensors"))
    acc = load_file(str(tmp_path / "acc" / "model.safetensors"))
    start = load_file(os.path.join(tiny_encoder_no_dropout, "model.safetensors"))
    for name, tensor in big.items():
        torch.testing.assert_close(acc[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    moved = [k for k in start if "bert." + k in big and not torch.equal(start[k], big["bert." + k])]
    assert moved, "training changed no weight"


def test_all_label_set_and_auto_on_column_files(tiny_encoder, tmp_path):
    folder = write_column_folder(tmp_path / "conll", index_column=True)
    metrics = nerlib.train(tiny_config(folder, tiny_encoder, tmp_path / "auto", labels="auto", epochs=1))
    assert metrics["test"] is None and metrics["val"]["words"] > 0
    assert "B-MISC" in metrics["labels"]


def test_cli_train_evaluate_and_rescore_predictions(hub_folder, tiny_encoder, tmp_path):
    out = tmp_path / "cli-run"
    result = run_cli("train.py", "--labels", "all", "--data", hub_folder, "--model", tiny_encoder, "--output-dir",
                  str(out), "--epochs", "1", "--lr", "5e-3", "--batch-size", "8", "--max-length", "16", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "scored" in result.stdout and "test words" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = tmp_path / "p.jsonl"
    result = run_cli("evaluate.py", str(out), "--predictions-out", str(predictions), "--json")
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["f1"] == pytest.approx(metrics["test"]["f1"])
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert sum(len(r["tokens"]) for r in rows) == scored["words"] == metrics["test_words_in_split"]
    from seqeval.metrics import f1_score

    assert f1_score([r["gold"] for r in rows], [r["pred"] for r in rows]) == pytest.approx(scored["f1"], abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--model", "does/not/exist/here"], "model folder does not exist"),
    (["--data", "no-such-folder-x"], "no such data folder"),
    (["--labels", "PER,FOO"], "unknown: FOO"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_cli_user_errors_are_one_line(args, message, hub_folder, tiny_encoder, tmp_path):
    base = ["--data", hub_folder, "--model", tiny_encoder, "--output-dir", str(tmp_path / "o"), "--no-progress"]
    result = run_cli("train.py", *base, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 or result.stderr.strip().splitlines()[-1].startswith("train.py: error:")


def test_cli_bad_data_line_is_reported(tiny_encoder, tmp_path):
    folder = write_column_folder(tmp_path / "c")
    with open(os.path.join(folder, "train.txt"), "a", encoding="utf-8") as handle:
        handle.write("broken line with many columns\tO\tO\tO\n")
    result = run_cli("train.py", "--labels", "auto", "--data", folder, "--model", tiny_encoder, "--output-dir",
                  str(tmp_path / "o"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.txt:" in result.stderr and "4 columns where line 1 has 2" in result.stderr


def test_evaluate_cli_missing_model_folder(tmp_path):
    result = run_cli("evaluate.py", str(tmp_path / "missing"), "--data", str(tmp_path))
    assert result.returncode == 2 and "model folder does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_each_script_in_its_own_interpreter_ends_a_user_error_with_one_line_and_status_2(hub_folder, tmp_path):
    # The other CLI tests run the scripts' one line in the test's interpreter; this runs the files.
    missing = tmp_path / "missing"
    runs = {"train.py": ["--model", missing, "--data", hub_folder, "--output-dir", tmp_path / "out", "--no-progress"],
            "evaluate.py": [missing, "--data", hub_folder],
            "predict.py": [missing, "Alice lives in Paris."]}
    for script, args in runs.items():
        result = run_script(script, *args)
        assert result.returncode == 2, (script, result.stderr)
        lines = result.stderr.splitlines()  # train.py first describes its data, one line a split
        assert lines[-1] == f"{script}: error: {missing}: model folder does not exist", script
        assert "Traceback" not in result.stderr and sum("error" in line for line in lines) == 1, result.stderr
        assert result.stdout == ""


# --- the same sentences in every tag scheme ----------------------------------------------------

def _entities_of_record(record):
    """(type, first, end) of a fixture record's MultiNERD ids, read by hand: B- opens, I- continues."""
    from nerlib.labels import MULTINERD_TAGS

    spans = []
    for index, tag in enumerate(MULTINERD_TAGS[i] for i in record["ner_tags"]):
        if tag.startswith("B-"):
            spans.append([tag[2:], index, index + 1])
        elif tag.startswith("I-"):
            spans[-1][2] = index + 1
    return [tuple(s) for s in spans]


def _adjacent_entities(count, seed):
    """Fixture sentences where every third entity is followed directly by another of its type."""
    from conftest import ENTITY_WORDS, make_sentences

    sentences = []
    for number, record in enumerate(make_sentences(count, seed)):
        tokens, spans = list(record["tokens"]), _entities_of_record(record)
        if spans and number % 3 == 0:
            name, first, end = spans[0]
            tokens[end:end] = [ENTITY_WORDS[name][0]]
            spans = [(n, f + (f >= end), e + (f >= end)) for n, f, e in spans]
            spans.insert(1, (name, end, end + 1))
        sentences.append((tokens, spans))
    return sentences


def _tags(spans, length, scheme):
    """Tags written by hand for each scheme (not by nerlib.schemes, which is what is tested)."""
    tags = ["O"] * length
    previous_end = {}
    for name, first, end in spans:
        single = end - first == 1
        for index in range(first, end):
            if scheme == "bio":
                tags[index] = ("B-" if index == first else "I-") + name
            elif scheme == "iob1":
                tags[index] = ("B-" if index == first and previous_end.get(name) == first else "I-") + name
            else:
                unit, last = ("S", "E") if scheme == "bioes" else ("U", "L")
                prefix = unit if single else "B" if index == first else last if index == end - 1 else "I"
                tags[index] = f"{prefix}-{name}"
        previous_end[name] = end
    return tags


def _write_scheme_file(path, sentences, scheme):
    with open(path, "w", encoding="utf-8") as handle:
        for number, (tokens, spans) in enumerate(sentences):
            tags = _tags(spans, len(tokens), scheme)
            if scheme == "iob1":  # CoNLL-2003's four columns, documents of ten sentences
                if number % 10 == 0:
                    handle.write("-DOCSTART- -X- -X- O\n\n")
                handle.writelines(f"{token} NN O {tag}\n" for token, tag in zip(tokens, tags))
            else:
                handle.writelines(f"{token}\t{tag}\n" for token, tag in zip(tokens, tags))
            handle.write("\n")
    return str(path)


SCHEME_FILES = {"bio": "train.tsv", "iob1": "eng.train", "bioes": "train.bioes", "bilou": "train.bilou"}


def test_the_same_sentences_in_any_scheme_train_bit_identically(tiny_encoder, tmp_path):
    train, val = _adjacent_entities(48, 1), _adjacent_entities(12, 2)
    assert any(tag.startswith("B-") for t, s in train for tag in _tags(s, len(t), "iob1")), "IOB1 must use B- somewhere"
    weights, val_metrics = {}, {}
    for scheme, name in SCHEME_FILES.items():
        folder = tmp_path / scheme
        folder.mkdir()
        train_file = _write_scheme_file(folder / name, train, scheme)
        val_file = _write_scheme_file(folder / ("eng.testa" if scheme == "iob1" else f"val.{scheme}"), val, scheme)
        metrics = nerlib.train(tiny_config(None, tiny_encoder, tmp_path / f"run-{scheme}", labels="auto", epochs=2, lr=2e-2,
                                           train_file=train_file, val_file=val_file))
        weights[scheme] = load_file(str(tmp_path / f"run-{scheme}" / "model.safetensors"))
        val_metrics[scheme] = metrics["val"]
    for scheme in ("iob1", "bioes", "bilou"):
        assert weights[scheme].keys() == weights["bio"].keys()
        assert all(torch.equal(weights[scheme][k], weights["bio"][k]) for k in weights["bio"]), scheme
        assert val_metrics[scheme] == val_metrics["bio"], scheme
    # evaluate.py on data in another scheme scores the same entity spans.
    scores = {scheme: nerlib.evaluate(str(tmp_path / "run-bio"), data=str(tmp_path / scheme), split="val")
              for scheme in SCHEME_FILES}
    for scheme in ("iob1", "bioes", "bilou"):
        assert {k: scores[scheme][k] for k in ("f1", "precision", "recall", "per_type", "words")} == \
               {k: scores["bio"][k] for k in ("f1", "precision", "recall", "per_type", "words")}, scheme
    assert scores["bio"]["f1"] == val_metrics["bio"]["f1"] > 0


def test_lang_all_reports_metrics_per_language(hub_folder, tiny_encoder, tmp_path):
    from seqeval.metrics import f1_score

    from nerlib.data import load_split

    metrics = nerlib.train(tiny_config(hub_folder, tiny_encoder, tmp_path / "run", lang="all", epochs=1))
    per_lang = metrics["test"]["per_lang"]
    assert sorted(per_lang) == ["de", "en"]
    from nerlib.cli import metrics_tables

    printed = metrics_tables(metrics["test"], "test")
    assert "test, language de" in printed and "test, language en" in printed
    assert per_lang["en"]["words"] + per_lang["de"]["words"] == metrics["test"]["words"]
    predictions = tmp_path / "p.jsonl"
    scored = nerlib.evaluate(str(tmp_path / "run"), predictions_out=str(predictions))
    for lang in ("de", "en"):
        for key in ("precision", "recall", "f1", "accuracy", "words"):
            assert scored["per_lang"][lang][key] == pytest.approx(per_lang[lang][key]), (lang, key)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    langs = [s.lang for s in load_split(hub_folder, "test", "all").sentences]
    for lang in ("de", "en"):
        mine = [r for r, sentence_lang in zip(rows, langs) if sentence_lang == lang]
        assert f1_score([r["gold"] for r in mine], [r["pred"] for r in mine]) == pytest.approx(per_lang[lang]["f1"])
