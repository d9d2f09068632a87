"""The on-disk cache of encoded splits: hits, misses on any change of the key, damaged files."""

import argparse
import logging
import os

import numpy as np
import pytest

import nerlib
from nerlib import cache
from nerlib.cache import cache_key, cached_encode, default_cache_dir, resolve_cache_dir
from nerlib.config import TrainConfig, add_config_arguments, config_from_args
from nerlib.data import load_split
from nerlib.features import encode
from nerlib.labels import multinerd_label_set


@pytest.fixture
def train_split(hub_folder):
    return load_split(hub_folder, "train", "en")


@pytest.fixture
def counted_encode(monkeypatch):
    """Counts the calls of `encode` made through the cache."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return encode(*args, **kwargs)

    monkeypatch.setattr(cache, "encode", counting)
    return calls


def assert_same_encoded(a, b):
    assert len(a) == len(b)
    for field in ("input_ids", "labels", "gold"):
        left, right = getattr(a, field), getattr(b, field)
        assert len(left) == len(right), field
        for x, y in zip(left, right):
            assert x.dtype == y.dtype == np.int64 and np.array_equal(x, y), field
    for field in ("sentence_index", "word_start", "sentence_lengths"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def cache_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".npz")) if os.path.isdir(folder) else []


def test_second_encode_is_read_from_the_cache(train_split, tiny_tokenizer, tmp_path, counted_encode):
    five = multinerd_label_set("five")
    first = cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    assert len(counted_encode) == 1 and len(cache_files(tmp_path)) == 1
    second = cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    assert len(counted_encode) == 1, "the second call encoded again"
    assert_same_encoded(second, first)
    assert_same_encoded(second, encode(train_split.sentences, five, tiny_tokenizer, 16))


def test_no_cache_folder_means_no_files(train_split, tiny_tokenizer, tmp_path, counted_encode):
    for _ in range(2):
        cached_encode(train_split, multinerd_label_set("five"), tiny_tokenizer, 16, None)
    assert len(counted_encode) == 2 and cache_files(tmp_path) == []


def _edit_first_token(split):
    first = split.sentences[0]
    changed = type(first)(("zurich",) + first.tokens[1:], first.tags, first.path, first.line)
    return type(split)(split.name, split.source, [changed] + split.sentences[1:], split.empty_skipped, split.lang)


def _edit_first_tag(split):
    first = split.sentences[0]
    tags = ("B-LOC" if first.tags[0] != "B-LOC" else "O",) + first.tags[1:]
    changed = type(first)(first.tokens, tags, first.path, first.line)
    return type(split)(split.name, split.source, [changed] + split.sentences[1:], split.empty_skipped, split.lang)


@pytest.mark.parametrize("change", ["token", "tag", "head", "labels", "max_length", "tokenizer", "split name"])
def test_any_change_of_data_or_options_misses(change, train_split, tiny_tokenizer, tiny_encoder, tmp_path,
                                              counted_encode):
    from transformers import BertTokenizerFast

    five = multinerd_label_set("five")
    cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    split, label_set, tokenizer, max_length = train_split, five, tiny_tokenizer, 16
    if change == "token":
        split = _edit_first_token(train_split)
    elif change == "tag":
        split = _edit_first_tag(train_split)
    elif change == "head":
        split = train_split.head(len(train_split.sentences) - 1)
    elif change == "labels":
        label_set = multinerd_label_set("all")
    elif change == "max_length":
        max_length = 12
    elif change == "tokenizer":
        tokenizer = BertTokenizerFast.from_pretrained(tiny_encoder, do_lower_case=False)
    else:
        split = type(train_split)("val", train_split.source, train_split.sentences, 0, train_split.lang)
    assert cache_key(split, label_set, tokenizer, max_length) != cache_key(train_split, five, tiny_tokenizer, 16)
    got = cached_encode(split, label_set, tokenizer, max_length, str(tmp_path))
    assert len(counted_encode) == 2, f"a changed {change} was served from the cache"
    assert_same_encoded(got, encode(split.sentences, label_set, tokenizer, max_length))
    assert len(cache_files(tmp_path)) == 2


def test_a_changed_data_file_misses(hub_folder, tiny_tokenizer, tmp_path, counted_encode):
    five = multinerd_label_set("five")
    cached_encode(load_split(hub_folder, "train", "en"), five, tiny_tokenizer, 16, str(tmp_path))
    path = os.path.join(hub_folder, "train", "train_en.jsonl")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines[:-1] + [lines[-1].replace('"the"', '"oslo"').replace('"a"', '"oslo"')]) + "\n")
    edited = load_split(hub_folder, "train", "en")
    got = cached_encode(edited, five, tiny_tokenizer, 16, str(tmp_path))
    assert len(counted_encode) == 2
    assert_same_encoded(got, encode(edited.sentences, five, tiny_tokenizer, 16))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other key"])
def test_damaged_cache_file_is_encoded_again(damage, train_split, tiny_tokenizer, tmp_path, counted_encode, caplog):
    five = multinerd_label_set("five")
    expected = cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    (name,) = cache_files(tmp_path)
    path = tmp_path / name
    if damage == "garbage":
        path.write_bytes(b"not a numpy archive at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid archive written for another split, put under this name
        other = tmp_path / "other"
        cached_encode(train_split.head(5), five, tiny_tokenizer, 16, str(other))
        os.replace(other / cache_files(other)[0], path)
    with caplog.at_level(logging.WARNING, logger="nerlib.cache"):
        got = cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    assert len(counted_encode) == 2 + (damage == "other key")
    assert_same_encoded(got, expected)
    assert "encoding again" in caplog.text and name in caplog.text
    # The damaged file was replaced by a good one: the next run hits.
    cached_encode(train_split, five, tiny_tokenizer, 16, str(tmp_path))
    assert len(counted_encode) == 2 + (damage == "other key")


def test_unwritable_cache_folder_only_warns(train_split, tiny_tokenizer, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    five = multinerd_label_set("five")
    with caplog.at_level(logging.WARNING, logger="nerlib.cache"):
        got = cached_encode(train_split, five, tiny_tokenizer, 16, str(blocker / "cache"))
    assert_same_encoded(got, encode(train_split.sentences, five, tiny_tokenizer, 16))
    assert "going on without caching" in caplog.text
    assert "encoding again" not in caplog.text, "a missing folder is a plain miss"
    assert not [p for p in tmp_path.rglob("*.npz")], "a temporary file was left behind"


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NERLIB_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(True, None) == str(tmp_path / "env")
    assert resolve_cache_dir(True, str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert resolve_cache_dir(True, "") is None
    assert resolve_cache_dir(False, str(tmp_path / "flag")) is None
    monkeypatch.setenv("NERLIB_CACHE", "")
    assert default_cache_dir() is None
    monkeypatch.delenv("NERLIB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "nerlib")


@pytest.mark.parametrize("argv, enabled, folder", [
    ([], True, None),
    (["--no-cache"], False, None),
    (["--cache-dir", ""], True, ""),
    (["--cache-dir", "somewhere"], True, "somewhere"),
])
def test_cache_flags(argv, enabled, folder):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    assert (config.cache, config.cache_dir) == (enabled, folder)


def test_second_training_run_reads_every_split_from_the_cache(hub_folder, tiny_encoder, tmp_path, caplog):
    def run(name, **overrides):
        config = TrainConfig(labels="five", data=hub_folder, model=tiny_encoder, output_dir=str(tmp_path / name),
                             epochs=1, lr=5e-3, batch_size=8, max_length=16, progress=False, seed=3,
                             max_train_samples=32, max_eval_samples=12,
                             cache_dir=str(tmp_path / "cache"), **overrides)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nerlib.cache"):
            return nerlib.train(config)

    first = run("a")
    assert "from the cache" not in caplog.text
    assert len(cache_files(tmp_path / "cache")) == 3
    second = run("b")
    assert caplog.text.count("read from the cache") == 3
    assert second["test"] == first["test"]
    assert second["epochs"][0]["train_loss"] == first["epochs"][0]["train_loss"]
    assert 0 < second["epochs"][0]["padding_efficiency"] <= 1 and second["test_words_per_s"] > 0
    run("c", cache=False)
    assert "cache" not in caplog.text and len(cache_files(tmp_path / "cache")) == 3

    # Evaluating the saved model reads the test split the training run cached.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nerlib.cache"):
        cached = nerlib.evaluate(str(tmp_path / "a"), max_samples=12, cache_dir=str(tmp_path / "cache"))
    assert caplog.text.count("read from the cache") == 1
    fresh = nerlib.evaluate(str(tmp_path / "a"), max_samples=12, cache=False)
    assert cached["f1"] == fresh["f1"] == first["test"]["f1"] and cached["words"] == fresh["words"]


def test_tokenizer_fingerprint_ignores_the_truncation_state_calls_leave_behind(tiny_tokenizer):
    # A resume whose splits come from the cache never calls the tokenizer; the run it resumes did.
    from nerlib.cache import tokenizer_fingerprint

    before = tokenizer_fingerprint(tiny_tokenizer)
    tiny_tokenizer([["alice", "saw", "paris"]], is_split_into_words=True, truncation=True, max_length=4)
    assert tokenizer_fingerprint(tiny_tokenizer) == before
