"""Batched inference mapped back to words: the one prediction path of nerlib.

Training's validation and test passes, `evaluate`, `predict` (PyTorch and ONNX Runtime), the
service and distributed evaluation all call `predict_words`: windows of a split in, each word's
predicted label id (and, on request, its probability) out. Under torchrun the windows are dealt
to the ranks, each rank predicts its own and every rank receives the whole result.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .cache import cached_encode
from .data import Split
from .devices import Precision, pad_multiple
from .distributed import World, all_gather
from .features import IGNORE_INDEX, Encoded, collate, sorted_batches, uniform_length_batches
from .labels import LabelSet

logger = logging.getLogger(__name__)

# CPU inference runs in up to this many Python threads (streams); beyond a few, the GIL between
# kernels keeps more from helping.
MAX_INFERENCE_STREAMS = 4


@dataclass
class Prepared:
    """One split read, mapped to the label set and encoded into windows."""

    split: Split
    encoded: Encoded


def prepare(split: Split, label_set: LabelSet, tokenizer, max_length: int, cache_dir: str | None = None) -> Prepared:
    """Encode a split into windows, through the on-disk cache in `cache_dir` (None: no cache)."""
    return Prepared(split, cached_encode(split, label_set, tokenizer, max_length, cache_dir))


@dataclass
class WordPredictions:
    """What `predict_words` returns, sentence by sentence.

    Attributes:
        label_ids: each sentence's words' predicted label ids.
        scores: each sentence's words' probability of that label (softmax in float32 at each
            word's first sub-token); None unless asked for.
    """

    label_ids: list[np.ndarray]
    scores: list[np.ndarray] | None = None


def predict_words(model, encoded: Encoded, pad_id: int, batch_size: int = 64, device: torch.device | str = "cpu",
                  precision: Precision | None = None, world: World | None = None,
                  with_scores: bool = False) -> WordPredictions:
    """Predict a label id for every word of every sentence of `encoded`.

    Args:
        model: a token-classification model (the unwrapped one under DDP: its forward must not
            involve other ranks), or an `OnnxTokenClassifier`.
        encoded: the split's windows, the same on every rank.
        pad_id: the tokenizer's padding id (`modeling.pad_token_id`).
        batch_size: windows per forward pass.
        device: where the model is.
        precision: the autocast dtype of the forward passes; None computes in fp32.
        world: the ranks sharing the work; None or a single process predicts everything here.
        with_scores: also return each word's probability of its predicted label.

    Returns:
        Each sentence's word predictions; every rank gets all of them.

    Raises:
        RuntimeError: a word predicted by no rank or by more than one.
    """
    if world is None or not world.distributed:
        windows = np.arange(len(encoded))
    else:
        windows = shard_windows(encoded, world.rank, world.size)
    label_ids, scores = predict_windows(model, encoded, windows, pad_id, batch_size, device, precision, with_scores)
    if world is not None and world.distributed:
        flat_ids = np.concatenate(label_ids) if label_ids else np.zeros(0, dtype=np.int64)
        flat_scores = (np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)) if with_scores else None
        gathered = all_gather((windows, flat_ids, flat_scores), world)
        windows, label_ids = merge_shards(encoded, [(shard, ids) for shard, ids, _ in gathered])
        if with_scores:
            scores = merge_shards(encoded, [(shard, values) for shard, _, values in gathered])[1]
    return WordPredictions(assemble_words(encoded, windows, label_ids),
                           assemble_words(encoded, windows, scores) if with_scores else None)


def predict_windows(model, encoded: Encoded, windows: Sequence[int] | np.ndarray, pad_id: int, batch_size: int = 64,
                    device: torch.device | str = "cpu", precision: Precision | None = None,
                    with_scores: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
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
        pad_id, batch_size, device, precision, with_scores: as for `predict_words`.

    Returns:
        `(label_ids, scores)`: for each window of `windows`, in that order, its words' predicted
        label ids, and with `with_scores` their probabilities (else None).
    """
    device = torch.device(device)
    fp32 = precision is None or precision.dtype is None
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
            with precision.autocast() if precision is not None else contextlib.nullcontext():
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
        # Streams make up for eager torch's Python between kernels; ONNX Runtime divides its threads
        # itself. An autocast context cannot be entered by two threads at once: fp32 only.
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
    return result, (scores if with_scores else None)


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


def shard_windows(encoded: Encoded, rank: int, world_size: int) -> np.ndarray:
    """This rank's evaluation windows: every `world_size`-th window, longest first.

    Dealing the length-sorted windows in turn gives each rank a similar amount of work; the
    shards are disjoint and cover every window, with no padding (so no window is counted twice).
    """
    order = np.argsort(-encoded.lengths, kind="stable")
    return order[rank::world_size]


def merge_shards(encoded: Encoded,
                 gathered: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Join the ranks' `(window indices, flat word values)` into per-window values.

    Returns:
        `(windows, predictions)`: all the gathered window indices and, for each, its words' values.

    Raises:
        RuntimeError: a rank sent more or fewer values than its windows have words.
    """
    words_per_window = encoded.words_per_window()
    windows, predictions = [], []
    for indices, flat in gathered:
        indices = np.asarray(indices, dtype=np.int64)
        counts = words_per_window[indices]
        if int(counts.sum()) != len(flat):
            raise RuntimeError(f"a rank sent {len(flat)} predictions for windows of {int(counts.sum())} words")
        windows.append(indices)
        predictions.extend(np.split(flat, np.cumsum(counts)[:-1]) if len(indices) else [])
    return (np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)), predictions
