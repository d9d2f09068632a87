"""From sentences to model inputs: tokenise, align labels to first sub-tokens, window, batch, collate.

A sentence longer than `max_length` sub-tokens is cut into windows of whole words, never
truncated, so every word is trained on and every word of an evaluation split is predicted once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .data import Sentence, tag_ids
from .errors import ConfigError
from .labels import LabelSet

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Label each sub-token: the first sub-token of a word carries the word's label.

    Later sub-tokens of the same word and special tokens (word id None) get `ignore_index`, so
    the loss and the metrics see exactly one position per word. Every word must have at least
    one sub-token: a word without one could be neither trained on nor scored, so it is an error
    here, and `encode` stands the unknown token in for a word its tokenizer drops.

    Args:
        word_ids: for each sub-token, the index of its word in `word_labels`, or None for a
            special token.
        word_labels: the label id of each word.
        ignore_index: the label of positions the loss ignores.

    Returns:
        One label per sub-token.

    Raises:
        ValueError: a word of `word_labels` with no sub-token.
    """
    labels = []
    seen = set()
    for word_id in word_ids:
        if word_id is None or word_id in seen:
            labels.append(ignore_index)
        else:
            labels.append(int(word_labels[word_id]))
            seen.add(word_id)
    if len(seen) != len(word_labels):
        missing = sorted(set(range(len(word_labels))) - seen)
        raise ValueError(f"word(s) {missing} have no sub-token, so they could not be scored")
    return labels


