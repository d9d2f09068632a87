"""Flags that evaluate and predict share with train: --amp-dtype, --trust-remote-code, and --strict
scoring the one inference pass."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

import nerlib.evaluation
from nerlib.prediction import load_predictor

from conftest import run_cli, train_tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    return train_tiny_model(tmp_path_factory.mktemp("flags"), tiny_encoder)


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_amp_dtype_reaches_the_inference_precision(trained, script):
    model_dir, _ = trained
    texts = ["alice saw the fox in paris ."] if script == "predict.py" else []
    # fp16 autocast is refused on a CPU: the flag reached the precision choice (ignored, the run would
    # fall back to auto and succeed; unknown, argparse would refuse it with another message).
    result = run_cli(script, model_dir, *texts, "--device", "cpu", "--amp", "--amp-dtype", "fp16")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"{script}: error: --amp-dtype fp16 needs CUDA; on a CPU use bf16"


def test_predict_runs_in_the_amp_dtype_asked_for(trained):
    model_dir, _ = trained
    assert load_predictor(model_dir, device="cpu", amp=True, amp_dtype="bf16").precision.dtype is torch.bfloat16
    assert load_predictor(model_dir, device="cpu").precision.dtype is None


REMOTE_CONFIG = '''from transformers import BertConfig


class RemoteBertConfig(BertConfig):
    model_type = "nerlib-remote-bert"
'''
REMOTE_MODEL = '''from transformers import BertForTokenClassification

from .configuration_remote import RemoteBertConfig


class RemoteBertForTokenClassification(BertForTokenClassification):
    config_class = RemoteBertConfig
'''


@pytest.fixture(scope="module")
def remote_code_model(trained, tmp_path_factory):
    """The trained model as a folder whose architecture is code in the folder (`auto_map`)."""
    model_dir, _ = trained
    folder = tmp_path_factory.mktemp("remote") / "model"
    shutil.copytree(model_dir, folder)
    (folder / "configuration_remote.py").write_text(REMOTE_CONFIG, encoding="utf-8")
    (folder / "modeling_remote.py").write_text(REMOTE_MODEL, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "nerlib-remote-bert"
    config["architectures"] = ["RemoteBertForTokenClassification"]
    config["auto_map"] = {"AutoConfig": "configuration_remote.RemoteBertConfig",
                          "AutoModelForTokenClassification": "modeling_remote.RemoteBertForTokenClassification"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(folder)


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies a folder's model code into its modules cache: one of the test's own."""
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))


def test_evaluate_and_predict_pass_trust_remote_code(trained, remote_code_model, modules_cache):
    model_dir, _ = trained
    refused = run_cli("evaluate.py", remote_code_model, "--device", "cpu", "--json")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and last.startswith("evaluate.py: error: ") and "--trust-remote-code" in last
    evaluated = run_cli("evaluate.py", remote_code_model, "--device", "cpu", "--json", "--trust-remote-code")
    assert evaluated.returncode == 0, evaluated.stderr
    reference = run_cli("evaluate.py", model_dir, "--device", "cpu", "--json")
    # The same weights under the folder's own class: the same scores as the plain folder.
    assert json.loads(evaluated.stdout)["f1"] == json.loads(reference.stdout)["f1"]

    text = "alice saw the fox in paris ."
    refused = run_cli("predict.py", remote_code_model, text, "--device", "cpu")
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr.strip().splitlines()[-1]
    predicted = run_cli("predict.py", remote_code_model, text, "--device", "cpu", "--trust-remote-code")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout == run_cli("predict.py", model_dir, text, "--device", "cpu").stdout


def test_evaluate_strict_scores_one_inference_pass(trained, tmp_path, monkeypatch):
    model_dir, _ = trained
    calls = []
    original = nerlib.evaluation.predict_words
    monkeypatch.setattr(nerlib.evaluation, "predict_words", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = tmp_path / "predictions.jsonl"
    result = run_cli("evaluate.py", model_dir, "--device", "cpu", "--json", "--strict", "--predictions-out", out)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1
    # The strict scores, against seqeval's strict IOB2 mode run here on the written predictions.
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    report = classification_report([r["gold"] for r in rows], [r["pred"] for r in rows], mode="strict", scheme=IOB2,
                                   output_dict=True, zero_division=0)
    strict = json.loads(result.stdout)["strict"]
    assert strict["f1"] == pytest.approx(report["micro avg"]["f1-score"], abs=1e-12)
    assert {name: row["support"] for name, row in strict["per_type"].items()} == \
        {name: int(row["support"]) for name, row in report.items() if not name.endswith(" avg")}
