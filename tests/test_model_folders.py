"""Incomplete or inconsistent model folders: every command that loads one (predict, evaluate, export, serve) refuses
it in one line naming the file and what is wrong, for PyTorch folders and exported ONNX folders alike."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from nerlib.cli import evaluate_main, export_main, predict_main, run, serve_main

from conftest import train_tiny_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_encoder):
    """A tiny trained model folder, and (where the onnx extra is installed) its ONNX export."""
    root = tmp_path_factory.mktemp("folders")
    model_dir, data = train_tiny_model(root, tiny_encoder)
    onnx_dir = None
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        pass
    else:
        onnx_dir = str(root / "onnx")
        assert run(export_main, [model_dir, onnx_dir, "--onnx", "--parity-samples", "4"]) == 0
    with open(f"{model_dir}/config.json", encoding="utf-8") as handle:
        vocab_size = json.load(handle)["vocab_size"]
    return SimpleNamespace(torch=model_dir, onnx=onnx_dir, data=data, vocab_size=vocab_size)


def _edit_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


def _remove(folder, *names):
    for name in names:
        if (folder / name).exists():
            (folder / name).unlink()


def _edit_weights(folder, change):
    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _bigger_tokenizer(folder, vocab_size):
    """The folder's tokenizer with two words added: ids vocab_size and vocab_size + 1 have no embedding row."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_tokens(["zebra", "yak"])
    assert max(tokenizer.get_vocab().values()) == vocab_size + 1
    tokenizer.save_pretrained(str(folder))


