"""Scoring a saved model on a split: `evaluate`, `error_report`, and `evaluate_prepared`, the
predict-and-score step that training's validation and test passes share with them.

Predictions come from `nerlib.inference`, scores from `nerlib.scoring`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .cache import resolve_cache_dir
from .config import TrainConfig, check_numbers
from .data import ReadOptions, Split, canonical_split, load_split, tag_ids
from .devices import Precision
from .distributed import World
from .errors import ConfigError, DataError
from .html_report import write_report
from .inference import Prepared, predict_words, prepare
from .labels import LabelSet, tags_of
from .modeling import load_for_inference, read_trained_config
from .reports import SCORE_KEYS, build_error_report, confusion_counts, plot_confusion, surface_forms
from .scoring import score_predictions, score_split
from .text import json_line

logger = logging.getLogger(__name__)


def evaluate_prepared(model, prepared: Prepared, label_set: LabelSet, pad_id: int, batch_size: int,
                      device: torch.device, precision: Precision, strict: bool = False,
                      world: World | None = None) -> tuple[dict, list[np.ndarray]]:
    """Predict every word of a prepared split and score it; returns (metrics, predicted ids).

    Under torchrun (`world`) the ranks share the windows and every rank gets all predictions.
    """
    predicted = predict_words(model, prepared.encoded, pad_id, batch_size, device, precision, world).label_ids
    metrics = score_split(prepared.encoded.gold, predicted, label_set.labels,
                          [s.lang for s in prepared.split.sentences], strict=strict)
    if metrics["words"] != prepared.split.num_words:  # pragma: no cover - guarded by construction
        raise RuntimeError(f"scored {metrics['words']} words of {prepared.split.num_words}")
    return metrics, predicted


def prepare_output_file(path: str) -> None:
    """Make sure an output file can be written before the work that fills it: missing folders are created.

    The file is opened for appending (created and removed again where it did not exist), so a folder
    that takes no files fails now, and an existing file is left as it is.

    Raises:
        ConfigError: `path` is a folder, its folder cannot be created, or the file cannot be opened.
    """
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise ConfigError(f"{path}: cannot create its folder {folder} ({reason})") from None
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
        if not existed:
            os.remove(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be written ({exc.strerror})") from None


def evaluate(
    model_dir: str,
    data: str | None = None,
    split: str = "test",
    lang: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    max_samples: int | None = None,
    device: str = "auto",
    amp: bool = False,
    amp_dtype: str = "auto",
    strict: bool = False,
    predictions_out: str | None = None,
    confusion_out: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    report_out: str | None = None,
    report_json_out: str | None = None,
    report_sentences: int = 100,
    tag_scheme: str | None = None,
    token_column: int | None = None,
    tag_column: int | None = None,
    on_overlap: str | None = None,
    backend: str = "auto",
    int8: bool = False,
    trust_remote_code: bool = False,
    also_strict: bool = False,
) -> dict:
    """Score a saved model on one split of a data source.

    Args:
        model_dir: a folder written by `nerlib.train` (or any token-classification model).
        data: the data source; by default the one the model was trained on.
        split: `train`, `val` or `test`.
        lang: language of hub-layout files; by default the training language, else `en`.
        batch_size: windows per inference batch.
        max_length: window size; by default the training one.
        max_samples: score only the first N sentences.
        device, amp, amp_dtype: as for training.
        strict: score entities by strict IOB2 rules instead of seqeval's default.
        predictions_out: write one JSON line a sentence, `{"tokens", "gold", "pred"}`.
        confusion_out: draw the entity confusion matrix into this image file (needs matplotlib;
            without it a warning says how to install it). Missing folders of every output file are
            created before the evaluation.
        cache, cache_dir: the tokenisation cache, as for training (`TrainConfig.cache`, `cache_dir`).
        report_out, report_json_out: write the error report (`error_report`) as HTML, as JSON.
        report_sentences: how many of the sentences with the most errors the report lists.
        tag_scheme, token_column, tag_column, on_overlap: how the data is read, as for training;
            by default the training run's when its data is scored, else the defaults. Data in any
            tag scheme is converted to BIO, so entity spans are scored whatever the scheme.
        backend, int8: `torch`, `onnx` or `auto` (`onnx` for a folder written by `nerlib export
            --onnx`), and with onnx whether to run its int8 model.
        trust_remote_code: allow model code from the folder (a model trained with it needs it).
        also_strict: also score the same predictions by strict IOB2 rules, into `strict_metrics`
            (the model runs once).

    Returns:
        `precision`, `recall`, `f1`, `accuracy`, `words`, `per_type`, plus `split`, `data`,
        `sentences` (scored), `words_in_split` (the words of those sentences) and
        `sentences_in_split` (all of the split's, more than `sentences` under `max_samples`);
        with `also_strict`, `strict_metrics` (`precision`, `recall`, `f1`, `accuracy`, `words`,
        `per_type` by strict IOB2 rules).

    Raises:
        NerlibError: a numeric option out of range, missing or damaged model folder, bad data, or an
            output file that cannot be written.
    """
    check_numbers(report_sentences=report_sentences)
    for path in (predictions_out, confusion_out, report_out, report_json_out):
        if path:
            prepare_output_file(path)  # a bad path fails now, not after the evaluation
    run = _predict_split(model_dir, data, split, lang, batch_size, max_length, max_samples, device, amp, amp_dtype,
                         strict, cache, cache_dir, tag_scheme, token_column, tag_column, on_overlap, backend, int8,
                         trust_remote_code)
    loaded, prepared, predicted, label_set = run.loaded, run.prepared, run.predicted, run.label_set
    if predictions_out:
        labels = label_set.labels
        try:
            with open(predictions_out, "w", encoding="utf-8") as handle:
                for sentence, gold, pred in zip(loaded.sentences, prepared.encoded.gold, predicted):
                    handle.write(json_line({"tokens": list(sentence.tokens), "gold": tags_of(gold, labels),
                                            "pred": tags_of(pred, labels)}))
        except OSError as exc:
            raise ConfigError(f"{predictions_out}: cannot write predictions ({exc.strerror})") from None
    if confusion_out:
        labels = label_set.labels
        confusion = confusion_counts([tags_of(ids, labels) for ids in prepared.encoded.gold],
                                     [tags_of(ids, labels) for ids in predicted], label_set.classes)
        try:
            drawn = plot_confusion(confusion, confusion_out, f"{loaded.name} split: entity confusion")
        except (OSError, ValueError) as exc:  # a full disk; an image format matplotlib does not write
            raise ConfigError(f"{confusion_out}: cannot draw the confusion matrix "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
        if drawn:
            logger.info("drew the entity confusion matrix into %s", confusion_out)
    if report_out or report_json_out:
        write_report(_build_report(model_dir, run, report_sentences), report_out, report_json_out)
        logger.info("wrote the error report to %s", " and ".join(p for p in (report_out, report_json_out) if p))
    result = {**run.metrics, "split": loaded.name, "data": run.data, "sentences": len(loaded.sentences),
              "words_in_split": loaded.num_words, "sentences_in_split": run.sentences_in_split, "strict": strict}
    if also_strict:
        strict_scores = score_predictions(prepared.encoded.gold, predicted, label_set.labels, strict=True)
        result["strict_metrics"] = {key: strict_scores[key] for key in SCORE_KEYS}
    return result


def error_report(model_dir: str, top: int = 100, **options) -> dict:
    """The error analysis of a saved model on one split: what `evaluate(..., report_json_out=...)` writes.

    Args:
        model_dir: a folder written by `nerlib.train` (or any token-classification model).
        top: how many of the sentences with the most errors to list.
        options: `evaluate`'s `data`, `split`, `lang`, `batch_size`, `max_length`, `max_samples`,
            `device`, `amp`, `amp_dtype`, `cache`, `cache_dir`, `tag_scheme`, `token_column`,
            `tag_column`, `on_overlap`.

    Returns:
        `nerlib.reports.build_error_report`'s dict: `scores` (`lenient`: the figures `evaluate`
        returns, `strict`), `outcomes` (exact, wrong type, wrong boundary, wrong boundary and
        type, missed, spurious: per type and in total), `confusion`, `slices` (seen in training
        or not, entity length, sentence length, windows per sentence) and `worst_sentences`.

    Raises:
        NerlibError: missing model folder or bad data.
    """
    check_numbers(report_sentences=top)
    return _build_report(model_dir, _predict_split(model_dir, **options), top)


@dataclass
class _Predicted:
    """One split of a data source predicted by a saved model, and what it was read with."""

    loaded: Split
    prepared: Prepared
    predicted: list[np.ndarray]
    metrics: dict
    label_set: LabelSet
    data: str
    trained: TrainConfig | None  # None for a folder nerlib did not train
    sentences_in_split: int  # all of the split's, more than `loaded` holds under `max_samples`


def _predict_split(model_dir: str, data: str | None = None, split: str = "test", lang: str | None = None,
                   batch_size: int = 64, max_length: int | None = None, max_samples: int | None = None,
                   device: str = "auto", amp: bool = False, amp_dtype: str = "auto", strict: bool = False,
                   cache: bool = True, cache_dir: str | None = None, tag_scheme: str | None = None,
                   token_column: int | None = None, tag_column: int | None = None,
                   on_overlap: str | None = None, backend: str = "auto", int8: bool = False,
                   trust_remote_code: bool = False) -> _Predicted:
    check_numbers(batch_size=batch_size, max_length=max_length, max_samples=max_samples, token_column=token_column,
                  tag_column=tag_column)
    trained = read_trained_config(model_dir)
    reading = {"tag_scheme": tag_scheme, "token_column": token_column, "tag_column": tag_column,
               "on_overlap": on_overlap}
    if data is None and trained is not None:
        # The training run's own data: its file for this split (--test FILE), else its --data.
        data = trained.split_sources()[canonical_split(split)]
        reading = {key: getattr(trained, key) if value is None else value for key, value in reading.items()}
    if not data:
        raise ConfigError(f"{model_dir}: no record of the {split} data it was trained with; pass --data")
    options = ReadOptions(**{key: value for key, value in reading.items() if value is not None})
    lang = lang or (trained.lang if trained is not None else "en")
    loaded_model = load_for_inference(model_dir, device, amp, amp_dtype, max_length, backend, int8, trust_remote_code)
    whole_split = load_split(data, split, lang, options)
    loaded = whole_split.head(max_samples)
    prepared = prepare(loaded, loaded_model.label_set, loaded_model.tokenizer, loaded_model.max_length,
                       resolve_cache_dir(cache, cache_dir))
    metrics, predicted = evaluate_prepared(loaded_model.model, prepared, loaded_model.label_set, loaded_model.pad_id,
                                           batch_size, loaded_model.device, loaded_model.precision, strict)
    logger.info("%s: scored %d of %d words in %d sentences", loaded.source, metrics["words"], loaded.num_words,
                len(loaded.sentences))
    return _Predicted(loaded, prepared, predicted, metrics, loaded_model.label_set, data, trained,
                      len(whole_split.sentences))


def _build_report(model_dir: str, run: _Predicted, top: int) -> dict:
    """The error report of a predicted split; the training split (as trained on) gives the seen surface forms."""
    train_forms = None
    trained = run.trained
    if trained is not None:
        try:
            train = load_split(trained.split_sources()["train"], "train", trained.lang, trained.read_options()).head(
                trained.max_train_samples)
            train_forms = surface_forms(train.sentences, [tag_ids(s, run.label_set) for s in train.sentences],
                                        run.label_set)
        except DataError as exc:
            logger.warning("the training split cannot be read (%s): the report has no seen/unseen slice", exc)
    else:
        logger.warning("%s: no record of the training data: the report has no seen/unseen slice", model_dir)
    encoded = run.prepared.encoded
    windows = np.bincount(encoded.sentence_index, minlength=len(run.loaded.sentences))
    return build_error_report(run.loaded.sentences, encoded.gold, run.predicted, run.label_set, windows, train_forms,
                              model_dir, trained.model if trained is not None else "", run.data, run.loaded.name,
                              top)
