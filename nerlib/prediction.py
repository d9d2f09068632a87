"""Raw text to entities: split words like the training data, window, predict, group tags into spans.

    entities = nerlib.predict("runs/nerlib", ["Angela Merkel visited Paris."])
    # [[Entity(type='PER', text='Angela Merkel', start=0, end=13, score=0.99, word_start=0, word_end=2),
    #   Entity(type='LOC', text='Paris', start=22, end=27, ...)]]

Words are cut the way MultiNERD and CoNLL are tokenised (see `split_words`), so the model sees
words like the ones it was trained on; every entity keeps the character offsets of its first and
last word in the original string, so `text[start:end]` is always the entity's text.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import BinaryIO, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from .config import check_numbers
from .data import Sentence
from .devices import Precision
from .features import encode
from .inference import predict_words
from .labels import LabelSet, entity_spans, tags_of
from .modeling import load_for_inference, pad_token_id
from .text import decode_utf8, split_words, utf8_lines, word_pattern  # noqa: F401 - split_words re-exported

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entity:
    """One predicted entity.

    Attributes:
        type: the entity class (`PER`, `LOC`, ...).
        text: the entity as written in the input, `input[start:end]`.
        start, end: character offsets into the input string (Python string indices, end exclusive);
            for pre-split words, into the words joined with single spaces.
        score: the mean, over the entity's words, of the probability of each word's predicted tag
            at its first sub-token (what `transformers.pipeline(..., aggregation_strategy="first")`
            reports).
        word_start, word_end: the entity's words, `words[word_start:word_end]`.
    """

    type: str
    text: str
    start: int
    end: int
    score: float
    word_start: int
    word_end: int

    def to_dict(self) -> dict:
        return asdict(self)


TextOrWords = Union[str, Sequence[str]]


def predict(
    model_dir: str,
    texts: TextOrWords | Sequence[TextOrWords],
    batch_size: int = 32,
    max_length: int | None = None,
    device: str = "auto",
    amp: bool = False,
    backend: str = "auto",
    int8: bool = False,
    amp_dtype: str = "auto",
    trust_remote_code: bool = False,
) -> list[list[Entity]] | list[Entity]:
    """Find the entities of raw texts (or of pre-split word lists) with a saved model.

    Texts longer than a window are cut into windows of whole words, like evaluation, never
    truncated.

    Args:
        model_dir: a folder written by `nerlib.train` (or any token-classification model folder),
            or by `nerlib export --onnx`.
        texts: a list of strings, a list of word lists, or one string.
        batch_size: windows per inference batch.
        max_length: window size in sub-tokens; by default the training one.
        device, amp: as for evaluation (`auto` picks CUDA when present).
        backend: `torch`, `onnx` (ONNX Runtime on the CPU) or `auto` (`onnx` for an exported folder).
        int8: with the onnx backend, the int8 model of the folder.
        amp_dtype: the precision under `amp`, as for training: auto, bf16 or fp16.
        trust_remote_code: allow model code from the folder (a model trained with it needs it).

    Returns:
        For each text, its entities in order; for a single string, its entities.

    Raises:
        NerlibError: the model folder is missing or cannot be loaded, or a bad device or backend.
    """
    single = isinstance(texts, str)
    results = [entities for _, entities in predict_stream(model_dir, [texts] if single else texts, batch_size,
                                                          max_length, device, amp, backend=backend, int8=int8,
                                                          amp_dtype=amp_dtype,
                                                          trust_remote_code=trust_remote_code)]
    return results[0] if single else results


@dataclass(frozen=True)
class Predictor:
    """A loaded model and how to run it: `predictor(texts)` is `predict_loaded` with these settings."""

    tokenizer: object
    model: object
    label_set: LabelSet
    max_length: int
    batch_size: int
    device: torch.device
    precision: Precision
    backend: str

    def __call__(self, texts: Sequence[TextOrWords]) -> list[list[Entity]]:
        return predict_loaded(self.tokenizer, self.model, self.label_set, texts, self.max_length, self.batch_size,
                              self.device, self.precision)


def load_predictor(
    model_dir: str,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str = "auto",
    amp: bool = False,
    backend: str = "auto",
    int8: bool = False,
    num_threads: int | None = None,
    amp_dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Predictor:
    """Load a model folder for prediction (arguments as for `predict`).

    Args:
        num_threads: ONNX Runtime's threads (onnx backend); None: as many as torch uses.

    Raises:
        NerlibError: the model folder is missing or cannot be loaded, a bad device, or `amp` or a
            CUDA device with the onnx backend.
    """
    check_numbers(batch_size=batch_size, max_length=max_length, num_threads=num_threads)
    loaded = load_for_inference(model_dir, device, amp, amp_dtype, max_length, backend, int8, trust_remote_code,
                                num_threads)
    return Predictor(loaded.tokenizer, loaded.model, loaded.label_set, loaded.max_length, batch_size, loaded.device,
                     loaded.precision, loaded.backend)


def predict_stream(
    model_dir: str,
    texts: Iterable[TextOrWords],
    batch_size: int = 32,
    max_length: int | None = None,
    device: str = "auto",
    amp: bool = False,
    chunk_size: int = 256,
    backend: str = "auto",
    int8: bool = False,
    amp_dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Iterator[tuple[TextOrWords, list[Entity]]]:
    """`predict` over a stream of texts: loads the model once, yields `(text, entities)` in order.

    Texts are read `chunk_size` at a time, so a long stream never sits in memory whole.

    Raises:
        NerlibError: the model folder is missing or cannot be loaded, or a bad device or backend.
    """
    predictor = load_predictor(model_dir, batch_size, max_length, device, amp, backend, int8, amp_dtype=amp_dtype,
                               trust_remote_code=trust_remote_code)
    chunk: list[TextOrWords] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield from zip(chunk, predictor(chunk))
            chunk = []
    if chunk:
        yield from zip(chunk, predictor(chunk))


def predict_loaded(
    tokenizer,
    model: torch.nn.Module,
    label_set: LabelSet,
    texts: Sequence[TextOrWords],
    max_length: int = 512,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
) -> list[list[Entity]]:
    """`predict` with a model already loaded (by `nerlib.modeling.load_trained`).

    Args:
        tokenizer, model, label_set: as `load_trained` returns them; the model on `device`.
        texts: strings, or lists of words (offsets then index the words joined with spaces).
        max_length: window size in sub-tokens, special tokens included.
        batch_size: windows per inference batch.
        device: where the model is.
        precision: the autocast dtype of the forward passes; None computes in fp32.

    Returns:
        For each text, its entities in order.
    """
    prepared = [_text_and_spans(item) for item in texts]
    results: list[list[Entity]] = [[] for _ in prepared]
    with_words = [index for index, (_, spans) in enumerate(prepared) if spans]  # a text with no words has no entities
    if not with_words:
        return results
    # Gold tags are not used for prediction; the label set's first label stands in for them.
    filler = label_set.labels[0]
    sentences = []
    for index in with_words:
        text, spans = prepared[index]
        sentences.append(Sentence(tuple(text[s:e] for s, e in spans), (filler,) * len(spans), "<input>", index + 1))
    encoded = encode(sentences, label_set, tokenizer, max_length)
    predicted = predict_words(model, encoded, pad_token_id(tokenizer), batch_size, device, precision, with_scores=True)
    for index, ids, word_scores in zip(with_words, predicted.label_ids, predicted.scores):
        text, spans = prepared[index]
        results[index] = entities_from_tags(text, spans, tags_of(ids, label_set.labels), word_scores)
    return results


def entities_from_tags(text: str, spans: Sequence[tuple[int, int]], tags: Sequence[str],
                       scores: Sequence[float]) -> list[Entity]:
    """Group word tags into entities with character offsets.

    Args:
        text: the original string.
        spans: `(start, end)` of each word in `text`.
        tags: the predicted tag of each word.
        scores: the probability of each word's predicted tag.

    Returns:
        The entities, read leniently like seqeval and the transformers pipeline (`entity_spans`).
    """
    entities = []
    for cls, first, end in entity_spans(tags):
        start, stop = spans[first][0], spans[end - 1][1]
        entities.append(Entity(cls, text[start:stop], start, stop, float(np.mean(scores[first:end])), first, end))
    return entities


def _text_and_spans(item: TextOrWords) -> tuple[str, list[tuple[int, int]]]:
    """A raw string is split into words; a word list is joined with single spaces."""
    if isinstance(item, str):
        return item, split_words(item)
    words = list(item)
    if not all(isinstance(word, str) for word in words):
        raise TypeError("predict takes strings or lists of word strings")
    spans, offset = [], 0
    for word in words:
        spans.append((offset, offset + len(word)))
        offset += len(word) + 1
    return " ".join(words), spans


def read_texts(handle: BinaryIO, name: str, document: bool) -> Iterator[str]:
    """Texts from a binary stream: one a line, or the whole stream as one text.

    Bytes are decoded as UTF-8 and nothing else is changed, so offsets point into the input as
    read: in line mode only the line ending (`\\n` or `\\r\\n`) is dropped.

    Raises:
        DataError: the input is not UTF-8 (with the line).
    """
    if document:
        yield decode_utf8(handle.read(), name)
        return
    for _, text in utf8_lines(handle, name):
        yield text
