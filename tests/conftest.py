"""Fixtures: tiny randomly initialised models and data files written by the tests themselves."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs in tests never write to the user's tokenisation cache; tests of the cache pass a folder.
os.environ["NERLIB_CACHE"] = ""
# The tests' models are tiny: one thread is fastest, and it keeps the suite quick on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from nerlib.labels import MULTINERD_TAGS  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_command(script: str, *args) -> list[str]:
    return [sys.executable, os.path.join(ROOT, script), *map(str, args)]


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def run_script(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train.py, evaluate.py or predict.py of this checkout in a fresh interpreter."""
    return subprocess.run(cli_command(script, *args), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


SCRIPT_MAINS = {"train.py": "train_main", "evaluate.py": "evaluate_main", "predict.py": "predict_main"}


def run_cli(script: str, *args) -> subprocess.CompletedProcess:
    """Run what train.py, evaluate.py or predict.py runs, `sys.exit(run(<main>))`, in this interpreter.

    The same code as the script, its exit status, its standard output and standard error (logging
    included), without the seconds a fresh interpreter spends importing torch; the tests that
    need a process of their own (signals, locks, pipes) and the scripts themselves use
    `run_script`. What the run changes in this interpreter (logging, torch's thread count, argv)
    is put back.
    """
    import contextlib
    import io
    import logging

    from nerlib import cli

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (sys.argv, list(root.handlers), root.level, torch.get_num_threads())
    for handler in saved[1]:  # so that run's logging.basicConfig writes to this stderr, as in a fresh process
        root.removeHandler(handler)
    sys.argv = [script, *argv]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.run(getattr(cli, SCRIPT_MAINS[script]), argv)
            except SystemExit as exc:  # argparse's usage errors, as sys.exit ends the script
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        sys.argv, handlers, level, threads = saved
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())

# Words of the fixture language; each class has its own words so a tiny model can learn them.
ENTITY_WORDS = {
    "PER": ["alice", "bob", "carol", "dave"],
    "ORG": ["acme", "globex", "initech"],
    "LOC": ["paris", "lima", "oslo", "zurich"],
    "ANIM": ["fox", "eagle", "otter"],
    "DIS": ["flu", "measles", "malaria"],
    "FOOD": ["pasta", "cheddar"],
    "TIME": ["renaissance", "jurassic"],
}
FILLER = ["the", "a", "saw", "in", "with", "and", "likes", "near", "of", "was", "."]


def tiny_vocab() -> list[str]:
    words = sorted({w for ws in ENTITY_WORDS.values() for w in ws} | set(FILLER))
    # Sub-word pieces so some words split into several sub-tokens.
    pieces = ["##s", "##ing", "##er", "un", "##known", "##a", "##b", "##c"]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + pieces


def make_sentences(count: int, seed: int, lang: str = "en") -> list[dict]:
    """Synthetic sentences with MultiNERD tag ids; entity classes include ANIM and DIS."""
    rng = random.Random(seed)
    classes = list(ENTITY_WORDS)
    records = []
    for _ in range(count):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 5)):
            tokens.append(rng.choice(FILLER))
            tags.append(0)
            if rng.random() < 0.6:
                cls = rng.choice(classes)
                b_id = MULTINERD_TAGS.index(f"B-{cls}")
                for k in range(rng.choice([1, 1, 2])):
                    tokens.append(rng.choice(ENTITY_WORDS[cls]))
                    tags.append(b_id if k == 0 else b_id + 1)
        records.append({"tokens": tokens, "ner_tags": tags, "lang": lang})
    return records


def write_jsonl(path, records) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_hub_folder(root, sizes=(96, 24, 24), seed=0) -> str:
    """A folder in MultiNERD's hub layout with English and a few German sentences."""
    root = str(root)
    for offset, (split, size) in enumerate(zip(("train", "val", "test"), sizes)):
        records = make_sentences(size, seed + offset) + make_sentences(3, seed + 100 + offset, lang="de")
        write_jsonl(os.path.join(root, split, f"{split}_en.jsonl"), [r for r in records if r["lang"] == "en"])
        write_jsonl(os.path.join(root, split, f"{split}_de.jsonl"), [r for r in records if r["lang"] == "de"])
    return root


def write_column_folder(root, sizes=(64, 16), seed=0, index_column=False) -> str:
    """Column files (token TAB tag) with string tags, CoNLL style, without a test split."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    for offset, (split, size) in enumerate(zip(("train", "val"), sizes)):
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as handle:
            for record in make_sentences(size, seed + offset):
                for i, (token, tag) in enumerate(zip(record["tokens"], record["ner_tags"])):
                    name = MULTINERD_TAGS[tag].replace("ANIM", "MISC")
                    handle.write(f"{i}\t{token}\t{name}\n" if index_column else f"{token}\t{name}\n")
                handle.write("\n")
    return root


def build_tiny_encoder(folder: str, dropout: float = 0.1) -> str:
    """A randomly initialised 2-layer BERT with a vocabulary written here, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        handle.write("\n".join(tiny_vocab()) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    return build_tiny_encoder(str(tmp_path_factory.mktemp("tiny-encoder")))


@pytest.fixture(scope="session")
def tiny_encoder_no_dropout(tmp_path_factory) -> str:
    """Without dropout, runs that see the same data in a different micro-batching agree."""
    return build_tiny_encoder(str(tmp_path_factory.mktemp("tiny-encoder-no-dropout")), dropout=0.0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


@pytest.fixture
def hub_folder(tmp_path) -> str:
    return write_hub_folder(tmp_path / "multinerd")


@pytest.fixture
def column_folder(tmp_path) -> str:
    return write_column_folder(tmp_path / "conll")


TINY_TRAIN_ARGS = ["--labels", "PER,LOC,DIS", "--epochs", "10", "--lr", "5e-3", "--batch-size", "8", "--max-length", "64",
                   "--num-threads", "1", "--no-progress"]


def train_tiny_model(root, encoder: str) -> tuple[str, str]:
    """A model trained by the train CLI on fixture data (about 3 s on one thread); returns (model folder, data)."""
    import contextlib
    import io

    from nerlib.cli import run, train_main

    data = write_hub_folder(os.path.join(str(root), "multinerd"))
    output_dir = os.path.join(str(root), "model")
    with contextlib.redirect_stdout(io.StringIO()):
        code = run(train_main, ["--data", data, "--model", encoder, "--output-dir", output_dir, *TINY_TRAIN_ARGS])
    assert code == 0
    return output_dir, data
