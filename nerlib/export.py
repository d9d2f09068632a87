"""Export a trained model folder to ONNX (and int8), then check it predicts what PyTorch predicts.

    report = nerlib.export.export("runs/five", "runs/five-onnx", int8=True)

The exported folder alone predicts: `model.onnx`, `model_int8.onnx` with `int8`, the tokenizer,
`config.json` (labels) and `nerlib_config.json` (label set, training configuration, and what
the export and its parity check found). It is written beside its destination and renamed into
place only when the parity check passes.

The parity check runs the PyTorch model and the exported ones through the same inference path on
a data split (F1 against the gold tags) or on texts: the fp32 ONNX model must give exactly the
PyTorch model's entities; for int8 the F1 difference and the count of disagreeing sentences or
texts are reported, and on a split an F1 drop above `max_f1_drop` points fails the check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .cache import resolve_cache_dir
from .data import Split, load_split
from .errors import ConfigError, NerlibError, import_optional
from .config import TrainConfig
from .devices import Precision
from .evaluation import evaluate_prepared
from .inference import prepare
from .labels import LabelSet, entity_spans, tags_of
from .modeling import NERLIB_CONFIG_FILE, load_for_inference, load_trained, pad_token_id, read_nerlib_info
from .onnx_backend import EXTRA, INT8_FILE, ONNX_FILE, export_onnx, quantize_int8
from .prediction import Entity, predict_loaded

logger = logging.getLogger(__name__)

EXPORT_KEY = "export"  # where nerlib_config.json records the export


class ParityFailed(NerlibError):
    """The exported model predicts differently from the PyTorch model beyond what is allowed."""

    exit_code = 5


@dataclass(frozen=True)
class ParityRow:
    """One exported model against the PyTorch model.

    Attributes:
        name: `onnx fp32` or `onnx int8`.
        disagreements: sentences (split) or texts whose entities differ from PyTorch's.
        f1: F1 against the gold tags (split), or of its entities taken against PyTorch's (texts).
        max_score_diff: the largest difference of an entity score from PyTorch's where both found
            the same entities (texts only; None on a split).
    """

    name: str
    disagreements: int
    f1: float
    max_score_diff: float | None = None


def export(
    model_dir: str,
    output_dir: str,
    int8: bool = False,
    parity_texts: Sequence[str] | None = None,
    parity_data: str | None = None,
    parity_split: str = "test",
    parity_samples: int | None = None,
    lang: str | None = None,
    max_f1_drop: float = 0.5,
    batch_size: int = 64,
    overwrite: bool = False,
) -> dict:
    """Export `model_dir` to ONNX in `output_dir`, then check parity with the PyTorch model.

    Args:
        model_dir: a folder written by `nerlib.train` (or any token-classification model folder).
        output_dir: the folder to write; it must not exist, or be empty, unless `overwrite`.
        int8: also write a dynamically quantised int8 model.
        parity_texts: check on these texts; otherwise on a data split.
        parity_data, parity_split, parity_samples, lang: the split to check on (default: the
            training data's test split, every sentence).
        max_f1_drop: on a split, the most F1 points the int8 model may lose against PyTorch.
        batch_size: windows per inference batch in the check.
        overwrite: replace an existing `output_dir`.

    Returns:
        What the export wrote and found: `output_dir`, `files`, `parity` (the check's source,
        `torch_f1` on a split, and one row per exported model), `seconds`.

    Raises:
        ConfigError: a bad output folder or no parity source.
        ParityFailed: fp32 entities differ from PyTorch's, or int8 loses more than `max_f1_drop`.
        NerlibError: the model cannot be loaded or exported, or the parity data is bad.
    """
    started = time.perf_counter()
    for module in ("onnx", "onnxscript", "onnxruntime"):  # missing packages fail before anything is loaded
        import_optional(module, EXTRA, "ONNX export")
    output_dir = os.path.normpath(output_dir)
    _check_output_dir(output_dir, model_dir, overwrite)
    info = read_nerlib_info(model_dir)  # copied into the export, with a record of it
    loaded = load_for_inference(model_dir, device="cpu", backend="torch")
    tokenizer, model, label_set, window = loaded.tokenizer, loaded.model, loaded.label_set, loaded.max_length
    split = None if parity_texts is not None else _parity_split(loaded.trained, parity_data, parity_split, lang,
                                                                parity_samples)

    partial = output_dir + ".partial"
    try:
        if os.path.exists(partial):
            shutil.rmtree(partial)  # a previous export's leftovers
        os.makedirs(partial)
    except OSError as exc:
        raise ConfigError(f"{partial}: cannot write the export ({exc.strerror})") from None
    try:
        files = _write_export(model, tokenizer, partial, int8)
        logger.info("checking parity with PyTorch on %s",
                    f"{len(parity_texts)} texts" if split is None else f"the {split.name} split of {split.source}")
        exported = {"onnx fp32": load_trained(partial, backend="onnx")[1]}
        if int8:
            exported["onnx int8"] = load_trained(partial, backend="onnx", int8=True)[1]
        if split is None:
            parity = _parity_on_texts(tokenizer, model, label_set, exported, list(parity_texts), window, batch_size)
        else:
            parity = _parity_on_split(tokenizer, model, label_set, exported, split, window, batch_size)
        record = {**info, EXPORT_KEY: {"files": files, "exported_from": os.path.basename(os.path.normpath(model_dir)),
                                       "torch": torch.__version__, "parity": parity}}
        with open(os.path.join(partial, NERLIB_CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise

    problems = parity_problems(parity, max_f1_drop)
    if problems:
        raise ParityFailed(f"parity check failed: {'; '.join(problems)}; the export is kept in {partial} "
                           f"for inspection")
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)
    return {"output_dir": output_dir, "files": files, "parity": parity,
            "seconds": round(time.perf_counter() - started, 1)}


def _check_output_dir(output_dir: str, model_dir: str, overwrite: bool) -> None:
    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise ConfigError(f"{output_dir}: export into another folder than the model's")
    if os.path.isfile(output_dir):
        raise ConfigError(f"{output_dir}: is a file; the export needs a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConfigError(f"{output_dir}: exists and is not empty; pass --overwrite to replace it")


def _write_export(model, tokenizer, folder: str, int8: bool) -> list[str]:
    """The ONNX model(s), the model's configuration and the tokenizer; returns the model files."""
    logger.info("exporting to ONNX")
    export_onnx(model, os.path.join(folder, ONNX_FILE))
    files = [ONNX_FILE]
    if int8:
        logger.info("quantising to int8")
        quantize_int8(os.path.join(folder, ONNX_FILE), os.path.join(folder, INT8_FILE))
        files.append(INT8_FILE)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return files


def _parity_split(trained: TrainConfig | None, data: str | None, split: str, lang: str | None,
                  samples: int | None) -> Split:
    """The split to check on, read before the export so that a bad source fails at once."""
    data = data or (trained.data if trained is not None else None)
    if not data:
        raise ConfigError("no parity data: pass --parity-texts FILE or --parity-data (the model records no "
                          "training data)")
    return load_split(data, split, lang or (trained.lang if trained is not None else "en")).head(samples)


def _entities_of(label_ids: np.ndarray, labels: Sequence[str]) -> list[tuple[str, int, int]]:
    return entity_spans(tags_of(label_ids, labels))


def _parity_on_split(tokenizer, model, label_set: LabelSet, exported: dict, split: Split, window: int,
                     batch_size: int) -> dict:
    """F1 against gold and sentences whose entities differ from PyTorch's, through evaluation's path."""
    prepared = prepare(split, label_set, tokenizer, window, resolve_cache_dir(True, None))
    pad_id = pad_token_id(tokenizer)
    cpu = torch.device("cpu")
    fp32 = Precision(cpu, None)
    reference_metrics, reference_ids = evaluate_prepared(model, prepared, label_set, pad_id, batch_size, cpu, fp32)
    labels = label_set.labels
    reference = [_entities_of(ids, labels) for ids in reference_ids]
    rows = []
    for name, onnx_model in exported.items():
        metrics, predicted = evaluate_prepared(onnx_model, prepared, label_set, pad_id, batch_size, cpu, fp32)
        differ = sum(_entities_of(ids, labels) != ref for ids, ref in zip(predicted, reference))
        rows.append(asdict(ParityRow(name, differ, metrics["f1"])))
    return {"on": f"{split.name} split of {split.source}", "sentences": len(split.sentences), "words": split.num_words,
            "torch_f1": reference_metrics["f1"], "rows": rows}


def _parity_on_texts(tokenizer, model, label_set: LabelSet, exported: dict, texts: list[str], window: int,
                     batch_size: int) -> dict:
    """Texts whose entities differ from PyTorch's, and the F1 of each model's entities against PyTorch's."""
    reference = predict_loaded(tokenizer, model, label_set, texts, window, batch_size)
    rows = []
    for name, onnx_model in exported.items():
        predicted = predict_loaded(tokenizer, onnx_model, label_set, texts, window, batch_size)
        differ = sum(_spans(mine) != _spans(ref) for mine, ref in zip(predicted, reference))
        score_diffs = [abs(a.score - b.score) for mine, ref in zip(predicted, reference) if _spans(mine) == _spans(ref)
                       for a, b in zip(mine, ref)]
        rows.append(asdict(ParityRow(name, differ, _agreement_f1(predicted, reference),
                                     max(score_diffs, default=0.0))))
    return {"on": f"{len(texts)} texts", "texts": len(texts), "entities": sum(len(e) for e in reference), "rows": rows}


def _spans(entities: list[Entity]) -> list[tuple[str, int, int]]:
    return [(e.type, e.start, e.end) for e in entities]


def _agreement_f1(predicted: list[list[Entity]], reference: list[list[Entity]]) -> float:
    """F1 of predicted entities scored against reference entities (type and offsets must match)."""
    mine = {(i, *span) for i, entities in enumerate(predicted) for span in _spans(entities)}
    theirs = {(i, *span) for i, entities in enumerate(reference) for span in _spans(entities)}
    if not mine and not theirs:
        return 1.0
    hits = len(mine & theirs)
    return 2 * hits / (len(mine) + len(theirs))


def parity_problems(parity: dict, max_f1_drop: float) -> list[str]:
    """Why a parity check fails: fp32 entities that differ, or an int8 F1 drop over the limit (split only)."""
    problems = []
    for row in parity["rows"]:
        unit = "sentences" if "torch_f1" in parity else "texts"
        if row["name"] == "onnx fp32" and row["disagreements"]:
            problems.append(f"the fp32 ONNX model's entities differ from PyTorch's in {row['disagreements']} {unit}")
        if row["name"] == "onnx int8" and "torch_f1" in parity:
            drop = 100 * (parity["torch_f1"] - row["f1"])
            if drop > max_f1_drop:
                problems.append(f"the int8 model's F1 is {drop:.2f} points below PyTorch's (at most {max_f1_drop} "
                                f"allowed: --max-f1-drop)")
    return problems


def format_parity(parity: dict) -> str:
    """The parity check as a small table."""
    on_split = "torch_f1" in parity
    size = (f"{parity['sentences']} sentences, {parity['words']} words" if on_split
            else f"{parity['entities']} entities found by PyTorch")
    unit = "sentences" if on_split else "texts"
    f1_title = "F1" if on_split else "F1 vs torch"
    lines = [f"parity with PyTorch on the {parity['on']} ({size}):",
             f"{'model':<12} {f1_title:>12} {'differ from torch':>18}   ",
             f"{'torch fp32':<12} {parity['torch_f1'] if on_split else 1.0:>12.4f} {'-':>18}"]
    for row in parity["rows"]:
        note = "identical entities" if row["disagreements"] == 0 else f"{unit} with other entities"
        if on_split:
            note += f"; F1 {100 * (row['f1'] - parity['torch_f1']):+.2f} points"
        if row.get("max_score_diff") is not None:
            note += f"; scores within {row['max_score_diff']:.1e}"
        lines.append(f"{row['name']:<12} {row['f1']:>12.4f} {row['disagreements']:>18}   {note}")
    return "\n".join(lines)
