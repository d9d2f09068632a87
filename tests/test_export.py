"""ONNX export: the exported graph against the PyTorch model, the onnx backend against the torch one through
the same prediction path, the parity check, and the command's errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'nerlib[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'nerlib[onnx]'")

import nerlib  # noqa: E402
from nerlib import export as export_module  # noqa: E402
from nerlib.cli import evaluate_main, export_main, predict_main, run  # noqa: E402
from nerlib.export import parity_problems  # noqa: E402
from nerlib.prediction import load_predictor  # noqa: E402

from conftest import train_tiny_model  # noqa: E402

# Punctuation, repeated spaces, a newline, an emoji before an entity (offsets count code points), and
# out-of-vocabulary words split into several sub-tokens.
TEXTS = [
    "alice and bob saw acme , an eagle and measles in paris .",
    "🙂 carol  met dave in oslo!\nzurich unknownings near lima?",
    "",
    "flu , malaria and measles with bob in lima .",
]
# Long enough to need several windows of 16 sub-tokens.
LONG_TEXT = " ".join(["alice bob met carol in paris , then measles near oslo ."] * 12)


def run_quietly(main, argv) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(main, argv)
    return SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder):
    """A tiny trained model, exported once through the command (fp32 and int8, parity on its test split)."""
    root = tmp_path_factory.mktemp("export")
    model_dir, data = train_tiny_model(root, tiny_encoder)
    onnx_dir = str(root / "onnx")
    # What the command logs, as a user sees it at INFO (the exporter's libraries included).
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        result = run_quietly(export_main, [model_dir, onnx_dir, "--onnx", "--int8"])
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    assert result.code == 0, result.err
    return SimpleNamespace(model_dir=model_dir, data=data, onnx_dir=onnx_dir, printed=result.out, root=root,
                           logged=records)


def test_the_export_logs_its_steps_but_not_every_graph_rewrite_of_the_exporter(exported):
    ours = [r.getMessage() for r in exported.logged if r.name.startswith("nerlib")]
    assert "exporting to ONNX" in ours and "quantising to int8" in ours
    rewrites = [r for r in exported.logged if r.name.split(".")[0] in ("onnxscript", "onnx_ir")
                and r.levelno < logging.WARNING]
    assert not rewrites, [r.getMessage() for r in rewrites[:5]]


def test_exported_folder_holds_what_prediction_needs_and_no_pytorch_weights(exported):
    files = set(os.listdir(exported.onnx_dir))
    assert {"model.onnx", "model_int8.onnx", "config.json", "nerlib_config.json", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    with open(os.path.join(exported.onnx_dir, "config.json"), encoding="utf-8") as handle:
        id2label = json.load(handle)["id2label"]
    assert [id2label[str(i)] for i in range(len(id2label))] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-DIS", "I-DIS"]
    # The folder alone predicts: moved away from everything else, with the onnx backend chosen by itself.
    alone = str(exported.root / "moved" / "onnx")
    shutil.copytree(exported.onnx_dir, alone)
    predictor = load_predictor(alone)
    assert predictor.backend == "onnx" and predictor.label_set.classes == ("PER", "LOC", "DIS")
    (mine,), (reference,) = predictor(["alice in paris ."]), nerlib.predict(exported.model_dir, ["alice in paris ."],
                                                                             device="cpu")
    assert mine and [(e.type, e.start, e.end) for e in mine] == [(e.type, e.start, e.end) for e in reference]


def test_exported_graph_has_dynamic_batch_and_sequence_axes(exported):
    """ONNX Runtime, called directly, against the PyTorch model's logits, at shapes other than the export's."""
    import onnxruntime
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(exported.model_dir).eval()
    session = onnxruntime.InferenceSession(os.path.join(exported.onnx_dir, "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch, length in ((1, 3), (5, 40), (3, model.config.max_position_embeddings)):
        ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # a padded row
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
        (logits,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        assert logits.shape == (batch, length, model.config.num_labels)
        np.testing.assert_allclose(logits, expected, atol=2e-5)


def test_onnx_backend_gives_the_entities_and_offsets_of_pytorch(exported):
    texts = TEXTS + [LONG_TEXT]
    for max_length in (None, 16):  # the trained window, and many windows per text
        torch_entities = nerlib.predict(exported.model_dir, texts, device="cpu", max_length=max_length)
        onnx_entities = nerlib.predict(exported.onnx_dir, texts, max_length=max_length)
        assert sum(map(len, torch_entities)) >= 5  # the model found entities, so the comparison means something
        for mine, reference in zip(onnx_entities, torch_entities):
            assert [(e.type, e.text, e.start, e.end, e.word_start, e.word_end) for e in mine] == \
                   [(e.type, e.text, e.start, e.end, e.word_start, e.word_end) for e in reference]
            assert [e.score for e in mine] == pytest.approx([e.score for e in reference], abs=1e-5)


def test_predict_cli_on_an_exported_folder_chooses_onnx_and_matches_torch(exported, capsys):
    assert run(predict_main, [exported.model_dir, "--device", "cpu", *TEXTS]) == 0
    from_torch = capsys.readouterr().out
    assert run(predict_main, [exported.onnx_dir, *TEXTS]) == 0
    from_onnx = capsys.readouterr().out
    rows = [json.loads(line) for line in from_onnx.splitlines()]
    reference = [json.loads(line) for line in from_torch.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    for row, expected in zip(rows, reference):
        assert [{k: v for k, v in e.items() if k != "score"} for e in row["entities"]] == \
               [{k: v for k, v in e.items() if k != "score"} for e in expected["entities"]]
    assert run(predict_main, [exported.onnx_dir, "--int8", TEXTS[0]]) == 0
    (int8_row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert int8_row["text"] == TEXTS[0] and all(TEXTS[0][e["start"]:e["end"]] == e["text"] for e in int8_row["entities"])


def test_parity_report_matches_evaluation_of_each_model(exported):
    """The figures the export printed and recorded are what `evaluate` measures on each model."""
    with open(os.path.join(exported.onnx_dir, "nerlib_config.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    parity = record["export"]["parity"]
    assert record["label_set"] == "PER,LOC,DIS" and record["export"]["files"] == ["model.onnx", "model_int8.onnx"]
    rows = {row["name"]: row for row in parity["rows"]}
    assert rows["onnx fp32"]["disagreements"] == 0
    torch_f1 = nerlib.evaluate(exported.model_dir, device="cpu")["f1"]
    assert parity["torch_f1"] == pytest.approx(torch_f1, abs=1e-12)
    assert rows["onnx fp32"]["f1"] == pytest.approx(nerlib.evaluate(exported.onnx_dir)["f1"], abs=1e-12)
    assert rows["onnx int8"]["f1"] == pytest.approx(nerlib.evaluate(exported.onnx_dir, int8=True)["f1"], abs=1e-12)
    assert parity["sentences"] == 24  # the fixture's whole English test split
    printed = exported.printed
    assert "parity with PyTorch on the test split" in printed
    assert f"onnx fp32    {rows['onnx fp32']['f1']:>12.4f}                  0   identical entities" in printed
    assert f"onnx int8    {rows['onnx int8']['f1']:>12.4f}" in printed and "model_int8.onnx" in printed


def test_int8_model_is_the_quantised_graph(exported):
    """--int8 runs model_int8.onnx: logits near the fp32 model's but not equal to them (weights rounded to int8)."""
    from nerlib.modeling import load_trained

    fp32 = load_trained(exported.onnx_dir, backend="onnx")[1]
    int8 = load_trained(exported.onnx_dir, backend="onnx", int8=True)[1]
    assert os.path.basename(int8.path) == "model_int8.onnx"
    assert os.path.getsize(int8.path) < os.path.getsize(fp32.path)
    ids = torch.randint(5, fp32.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    full, quantised = fp32(input_ids=ids).logits, int8(input_ids=ids).logits
    # Rounded, not replaced: the differences are small beside the logits themselves.
    assert not torch.equal(full, quantised) and (full - quantised).abs().mean() < 0.2 * full.abs().mean()


def test_evaluate_cli_runs_the_int8_model(exported, capsys):
    assert run(evaluate_main, [exported.onnx_dir, "--int8", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["words"] == metrics["words_in_split"] > 0


def _broken_export(good_onnx: str):
    """An exporter whose graph computes something else: the fixture's ONNX file with the B-PER bias raised."""
    import onnx
    from onnx import numpy_helper

    def export_onnx(model, path, opset=None):
        graph = onnx.load(good_onnx)
        (bias,) = [t for t in graph.graph.initializer if "classifier" in t.name and "bias" in t.name]
        values = numpy_helper.to_array(bias).copy()
        values[1] += 50.0  # every word becomes B-PER
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        onnx.save(graph, path)

    return export_onnx


def test_failed_parity_exits_5_keeps_the_partial_export_and_writes_nothing_else(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "export_onnx", _broken_export(os.path.join(exported.onnx_dir, "model.onnx")))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")  # one text a line; empty lines are skipped
    lines = [line for line in "\n".join(TEXTS).split("\n") if line.strip()]
    out = str(tmp_path / "out")
    result = run_quietly(export_main, [exported.model_dir, out, "--onnx", "--parity-texts", str(texts)])
    assert result.code == 5
    (line,) = result.err.strip().splitlines()
    assert f"parity check failed: the fp32 ONNX model's entities differ from PyTorch's in {len(lines)} texts" in line
    assert not os.path.exists(out) and os.path.isfile(os.path.join(out + ".partial", "model.onnx"))


def test_parity_on_texts_passes_with_the_real_graph(exported, tmp_path, monkeypatch):
    good = os.path.join(exported.onnx_dir, "model.onnx")
    monkeypatch.setattr(export_module, "export_onnx", lambda model, path, opset=None: shutil.copyfile(good, path))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS + [LONG_TEXT]) + "\n", encoding="utf-8")
    lines = [line for line in "\n".join(TEXTS + [LONG_TEXT]).split("\n") if line.strip()]
    out = str(tmp_path / "out")
    result = run_quietly(export_main, [exported.model_dir, out, "--onnx", "--parity-texts", str(texts)])
    assert result.code == 0, result.err
    entities = sum(map(len, nerlib.predict(exported.model_dir, lines, device="cpu")))
    assert f"parity with PyTorch on the {len(lines)} texts ({entities} entities found by PyTorch)" in result.out
    assert "onnx fp32          1.0000                  0   identical entities; scores within" in result.out
    assert sorted(os.listdir(out)) == sorted(set(os.listdir(exported.onnx_dir)) - {"model_int8.onnx"})


@pytest.mark.parametrize("parity, problem", [
    ({"torch_f1": 0.8, "rows": [{"name": "onnx fp32", "disagreements": 2, "f1": 0.8}]}, "differ from PyTorch's in 2 sentences"),
    ({"torch_f1": 0.80, "rows": [{"name": "onnx int8", "disagreements": 9, "f1": 0.794}]}, "0.60 points below"),
    ({"torch_f1": 0.80, "rows": [{"name": "onnx int8", "disagreements": 9, "f1": 0.796}]}, None),
    ({"rows": [{"name": "onnx int8", "disagreements": 3, "f1": 0.5}]}, None),  # texts: no gold, no F1 limit
    ({"rows": [{"name": "onnx fp32", "disagreements": 1, "f1": 0.9}]}, "differ from PyTorch's in 1 texts"),
])
def test_parity_limits(parity, problem):
    problems = parity_problems(parity, max_f1_drop=0.5)
    assert (problem in problems[0]) if problem else problems == []


def test_export_command_errors_are_one_line(exported, tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    cases = [
        ([exported.model_dir, str(tmp_path / "a")], "choose the format to export to: --onnx"),
        ([exported.model_dir, str(full), "--onnx"], "exists and is not empty; pass --overwrite"),
        ([str(tmp_path / "nowhere"), str(tmp_path / "b"), "--onnx"], "model folder does not exist"),
        ([exported.model_dir, str(tmp_path / "c"), "--onnx", "--parity-texts", str(tmp_path / "missing.txt")],
         "missing.txt: cannot read"),
        ([exported.model_dir, str(tmp_path / "d"), "--onnx", "--parity-samples", "0"], "--parity-samples must be at least 1"),
        ([exported.model_dir, str(tmp_path / "e"), "--onnx", "--parity-data", str(tmp_path / "no-data")], "no-data"),
    ]
    for argv, message in cases:
        result = run_quietly(export_main, argv)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, (argv, result.err)
    assert (full / "keep.txt").read_text() == "x" and not os.path.exists(tmp_path / "e")
    # A missing optional package names the extra that brings it.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = run_quietly(export_main, [exported.model_dir, str(tmp_path / "f"), "--onnx"])
    assert result.code == 2 and "pip install 'nerlib[onnx]'" in result.err and len(result.err.strip().splitlines()) == 1
    result = run_quietly(predict_main, [exported.onnx_dir, "alice"])
    assert result.code == 2 and "the onnx backend needs onnxruntime" in result.err and "nerlib[onnx]" in result.err


def test_backend_errors_are_one_line(exported):
    cases = [
        ([exported.onnx_dir, "--backend", "torch", "x"], "an exported ONNX folder holds no PyTorch weights"),
        ([exported.model_dir, "--backend", "onnx", "x"], "no model.onnx"),
        ([exported.model_dir, "--int8", "x"], "--int8 needs the onnx backend"),
        ([exported.onnx_dir, "--amp", "x"], "--amp applies to the torch backend"),
    ]
    for argv, message in cases:
        result = run_quietly(predict_main, argv)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, (argv, result.err)