def _smaller_tokenizer(folder):
    """Another model's tokenizer: a vocabulary of 12 entries (the tiny model's has 45)."""
    from transformers import BertTokenizerFast

    _remove(folder, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alice", "bob", "paris", "saw", "in", "the", "."]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))


def _reorder_nerlib_labels(folder):
    path = folder / "nerlib_config.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info["labels"] = [info["labels"][0], *reversed(info["labels"][1:])]
    path.write_text(json.dumps(info), encoding="utf-8")


def _one_word_tokenizer(folder):
    """tokenizer.json whose vocabulary is [UNK] alone (plus the special tokens it adds back): every word unknown."""
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    tokenizer["model"]["vocab"] = {"[UNK]": 0}
    path.write_text(json.dumps(tokenizer), encoding="utf-8")


def _no_labels(config):
    config.pop("id2label")
    config.pop("label2id")


def _duplicate_label(config):
    config["id2label"]["2"] = config["id2label"]["1"]  # B-PER twice; label2id then cannot invert it
    config.pop("label2id")


def _swap_label2id(config):
    first, second = config["id2label"]["1"], config["id2label"]["2"]
    config["label2id"][first], config["label2id"][second] = 2, 1


def _drop_head(weights):
    for key in [key for key in weights if key.startswith("classifier.")]:
        del weights[key]


def _widen_head(weights):
    weights["classifier.weight"] = torch.zeros(10, weights["classifier.weight"].shape[1])
    weights["classifier.bias"] = torch.zeros(10)


def _drop_last_label(config):
    last = str(len(config["id2label"]) - 1)
    config["label2id"].pop(config["id2label"].pop(last))


# What is done to a copy of a model folder, what the one line must hold, and which folders it applies to.
DAMAGES = {
    "no tokenizer.json": (lambda d, v: _remove(d, "tokenizer.json", "vocab.txt"), "no tokenizer files",
                          ("torch", "onnx")),
    "no tokenizer file at all": (lambda d, v: _remove(d, "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                      "special_tokens_map.json"), "no tokenizer files",
                                 ("torch", "onnx")),
    "tokenizer larger than the embeddings": (lambda d, v: _bigger_tokenizer(d, v), "vocab_size is", ("torch", "onnx")),
    "tokenizer of a smaller model": (lambda d, v: _smaller_tokenizer(d), "the tokenizer has 12 ids but config.json's "
                                     "vocab_size is 45", ("torch", "onnx")),
    "nerlib_config.json labels of another model": (lambda d, v: _reorder_nerlib_labels(d),
                                                   "nerlib_config.json: its labels are not config.json's id2label",
                                                   ("torch", "onnx")),
    "tokenizer.json not a tokenizer": (lambda d, v: (d / "tokenizer.json").write_text("{}"),
                                       "cannot load the tokenizer from tokenizer.json", ("torch", "onnx")),
    "tokenizer of one word": (lambda d, v: _one_word_tokenizer(d), "vocab_size is 45; the tokenizer is not this model's",
                              ("torch", "onnx")),
    "config.json without labels": (lambda d, v: _edit_config(d, _no_labels), "makes it (2,)", ("torch",)),
    "config.json without labels, ONNX": (lambda d, v: _edit_config(d, _no_labels),
                                         "model.onnx: the graph scores 7 labels but config.json names 2", ("onnx",)),
    "config.json not JSON": (lambda d, v: (d / "config.json").write_text('{"id2label": {'), "config.json:1: not valid",
                             ("torch", "onnx")),
    "a label named twice": (lambda d, v: _edit_config(d, _duplicate_label), "config.json: id2label names 'B-PER' twice",
                            ("torch", "onnx")),
    "label2id not the inverse": (lambda d, v: _edit_config(d, _swap_label2id),
                                 "config.json: label2id['B-PER'] is 2 but id2label gives it id 1", ("torch", "onnx")),
    "num_labels disagrees": (lambda d, v: _edit_config(d, lambda c: c.update(num_labels=9)),
                             "config.json: num_labels is 9 but id2label names 7 labels", ("torch", "onnx")),
    "no classifier head": (lambda d, v: _edit_weights(d, _drop_head),
                           "model.safetensors: no weights for classifier.bias, classifier.weight", ("torch",)),
    "head of another label count": (lambda d, v: _edit_weights(d, _widen_head),
                                    "model.safetensors: classifier.bias has shape (10,) but config.json makes it (7,)",
                                    ("torch",)),
    "graph of another label count": (lambda d, v: _edit_config(d, _drop_last_label),
                                     "model.onnx: the graph scores 7 labels but config.json names 6", ("onnx",)),
}

COMMANDS = {
    "predict": lambda model, folders, tmp: (predict_main, [model, "--device", "cpu", "alice saw bob"]),
    "evaluate": lambda model, folders, tmp: (evaluate_main, [model, "--device", "cpu", "--data", folders.data]),
    "export": lambda model, folders, tmp: (export_main, [model, str(tmp / "exported"), "--onnx"]),
    "serve": lambda model, folders, tmp: (serve_main, [model, "--device", "cpu", "--port", "0"]),
}

CASES = [(damage, kind, command) for damage, (_, _, kinds) in DAMAGES.items() for kind in kinds
         for command in COMMANDS if not (kind == "onnx" and command == "export")]


@pytest.mark.parametrize("damage, kind, command", CASES)
def test_an_incomplete_model_folder_is_refused_in_one_line(folders, damage, kind, command, tmp_path, capsys,
                                                          monkeypatch):
    if kind == "onnx" and folders.onnx is None:
        pytest.skip("the onnx extra is not installed")
    if command == "serve":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")

        def no_app(*args, **kwargs):  # a folder that loaded would otherwise be served until killed
            raise AssertionError("the damaged model folder was loaded")

        monkeypatch.setattr("nerlib.serve.create_app", no_app)
    model_dir = shutil.copytree(getattr(folders, kind), tmp_path / "model",
                                ignore=shutil.ignore_patterns("checkpoints"))
    spoil, message, _ = DAMAGES[damage]
    spoil(model_dir, folders.vocab_size)
    main, argv = COMMANDS[command](str(model_dir), folders, tmp_path)
    capsys.readouterr()
    assert run(main, argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0] and "error:" in lines[0], lines[0]
    assert not (tmp_path / "exported").exists()  # export refused before writing anything


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_the_whole_folders_load(folders, kind, capsys):
    """The checks refuse damage, not the folders that nerlib writes."""
    if getattr(folders, kind) is None:
        pytest.skip("the onnx extra is not installed")
    assert run(predict_main, [getattr(folders, kind), "--device", "cpu", "alice saw bob"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "alice saw bob"


def test_a_folder_whose_tokenizer_is_smaller_than_the_embeddings_still_loads(folders, tmp_path, capsys):
    """Models often round vocab_size up (to a multiple of 8): a tokenizer with fewer ids than rows is whole."""
    model_dir = shutil.copytree(folders.torch, tmp_path / "model", ignore=shutil.ignore_patterns("checkpoints"))

    def pad_embeddings(weights):
        key = next(key for key in weights if key.endswith("word_embeddings.weight"))
        weights[key] = torch.cat([weights[key], torch.zeros(3, weights[key].shape[1])])

    _edit_weights(model_dir, pad_embeddings)
    _edit_config(model_dir, lambda c: c.update(vocab_size=c["vocab_size"] + 3))
    assert run(predict_main, [str(model_dir), "--device", "cpu", "alice saw bob"]) == 0
    assert json.loads(capsys.readouterr().out)["entities"] == json.loads(
        _predict_line(folders.torch, capsys))["entities"]


def _predict_line(model_dir, capsys) -> str:
    assert run(predict_main, [model_dir, "--device", "cpu", "alice saw bob"]) == 0
    return capsys.readouterr().out
