"""What the command-line programs promise on hostile input: every numeric flag checked up front, no
model with NaN weights saved, damaged model folders and output errors reported in one line, a closed
pipe ending quietly, and JSON lines that stay one line for every line splitter."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import typing

import pytest

import nerlib
from nerlib.cli import EXIT_INTERRUPTED, evaluate_main, predict_main, run, train_main
from nerlib.config import NUMBER_RULES, TrainConfig
from nerlib.errors import ConfigError, NonFiniteLoss
from nerlib.labels import multinerd_label_set

from conftest import ROOT, cli_env, write_hub_folder

PYTHON_M_NERLIB = [sys.executable, "-m", "nerlib"]


def one_line_error(captured, *fragments: str) -> str:
    """The captured stderr is one line holding every fragment, and no traceback."""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- numeric flags


def test_every_numeric_option_of_train_config_has_a_rule():
    hints = typing.get_type_hints(TrainConfig)
    numeric = [f.name for f in dataclasses.fields(TrainConfig)
               if hints[f.name] in (int, float, typing.Optional[int], typing.Optional[float])]
    assert "lr" in numeric and "max_eval_samples" in numeric
    assert [name for name in numeric if name not in NUMBER_RULES] == []


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value, message", [
    ("lr", NAN, "--lr must be a finite number, got nan"),
    ("lr", INF, "--lr must be a finite number, got inf"),
    ("lr", 0.0, "--lr must be greater than 0, got 0"),
    ("lr", -1e-5, "--lr must be greater than 0"),
    ("weight_decay", NAN, "--weight-decay must be a finite number"),
    ("weight_decay", -0.1, "--weight-decay must be at least 0"),
    ("warmup_ratio", 1.0, "--warmup-ratio must be in [0, 1), got 1.0"),
    ("warmup_ratio", NAN, "--warmup-ratio must be a finite number"),
    ("max_grad_norm", INF, "--max-grad-norm must be a finite number"),
    ("max_grad_norm", -1.0, "--max-grad-norm must be at least 0"),
    ("max_length", 1, "--max-length must be at least 3, got 1"),
    ("max_length", 2, "--max-length must be at least 3, got 2"),
    ("epochs", 0, "--epochs must be at least 1"),
    ("epochs", 1.5, "--epochs must be a whole number, got 1.5"),
    ("batch_size", -1, "--batch-size must be at least 1"),
    ("eval_batch_size", 0, "--eval-batch-size must be at least 1"),
    ("grad_accum", 0, "--grad-accum must be at least 1"),
    ("save_steps", 0, "--save-steps must be at least 1"),
    ("keep_checkpoints", 0, "--keep-checkpoints must be at least 1"),
    ("num_threads", 0, "--num-threads must be in [1, 1024]"),
    ("num_threads", 10**12, "--num-threads must be in [1, 1024]"),
    ("max_train_samples", -1, "--max-train-samples must be at least 1"),
    ("max_eval_samples", 0, "--max-eval-samples must be at least 1"),
    ("seed", -1, "--seed must be in [0, 4294967295]"),
])
def test_train_config_refuses_out_of_range_numbers(field, value, message):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**{field: value})
    assert message in str(raised.value)


def test_train_config_accepts_the_edges():
    TrainConfig(lr=1e-12, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=0.0, max_length=3, seed=0,
                max_train_samples=1, num_threads=1)
    TrainConfig(warmup_ratio=0.999, seed=2**32 - 1, num_threads=1024)


@pytest.mark.parametrize("main, args, message", [
    (train_main, ["--lr", "nan"], "--lr must be a finite number, got nan"),
    (train_main, ["--lr", "inf", "--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (train_main, ["--max-length", "1"], "--max-length must be at least 3, got 1"),
    (evaluate_main, ["MODEL", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (evaluate_main, ["MODEL", "--max-samples", "-1"], "--max-samples must be at least 1, got -1"),
    (evaluate_main, ["MODEL", "--max-samples", "0"], "--max-samples must be at least 1, got 0"),
    (evaluate_main, ["MODEL", "--max-length", "1"], "--max-length must be at least 3, got 1"),
    (predict_main, ["MODEL", "text", "--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
    (predict_main, ["MODEL", "text", "--max-length", "1"], "--max-length must be at least 3, got 1"),
])
def test_cli_numeric_flags_fail_before_anything_loads(main, args, message, tmp_path, capsys):
    # The model folder does not exist: a numeric check that came after loading would report that instead.
    args = [str(tmp_path / "no-model") if a == "MODEL" else a for a in args]
    extra = ["--output-dir", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")] if main is train_main else []
    assert run(main, args + extra) == 2
    one_line_error(capsys.readouterr(), message)
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------- a saved model to read


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_encoder):
    """An untrained model saved as train.py saves one (weights, tokenizer, nerlib_config.json), and its data."""
    from nerlib.modeling import load_model_for_training, load_tokenizer, save_model

    root = tmp_path_factory.mktemp("saved-model")
    data = write_hub_folder(root / "data")
    label_set = multinerd_label_set("five")
    model_dir = str(root / "model")
    config = TrainConfig(labels="five", data=data, model=tiny_encoder, output_dir=model_dir, max_length=16)
    save_model(load_model_for_training(tiny_encoder, label_set), load_tokenizer(tiny_encoder), model_dir, config,
               label_set)
    return model_dir, data


def test_evaluate_max_samples_says_how_many_of_the_split_were_scored(saved_model, capsys):
    model_dir, data = saved_model
    with open(os.path.join(data, "test", "test_en.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert run(evaluate_main, [model_dir, "--device", "cpu", "--max-samples", "5"]) == 0
    words = sum(len(r["tokens"]) for r in records[:5])
    assert f"scored {words} of {words} words in 5 sentences (the first 5 of the split's {len(records)}" in \
        capsys.readouterr().out


def test_the_window_must_hold_a_sub_token_beside_the_tokenizers_special_tokens(saved_model, capsys):
    from nerlib.features import encode
    from nerlib.modeling import load_tokenizer

    # The smallest window the flags allow works: BERT's [CLS] and [SEP], and one sub-token.
    model_dir, data = saved_model
    assert run(predict_main, [model_dir, "--device", "cpu", "--max-length", "3", "alice saw bob"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "alice saw bob"
    # Below it, for a tokenizer that needs more than the flags' minimum, encoding refuses in one line.
    with pytest.raises(ConfigError, match=r"--max-length 2 leaves no room for a word beside the tokenizer's 2 "
                                          r"special tokens; use at least 3"):
        encode([], multinerd_label_set("five"), load_tokenizer(model_dir), 2)


# ---------------------------------------------------------------- NaN weights are never saved


@pytest.mark.parametrize("where, overrides", [
    ("at the end of the epoch", dict(max_train_samples=8)),          # one step: no later loss sees the NaN
    ("at a --save-steps checkpoint", dict(max_train_samples=16, save_steps=1)),
])
def test_a_model_whose_weights_diverged_is_never_saved(where, overrides, hub_folder, tiny_encoder, tmp_path,
                                                      monkeypatch):
    import nerlib.loop as loop

    # TrainConfig refuses --lr inf; this optimizer takes it anyway, as a diverging update would.
    build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda model, lr, decay, device: build(model, INF, decay, device))
    out = tmp_path / "run"
    config = TrainConfig(labels="five", data=hub_folder, model=tiny_encoder, output_dir=str(out), epochs=1,
                         batch_size=8, max_length=64, progress=False, **overrides)
    with pytest.raises(NonFiniteLoss, match=r"NaN or infinite weights \(.+\) after step 1; they were not saved"):
        nerlib.train(config)
    assert not (out / "model.safetensors").exists(), where
    assert not (out / "checkpoints").exists() or os.listdir(out / "checkpoints") == [], where


# ---------------------------------------------------------------- damaged model folders


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _edit_id2label(path, change):
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config["id2label"])
    path.write_text(json.dumps(config), encoding="utf-8")


# What is done to a copy of the model folder, and what the one-line error must say.
DAMAGES = {
    "truncated nerlib_config.json": (lambda d: _truncate(d / "nerlib_config.json", 40), "nerlib_config.json:"),
    "nerlib_config.json not an object": (lambda d: (d / "nerlib_config.json").write_text("[1]"),
                                         "nerlib_config.json: not what nerlib writes"),
    "truncated config.json": (lambda d: _truncate(d / "config.json", 100), "config.json:"),
    "id2label with a gap": (lambda d: _edit_id2label(d / "config.json", lambda m: m.pop("3")),
                            "config.json: id2label must number its 10 labels 0 to 9; missing 3"),
    "id2label with a key that is no id": (lambda d: _edit_id2label(d / "config.json", lambda m: m.update(x=m.pop("3"))),
                                          "config.json: id2label has a key that is not a label id: 'x'"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no model weights"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors", (d / "model.safetensors").stat().st_size - 7),
                          "model.safetensors: damaged weights file"),
    "truncated tokenizer.json": (lambda d: _truncate(d / "tokenizer.json", 30), "tokenizer.json:"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("main", [evaluate_main, predict_main], ids=["evaluate", "predict"])
def test_a_damaged_model_folder_is_one_line_naming_the_file(damage, main, saved_model, tmp_path, capsys):
    model_dir = shutil.copytree(saved_model[0], tmp_path / "model")
    spoil, message = DAMAGES[damage]
    spoil(model_dir)
    args = [str(model_dir), "--device", "cpu"] + (["a text"] if main is predict_main else [])
    assert run(main, args) == 2
    one_line_error(capsys.readouterr(), message)


def test_a_model_folder_of_a_later_nerlib_predicts_ignoring_options_it_does_not_know(saved_model, tmp_path, capsys,
                                                                                    caplog):
    model_dir = shutil.copytree(saved_model[0], tmp_path / "model")
    info_file = model_dir / "nerlib_config.json"
    info = json.loads(info_file.read_text())
    info["config"]["an_option_of_a_later_version"] = 3
    info_file.write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        assert run(predict_main, [str(model_dir), "--device", "cpu", "alice saw bob"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "alice saw bob"
    assert "ignoring option(s) this nerlib does not know: an_option_of_a_later_version" in caplog.text


# ---------------------------------------------------------------- output errors


def test_output_files_get_their_missing_folders(saved_model, tmp_path, capsys):
    model_dir, _ = saved_model
    outputs = [tmp_path / "a" / "table.md", tmp_path / "b" / "c" / "confusion.png", tmp_path / "d" / "p.jsonl"]
    assert run(evaluate_main, [model_dir, "--device", "cpu", "--table-out", str(outputs[0]), "--confusion-out",
                               str(outputs[1]), "--predictions-out", str(outputs[2])]) == 0
    assert all(path.stat().st_size > 0 for path in outputs)
    entities = tmp_path / "e" / "f" / "entities.jsonl"
    assert run(predict_main, [model_dir, "--device", "cpu", "--output", str(entities), "alice saw bob"]) == 0
    assert json.loads(entities.read_text(encoding="utf-8"))["text"] == "alice saw bob"
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert run(evaluate_main, [model_dir, "--device", "cpu", "--confusion-out", str(tmp_path / "file" / "c.png")]) == 2
    one_line_error(capsys.readouterr(), "c.png: cannot create its folder", "a file is in the way")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, a folder that takes no new files")
def test_an_output_file_that_cannot_be_created_fails_before_the_model_is_loaded(saved_model, monkeypatch, capsys):
    model_dir, _ = saved_model

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the model was loaded before the output file was checked")

    monkeypatch.setattr("nerlib.evaluation.load_for_inference", no_evaluation)
    for flag, name in (("--report", "r.html"), ("--report-json", "r.json"), ("--predictions-out", "p.jsonl"),
                       ("--confusion-out", "c.png"), ("--table-out", "t.md")):
        path = f"/proc/nerlib-{name}"
        assert run(evaluate_main, [model_dir, "--device", "cpu", flag, path]) == 2, flag
        one_line_error(capsys.readouterr(), f"{path}: cannot be written")
        assert not os.path.exists(path)

def test_predict_json_lines_escape_every_line_separator(saved_model, capsys):
    model_dir, _ = saved_model
    texts = ["alice\u2028bob", "paris\u2029oslo", "next\x85line"]
    assert run(predict_main, [model_dir, "--device", "cpu", *texts]) == 0
    out = capsys.readouterr().out
    # str.splitlines breaks on all three; a JSON reader gets the texts back unchanged.
    assert [json.loads(line)["text"] for line in out.splitlines()] == texts


def _predict_process(model_dir, *args, stdout=subprocess.PIPE, preexec_fn=None):
    # Standard output buffered, as a user's is (PYTHONUNBUFFERED would hide errors that only the last
    # flush, or the interpreter's exit, meets).
    env = {key: value for key, value in cli_env().items() if key != "PYTHONUNBUFFERED"}
    return subprocess.Popen([*PYTHON_M_NERLIB, "predict", model_dir, "--device", "cpu", *args], cwd=ROOT,
                            env=env, stdout=stdout, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def test_a_closed_pipe_ends_quietly(saved_model, tmp_path):
    model_dir, _ = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("alice saw bob in paris\n" * 1500)  # ~80 kB of JSON lines: more than a pipe (64 kB) holds
    # `| head -1`: the reader takes one line and goes while the program is still writing.
    process = _predict_process(model_dir, "--file", str(texts))
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.communicate(timeout=300)[1].decode()
    assert json.loads(first)["text"] == "alice saw bob in paris"
    assert process.returncode == 0 and "Traceback" not in stderr and "Exception" not in stderr, stderr
    # The reader goes before anything is written: the failure comes with the last flush.
    process = _predict_process(model_dir, "one short text")
    process.stdout.close()
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 0 and "Traceback" not in stderr and "Exception" not in stderr, stderr


def test_a_closed_standard_output_is_one_line(saved_model, tmp_path):
    model_dir, _ = saved_model
    # `>&-`: the program starts without a standard output at all (Python's sys.stdout is None).
    page = tmp_path / "page.html"
    process = _predict_process(model_dir, "alice saw bob", "--html", str(page), stdout=None,
                               preexec_fn=lambda: os.close(1))
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == \
        "python -m nerlib predict: error: standard output: cannot write (it is closed)"
    # What goes to a file is written as usual: the program needs no standard output for it.
    out = tmp_path / "out.jsonl"
    process = _predict_process(model_dir, "alice saw bob", "--output", str(out), stdout=None,
                               preexec_fn=lambda: os.close(1))
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    assert json.loads(out.read_text())["text"] == "alice saw bob"


def _dev_full_is_a_device() -> bool:
    return os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.skipif(not _dev_full_is_a_device(), reason="needs the /dev/full device (Linux)")
def test_a_full_disk_on_standard_output_is_one_line(saved_model):
    model_dir, _ = saved_model
    full = os.open("/dev/full", os.O_WRONLY)  # never O_CREAT: a missing device must not become a file
    try:
        process = _predict_process(model_dir, "alice saw bob", stdout=full)
        stderr = process.communicate(timeout=300)[1].decode()
    finally:
        os.close(full)
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == \
        "python -m nerlib predict: error: standard output: cannot write (No space left on device)"
    assert "Traceback" not in stderr and "Exception" not in stderr


@pytest.mark.skipif(not _dev_full_is_a_device(), reason="needs the /dev/full device (Linux)")
def test_a_full_disk_under_an_output_file_is_one_line(saved_model, capsys):
    model_dir, _ = saved_model
    # One line fails when the file is closed; 400 fill the buffer and fail while being written.
    for texts in (["alice saw bob"], ["alice saw bob in paris"] * 400):
        assert run(predict_main, [model_dir, "--device", "cpu", "--output", "/dev/full", *texts]) == 2
        one_line_error(capsys.readouterr(), "/dev/full: cannot write (No space left on device)")
    assert run(evaluate_main, [model_dir, "--device", "cpu", "--predictions-out", "/dev/full"]) == 2
    one_line_error(capsys.readouterr(), "/dev/full: cannot write predictions (No space left on device)")


# ---------------------------------------------------------------- interrupts


def test_a_second_interrupt_stops_at_once_with_exit_code_130(capsys):
    from nerlib.loop import _StopRequest

    request = _StopRequest()
    request(signal.SIGINT, None)  # the first asks for a checkpoint and a stop after the step
    assert request.signal == signal.SIGINT
    capsys.readouterr()

    def main(argv):
        request(signal.SIGINT, None)  # the second one
        return 0

    assert run(main, []) == EXIT_INTERRUPTED == 130
    one_line_error(capsys.readouterr(), "interrupted")
