"""Batched inference mapped back to words, and seqeval metrics.

The overall precision, recall and F1 are seqeval's micro averages over entities and the accuracy
is word-level, the definitions behind the original notebook's table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import check_numbers
from .errors import ConfigError
from .features import IGNORE_INDEX, Encoded, collate, sorted_batches, uniform_length_batches
from .runtime import pad_multiple
from .text import json_line

logger = logging.getLogger(__name__)

# CPU inference runs in up to this many Python threads (streams); measured with two.
MAX_INFERENCE_STREAMS = 4


def predict_windows(
    model: torch.nn.Module,
    encoded: Encoded,
    windows: Sequence[int] | np.ndarray,
    pad_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    with_scores: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """Predict a label id for every word of some windows of a split.

    The argmax at each word's first sub-token is gathered with one mask per batch. On CUDA the
    windows are batched longest first. On CPUs every batch holds windows of a single length, so
    it needs no padding and no attention mask, and with two or more torch threads the batches are
    shared among that many Python threads (at most `MAX_INFERENCE_STREAMS`, the torch threads
    divided among them; fp32 only): small inference batches keep two cores busier that way than
    with intra-op threads.

    Args:
        model: a token-classification model, or an `OnnxTokenClassifier` (one stream: ONNX
            Runtime divides its threads itself).
        encoded: the split's windows.
        windows: the indices of the windows to predict (a rank's shard, or all of them).
        pad_id, batch_size, device, autocast: padding id, windows per batch, where and how to compute.

    Returns:
        For each window of `windows`, in that order, its words' predicted label ids; with
        `with_scores`, also their probabilities (softmax in float32 at each first sub-token).
    """
    device = torch.device(device)
    windows = np.asarray(windows, dtype=np.int64)
    was_training = model.training
    model.eval()
    words_per_window = encoded.words_per_window()
    result: list[np.ndarray | None] = [None] * len(windows)
    scores: list[np.ndarray | None] = [None] * len(windows)
    pad_to = pad_multiple(device)
    lengths = encoded.lengths[windows]
    on_cpu = device.type == "cpu"
    batches = uniform_length_batches(lengths, batch_size) if on_cpu else sorted_batches(lengths, batch_size)

    @torch.inference_mode()
    def predict_batches(positions_of_batches: list[np.ndarray]) -> None:
        # Inference mode and autocast are per thread: entered here, in the thread that computes.
        for positions in positions_of_batches:
            batch_indices = windows[positions]
            batch = collate([encoded.input_ids[i] for i in batch_indices],
                            [encoded.labels[i] for i in batch_indices], pad_id, pad_to)
            unpadded = bool(batch["attention_mask"].all())
            with autocast if autocast is not None else contextlib.nullcontext():
                logits = model(
                    input_ids=batch["input_ids"].to(device, non_blocking=True),
                    # No mask at all when nothing is padded: the attention takes its unmasked kernel.
                    attention_mask=None if unpadded else batch["attention_mask"].to(device, non_blocking=True),
                ).logits  # (batch, seq, num_labels)
            first_subtokens = batch["labels"] != IGNORE_INDEX
            ends = np.cumsum(words_per_window[batch_indices])[:-1]
            if with_scores:
                best, predictions = logits.float().softmax(dim=-1).cpu().max(dim=-1)
                for position, window_scores in zip(positions, np.split(best[first_subtokens].numpy(), ends)):
                    scores[position] = window_scores
            else:
                predictions = logits.argmax(dim=-1).cpu()
            # Row-major order of the mask = window by window, word by word within a window.
            flat = predictions[first_subtokens].numpy()
            for position, window_words in zip(positions, np.split(flat, ends)):
                result[position] = window_words

    threads = torch.get_num_threads()
    try:
        # A torch.autocast object cannot be entered by two threads at once: fp32 only.
        fp32 = autocast is None or isinstance(autocast, contextlib.nullcontext)
        # Streams make up for eager torch's Python between kernels; ONNX Runtime divides its threads itself.
        eager = isinstance(model, torch.nn.Module)
        if on_cpu and fp32 and eager and threads > 1 and len(batches) > 1:
            # Streams hold the GIL between kernels, so many cores get a few streams of several threads.
            streams = min(threads, MAX_INFERENCE_STREAMS)
            torch.set_num_threads(threads // streams)
            with ThreadPoolExecutor(streams, thread_name_prefix="nerlib-predict") as pool:
                # Interleaved shares: each stream gets long and short batches alike.
                for done in [pool.submit(predict_batches, batches[i::streams]) for i in range(streams)]:
                    done.result()
        else:
            predict_batches(batches)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return (result, scores) if with_scores else result


def assemble_words(encoded: Encoded, windows: Sequence[int] | np.ndarray,
                   window_predictions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Put per-window word predictions back into sentences.

    Args:
        encoded: the split's windows.
        windows: window indices, together covering the split.
        window_predictions: for each of `windows`, its words' predicted label ids.

    Returns:
        For each sentence, its words' predictions (label ids, or any per-word values).

    Raises:
        RuntimeError: a word predicted never or more than once (windows missing or repeated).
    """
    sentence_offsets = np.concatenate([[0], np.cumsum(encoded.sentence_lengths)])
    # Global position of each window's first word in the flat array of the split's words.
    window_offsets = sentence_offsets[encoded.sentence_index] + encoded.word_start
    dtype = window_predictions[0].dtype if len(window_predictions) else np.int64
    flat = np.zeros(int(sentence_offsets[-1]), dtype=dtype)
    times_predicted = np.zeros(len(flat), dtype=np.int64)
    for window, predicted in zip(windows, window_predictions):
        start = window_offsets[window]
        flat[start:start + len(predicted)] = predicted
        times_predicted[start:start + len(predicted)] += 1
    if len(windows) != len(window_predictions) or (times_predicted != 1).any():
        raise RuntimeError(f"{int((times_predicted == 0).sum())} words received no prediction and "
                           f"{int((times_predicted > 1).sum())} more than one")
    return np.split(flat, sentence_offsets[1:-1])


def predict_encoded(
    model: torch.nn.Module,
    encoded: Encoded,
    pad_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> list[np.ndarray]:
    """Predict a label id for every word of every sentence.

    Returns:
        For each sentence, its words' predicted label ids.
    """
    windows = np.arange(len(encoded))
    predictions = predict_windows(model, encoded, windows, pad_id, batch_size, device, autocast)
    return assemble_words(encoded, windows, predictions)


def prepare_output_file(path: str) -> None:
    """Make sure an output file can be written before the work that fills it: missing folders are created.

    Raises:
        ConfigError: `path` is a folder, or its folder cannot be created.
    """
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise ConfigError(f"{path}: cannot create its folder {folder} ({reason})") from None


def compute_metrics(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], strict: bool = False) -> dict:
    """seqeval metrics of predicted against gold tag sequences.

    Args:
        gold_tags: gold BIO tags of each sentence.
        pred_tags: predicted tags, the same shape.
        strict: score entities by strict IOB2 rules (an `I-X` cannot start an entity) instead of
            seqeval's default lenient reading.

    Returns:
        `precision`, `recall`, `f1` (micro averages over entities), `accuracy` (words),
        `words` (words scored) and `per_type` (class -> precision, recall, f1, support).
    """
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    if len(gold_tags) != len(pred_tags) or any(len(g) != len(p) for g, p in zip(gold_tags, pred_tags)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    options = {"mode": "strict", "scheme": IOB2} if strict else {}
    gold, pred = [list(g) for g in gold_tags], [list(p) for p in pred_tags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when a class has no gold or no predicted entity
        report = classification_report(gold, pred, output_dict=True, zero_division=0, **options)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in sorted(report.items())
        if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(gold, pred)) if gold else 0.0,
        "words": sum(len(g) for g in gold),
        "per_type": per_type,
    }


def format_table(metrics: dict, title: str = "") -> str:
    """The overall and per-type metrics as an aligned text table."""
    lines = []
    if title:
        lines.append(title)
    header = f"{'type':<10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for name, row in metrics["per_type"].items():
        lines.append(f"{name:<10} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>9d}")
    lines.append("-" * len(header))
    support = sum(row["support"] for row in metrics["per_type"].values())
    lines.append(f"{'overall':<10} {metrics['precision']:>9.4f} {metrics['recall']:>9.4f} {metrics['f1']:>9.4f} {support:>9d}")
    lines.append(f"accuracy {metrics['accuracy']:.4f} over {metrics['words']} words")
    return "\n".join(lines)


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

    Returns:
        `precision`, `recall`, `f1`, `accuracy`, `words`, `per_type`, plus `split`, `data`,
        `sentences` (scored), `words_in_split` (the words of those sentences) and
        `sentences_in_split` (all of the split's, more than `sentences` under `max_samples`).

    Raises:
        NerlibError: a numeric option out of range, missing or damaged model folder, bad data, or an
            output file that cannot be written.
    """
    check_numbers(report_sentences=report_sentences)
    for path in (predictions_out, confusion_out, report_out, report_json_out):
        if path:
            prepare_output_file(path)  # a bad path fails now, not after the evaluation
    run = _predict_split(model_dir, data, split, lang, batch_size, max_length, max_samples, device, amp, amp_dtype,
                         strict, cache, cache_dir, tag_scheme, token_column, tag_column, on_overlap, backend, int8)
    loaded, prepared, predicted, label_set = run.loaded, run.prepared, run.predicted, run.label_set
    if predictions_out:
        labels = label_set.labels
        try:
            with open(predictions_out, "w", encoding="utf-8") as handle:
                for sentence, gold, pred in zip(loaded.sentences, prepared.encoded.gold, predicted):
                    handle.write(json_line({"tokens": list(sentence.tokens), "gold": [labels[i] for i in gold],
                                            "pred": [labels[i] for i in pred]}))
        except OSError as exc:
            raise ConfigError(f"{predictions_out}: cannot write predictions ({exc.strerror})") from None
    if confusion_out:
        from .reports import confusion_counts, plot_confusion

        labels = label_set.labels
        confusion = confusion_counts([[labels[i] for i in ids] for ids in prepared.encoded.gold],
                                     [[labels[i] for i in ids] for ids in predicted], label_set.classes)
        try:
            drawn = plot_confusion(confusion, confusion_out, f"{loaded.name} split: entity confusion")
        except (OSError, ValueError) as exc:  # a full disk; an image format matplotlib does not write
            raise ConfigError(f"{confusion_out}: cannot draw the confusion matrix "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
        if drawn:
            logger.info("drew the entity confusion matrix into %s", confusion_out)
    if report_out or report_json_out:
        from .html_report import write_report

        write_report(_build_report(model_dir, run, report_sentences), report_out, report_json_out)
        logger.info("wrote the error report to %s", " and ".join(p for p in (report_out, report_json_out) if p))
    return {**run.metrics, "split": loaded.name, "data": run.data, "sentences": len(loaded.sentences),
            "words_in_split": loaded.num_words, "sentences_in_split": run.sentences_in_split, "strict": strict}


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

    loaded: object
    prepared: object
    predicted: list[np.ndarray]
    metrics: dict
    label_set: object
    data: str
    trained_with: dict
    sentences_in_split: int  # all of the split's, more than `loaded` holds under `max_samples`


def _predict_split(model_dir: str, data: str | None = None, split: str = "test", lang: str | None = None,
                   batch_size: int = 64, max_length: int | None = None, max_samples: int | None = None,
                   device: str = "auto", amp: bool = False, amp_dtype: str = "auto", strict: bool = False,
                   cache: bool = True, cache_dir: str | None = None, tag_scheme: str | None = None,
                   token_column: int | None = None, tag_column: int | None = None,
                   on_overlap: str | None = None, backend: str = "auto", int8: bool = False) -> _Predicted:
    from .cache import resolve_cache_dir
    from .config import TrainConfig
    from .data import ReadOptions, canonical_split, load_split
    from .errors import ConfigError
    from .loop import effective_max_length, prepare, evaluate_prepared
    from .modeling import backend_device, load_trained, read_nerlib_info
    from .runtime import resolve_device, resolve_precision

    check_numbers(batch_size=batch_size, max_length=max_length, max_samples=max_samples, token_column=token_column,
                  tag_column=tag_column)
    trained_with = read_nerlib_info(model_dir).get("config", {})
    reading = {"tag_scheme": tag_scheme, "token_column": token_column, "tag_column": tag_column,
               "on_overlap": on_overlap}
    if data is None and trained_with.get("data"):
        # The training run's own data: its file for this split (--test FILE), else its --data.
        trained = TrainConfig.from_dict(trained_with)
        data = trained.split_sources()[canonical_split(split)]
        reading = {key: getattr(trained, key) if value is None else value for key, value in reading.items()}
    if not data:
        raise ConfigError(f"{model_dir}: no record of the {split} data it was trained with; pass --data")
    options = ReadOptions(**{key: value for key, value in reading.items() if value is not None})
    lang = lang or trained_with.get("lang", "en")
    device_ = resolve_device(backend_device(model_dir, backend, device, amp))
    tokenizer, model, label_set = load_trained(model_dir, backend=backend, int8=int8)
    precision = resolve_precision(device_, amp, amp_dtype)
    model.to(device_)
    window = effective_max_length(max_length or trained_with.get("max_length", 512), tokenizer, model)
    whole_split = load_split(data, split, lang, options)
    loaded = whole_split.head(max_samples)
    prepared = prepare(loaded, label_set, tokenizer, window, resolve_cache_dir(cache, cache_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics, predicted = evaluate_prepared(model, prepared, label_set, pad_id, batch_size, device_, precision, strict)
    logger.info("%s: scored %d of %d words in %d sentences", loaded.source, metrics["words"], loaded.num_words,
                len(loaded.sentences))
    return _Predicted(loaded, prepared, predicted, metrics, label_set, data, trained_with, len(whole_split.sentences))


def _build_report(model_dir: str, run: _Predicted, top: int) -> dict:
    """The error report of a predicted split; the training split (as trained on) gives the seen surface forms."""
    from .config import TrainConfig
    from .data import load_split, tag_ids
    from .errors import DataError
    from .reports import build_error_report, surface_forms

    train_forms = None
    if run.trained_with.get("data"):
        try:
            trained = TrainConfig.from_dict(run.trained_with)
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
                              model_dir, run.trained_with.get("model", ""), run.data, run.loaded.name, top)