def plan_windows(word_token_counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut a sentence into consecutive windows of whole words of at most `budget` sub-tokens.

    Greedy: each window takes as many words as fit. A single word longer than the budget gets a
    window of its own (its sub-tokens are then cut to the budget; only the first one is scored).

    Args:
        word_token_counts: the number of sub-tokens of each word (each at least 1).
        budget: sub-tokens a window may hold, special tokens excluded.

    Returns:
        `(first_word, end_word)` pairs covering every word exactly once, in order.
    """
    if budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    windows = []
    start, used = 0, 0
    for index, count in enumerate(word_token_counts):
        count = min(count, budget)
        if used + count > budget and index > start:
            windows.append((start, index))
            start, used = index, 0
        used += count
    if start < len(word_token_counts) or not windows:
        windows.append((start, len(word_token_counts)))
    return windows


@dataclass
class Encoded:
    """The windows of one split, ready to batch.

    Attributes:
        input_ids: sub-token ids of each window, special tokens included.
        labels: one label per sub-token (`IGNORE_INDEX` except on first sub-tokens).
        sentence_index: the sentence each window belongs to.
        word_start: the index, in its sentence, of each window's first word.
        sentence_lengths: the number of words of each sentence.
        gold: the gold label ids of each sentence's words.
    """

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    sentence_index: np.ndarray
    word_start: np.ndarray
    sentence_lengths: np.ndarray
    gold: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Sub-tokens per window."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    @property
    def num_words(self) -> int:
        return int(self.sentence_lengths.sum())

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_lengths)

    def words_per_window(self) -> np.ndarray:
        return np.fromiter(((lab != IGNORE_INDEX).sum() for lab in self.labels), dtype=np.int64, count=len(self))


def special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special-token ids a tokenizer puts before and after a single sentence."""
    encoding = tokenizer([["a"]], is_split_into_words=True, add_special_tokens=True)
    ids, word_ids = encoding["input_ids"][0], encoding.word_ids(0)
    first = word_ids.index(0)
    last = len(word_ids) - 1 - word_ids[::-1].index(0)
    return list(ids[:first]), list(ids[last + 1:])


def encode(sentences: Sequence[Sentence], label_set: LabelSet, tokenizer, max_length: int, batch_size: int = 1000) -> Encoded:
    """Tokenise sentences and cut them into labelled windows of at most `max_length` sub-tokens.

    Labels are aligned by `align_labels`. A word the tokenizer turns into nothing (a zero-width
    space or a control character, say) is replaced by the unknown token, so that every word has a
    first sub-token and is trained on and scored like any other. A word with more sub-tokens than
    a window holds gets a window of its own and keeps its first sub-tokens.

    Raises:
        DataError: a tag the label set does not know (with file and line).
        ConfigError: `max_length` leaves no room for a sub-token beside the special tokens.
    """
    prefix, suffix = special_token_template(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        specials = len(prefix) + len(suffix)
        raise ConfigError(f"--max-length {max_length} leaves no room for a word beside the tokenizer's {specials} "
                          f"special tokens; use at least {specials + 1}")
    input_ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    sentence_index: list[int] = []
    word_start: list[int] = []
    gold = [np.asarray(tag_ids(s, label_set), dtype=np.int64) for s in sentences]
    for chunk_start in range(0, len(sentences), batch_size):
        chunk = sentences[chunk_start:chunk_start + batch_size]
        pieces = _word_pieces(tokenizer, [list(s.tokens) for s in chunk])
        for offset, word_pieces in enumerate(pieces):
            index = chunk_start + offset
            counts = [len(p) for p in word_pieces]
            for first, end in plan_windows(counts, budget):
                ids = list(prefix)
                word_ids: list[int | None] = [None] * len(prefix)  # counted from the window's first word
                for word in range(first, end):
                    # A word longer than the window keeps its first sub-tokens, the one it is scored on among them.
                    piece = word_pieces[word][:budget]
                    ids.extend(piece)
                    word_ids.extend([word - first] * len(piece))
                ids.extend(suffix)
                word_ids.extend([None] * len(suffix))
                input_ids.append(np.asarray(ids, dtype=np.int64))
                labels.append(np.asarray(align_labels(word_ids, gold[index][first:end]), dtype=np.int64))
                sentence_index.append(index)
                word_start.append(first)
    return Encoded(
        input_ids=input_ids,
        labels=labels,
        sentence_index=np.asarray(sentence_index, dtype=np.int64),
        word_start=np.asarray(word_start, dtype=np.int64),
        sentence_lengths=np.asarray([len(s.tokens) for s in sentences], dtype=np.int64),
        gold=gold,
    )


def _word_pieces(tokenizer, token_lists: list[list[str]]) -> list[list[list[int]]]:
    """For each sentence, the sub-token ids of each word (never empty)."""
    # verbose=False: a sentence longer than the model is cut into windows afterwards, so the
    # tokenizer's warning that it is too long for the model would mislead.
    encoding = tokenizer(token_lists, is_split_into_words=True, add_special_tokens=False, verbose=False)
    result = []
    for row, words in enumerate(token_lists):
        pieces: list[list[int]] = [[] for _ in words]
        for token_id, word_id in zip(encoding["input_ids"][row], encoding.word_ids(row)):
            if word_id is not None:
                pieces[word_id].append(token_id)
        empty = [i for i, p in enumerate(pieces) if not p]
        if empty:
            unk = tokenizer.unk_token_id
            if unk is None:
                raise ValueError("the tokenizer drops some words and has no unknown token to stand for them")
            for i in empty:
                pieces[i] = [unk]
        result.append(pieces)
    return result


def collate(
    input_ids: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    pad_id: int,
    pad_to_multiple_of: int = 8,
    label_pad_id: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence, rounded up to a multiple of `pad_to_multiple_of`.

    Padding to a multiple of 8 lets fp16/bf16 matmuls use tensor cores and keeps the number of
    distinct shapes small.

    Returns:
        `input_ids`, `attention_mask` and `labels`, each (batch, padded_length) int64.
    """
    longest = max(len(ids) for ids in input_ids)
    width = int(math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of)
    batch = len(input_ids)
    ids_out = np.full((batch, width), pad_id, dtype=np.int64)
    labels_out = np.full((batch, width), label_pad_id, dtype=np.int64)
    mask_out = np.zeros((batch, width), dtype=np.int64)
    for row, (ids, lab) in enumerate(zip(input_ids, labels)):
        n = len(ids)
        ids_out[row, :n] = ids
        labels_out[row, :n] = lab
        mask_out[row, :n] = 1
    return {
        "input_ids": torch.from_numpy(ids_out),
        "attention_mask": torch.from_numpy(mask_out),
        "labels": torch.from_numpy(labels_out),
    }


def padding_efficiency(lengths: np.ndarray, batches: Sequence[np.ndarray], pad_to_multiple_of: int = 1) -> float:
    """Real tokens over tokens computed when each batch is padded as `collate` pads it.

    Args:
        lengths: sub-tokens of each window.
        batches: window indices of each batch.
        pad_to_multiple_of: as for `collate`.

    Returns:
        A fraction in (0, 1]; 1.0 for no batches.
    """
    real = computed = 0
    for batch in batches:
        batch_lengths = lengths[batch]
        real += int(batch_lengths.sum())
        computed += len(batch) * int(math.ceil(batch_lengths.max() / pad_to_multiple_of) * pad_to_multiple_of)
    return real / computed if computed else 1.0


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_size: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar-length windows, reproducible from `(seed, epoch)`.

    The windows are shuffled, cut into groups of `group_size` batches, each group sorted by
    length and cut into batches, and the batches shuffled again: little padding, yet every epoch
    sees a different random order.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group = batch_size * group_size
    batches = []
    for start in range(0, len(order), group):
        members = order[start:start + group]
        members = members[np.argsort(-lengths[members], kind="stable")]
        batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def shuffled_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Plain shuffled batches, reproducible from `(seed, epoch)`."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    return [order[i:i + batch_size] for i in range(0, num_items, batch_size)]


def uniform_length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of windows that all have the same length, longest first, for inference on CPUs.

    Such a batch has no padding, so the model can run without an attention mask (a faster
    attention kernel); the price is one short batch per distinct length.
    """
    order = np.argsort(-lengths, kind="stable")
    starts = np.flatnonzero(np.diff(lengths[order], prepend=-1))  # where each length's run begins
    ends = np.append(starts[1:], len(order))
    return [order[i:min(i + batch_size, end)] for start, end in zip(starts, ends) for i in range(start, end, batch_size)]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of windows sorted by length, longest first, for inference (order does not matter)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
