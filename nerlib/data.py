"""Readers: every data source becomes a list of `Sentence` (tokens and string tags).

Three sources are understood:

* a hub dataset id (default `Babelscape/multinerd`), read through `datasets`, fetching only the
  chosen language's file of the chosen split;
* a local folder in the hub's layout: `train/train_en.jsonl`, `val/val_en.jsonl`,
  `test/test_en.jsonl`, one `{"tokens", "ner_tags", "lang"}` record a line;
* a local folder of token<TAB>tag column files, one a split (`train`, `val`/`validation`/`dev`,
  `test` with `.txt`, `.tsv` or `.conll`), a blank line between sentences, string tags and an
  optional leading index column.

Every problem in a file is raised as `DataError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from .errors import DataError
from .labels import MULTINERD_TAGS, LabelSet, is_bio_tag

logger = logging.getLogger(__name__)

DEFAULT_HUB_DATASET = "Babelscape/multinerd"

# Canonical split name -> the folder/file stems it may have on disk, in order of preference.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "validation", "dev", "valid"),
    "test": ("test",),
}
COLUMN_EXTENSIONS = (".txt", ".tsv", ".conll")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, their string BIO tags, and where it was read from.

    `path` and `line` locate the sentence; in column files token i stands on line `line + i`,
    in JSON lines all tokens share one line (`per_token_lines` False).
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    path: str
    line: int
    per_token_lines: bool = False

    def locate(self, token_index: int | None = None) -> str:
        """`file:line` of the sentence, or of one of its tokens."""
        if token_index is None:
            return f"{self.path}:{self.line}"
        if self.per_token_lines:
            return f"{self.path}:{self.line + token_index}"
        return f"{self.path}:{self.line} (token {token_index})"


@dataclass
class Split:
    """The sentences of one split, where they came from, and how many empty ones were skipped."""

    name: str
    source: str
    sentences: list[Sentence]
    empty_skipped: int = 0
    lang: str | None = None

    @property
    def num_words(self) -> int:
        return sum(len(s.tokens) for s in self.sentences)

    def head(self, n: int | None) -> "Split":
        """The first n sentences (all when n is None)."""
        if n is None or n >= len(self.sentences):
            return self
        return Split(self.name, self.source, self.sentences[:n], self.empty_skipped, self.lang)


class SplitNotFound(DataError):
    """The source has no file for the requested split (training goes on without it)."""


def canonical_split(split: str) -> str:
    """`validation`/`dev` -> `val`; raises DataError for a name that is no split."""
    for name, aliases in SPLIT_ALIASES.items():
        if split == name or split in aliases:
            return name
    raise DataError(f"unknown split {split!r}: expected train, val (validation, dev) or test")


def load_split(data: str, split: str, lang: str = "en") -> Split:
    """Read one split of a data source into sentences.

    Args:
        data: a local folder (hub layout or column files) or a hub dataset id.
        split: `train`, `val` (or `validation`, `dev`) or `test`.
        lang: the language whose file is read and whose records are kept (hub layout only).

    Returns:
        The split's non-empty sentences, with the count of empty ones skipped.

    Raises:
        SplitNotFound: the source has no file for this split.
        DataError: the source cannot be found or read, or a record is malformed.
    """
    split = canonical_split(split)
    if os.path.isdir(data):
        hub_file = _find_hub_layout_file(data, split, lang)
        if hub_file is not None:
            return _finish(split, hub_file, lang, _read_jsonl(hub_file, lang))
        column_file = _find_column_file(data, split)
        if column_file is not None:
            return _finish(split, column_file, None, _read_columns(column_file))
        if _has_any_split(data, lang):
            raise SplitNotFound(f"{data}: no {split} split ({_expected_names(split, lang)})")
        raise DataError(
            f"{data}: not a data folder: expected the hub layout ({_expected_names('train', lang)}) "
            f"or column files (train.txt, val.txt, test.txt)"
        )
    if os.path.exists(data):
        raise DataError(f"{data}: is a file; --data takes a folder (one file a split) or a hub dataset id")
    if _looks_like_hub_id(data):
        return _finish(split, f"hub:{data}", lang, _read_hub(data, split, lang))
    raise DataError(f"{data}: no such data folder")


def _finish(split: str, source: str, lang: str | None, read: tuple[list[Sentence], int]) -> Split:
    sentences, empty = read
    if not sentences:
        raise DataError(f"{source}: the {split} split holds no sentences" + (f" in language {lang!r}" if lang else ""))
    if empty:
        logger.warning("%s: skipped %d empty sentence(s)", source, empty)
    return Split(split, source, sentences, empty, lang)


def _looks_like_hub_id(data: str) -> bool:
    parts = data.split("/")
    return len(parts) == 2 and all(parts) and not data.startswith((".", "~"))


def _find_hub_layout_file(folder: str, split: str, lang: str) -> str | None:
    for stem in SPLIT_ALIASES[split]:
        path = os.path.join(folder, stem, f"{stem}_{lang}.jsonl")
        if os.path.isfile(path):
            return path
    return None


def _find_column_file(folder: str, split: str) -> str | None:
    for stem in SPLIT_ALIASES[split]:
        for ext in COLUMN_EXTENSIONS:
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return path
    return None


def _has_any_split(folder: str, lang: str) -> bool:
    return any(
        _find_hub_layout_file(folder, split, lang) or _find_column_file(folder, split)
        for split in SPLIT_ALIASES
    )


def _expected_names(split: str, lang: str) -> str:
    stem = SPLIT_ALIASES[split][0]
    return f"{stem}/{stem}_{lang}.jsonl or {stem}.txt"


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the line ending) for each line; CRLF reads like LF."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                ) from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text.rstrip("\r\n")


def _read_jsonl(path: str, lang: str | None) -> tuple[list[Sentence], int]:
    def records() -> Iterator[tuple[object, str, int, str]]:
        for number, text in _decoded_lines(path):
            if not text.strip():
                continue
            try:
                yield json.loads(text), path, number, f"{path}:{number}"
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON: {exc.msg} (column {exc.colno})") from None

    return _collect(records(), lang)


def _collect(records: Iterable[tuple[object, str, int, str]], lang: str | None) -> tuple[list[Sentence], int]:
    """Validated sentences of the wanted language from `(record, path, line, where)`, and the empty ones' count."""
    sentences: list[Sentence] = []
    empty = 0
    for record, path, line, where in records:
        sentence = _sentence_from_record(record, path, line, lang, where)
        if sentence is None:
            continue
        if not sentence.tokens:
            empty += 1
            continue
        sentences.append(sentence)
    return sentences, empty


def _sentence_from_record(record: object, path: str, line: int, lang: str | None, where: str) -> Sentence | None:
    """A validated sentence, or None when the record is of another language."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with tokens and ner_tags, got {type(record).__name__}")
    if lang is not None and "lang" in record and record["lang"] != lang:
        return None
    missing = [key for key in ("tokens", "ner_tags") if key not in record]
    if missing:
        raise DataError(f"{where}: record has no {' or '.join(missing)} field")
    tokens, tags = record["tokens"], record["ner_tags"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: tokens must be a list of strings")
    if not isinstance(tags, list):
        raise DataError(f"{where}: ner_tags must be a list")
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} ner_tags")
    return Sentence(tuple(tokens), tuple(_tag_name(tag, where, i) for i, tag in enumerate(tags)), path, line)


def _tag_name(tag: object, where: str, index: int) -> str:
    """MultiNERD's tag for an integer id; a string tag is checked to be BIO."""
    if isinstance(tag, int) and not isinstance(tag, bool):
        if 0 <= tag < len(MULTINERD_TAGS):
            return MULTINERD_TAGS[tag]
        raise DataError(
            f"{where} (token {index}): unknown tag id {tag}; MultiNERD's ids are 0..{len(MULTINERD_TAGS) - 1}"
        )
    if isinstance(tag, str) and is_bio_tag(tag):
        return tag
    raise DataError(f"{where} (token {index}): malformed tag {tag!r}; expected an id or O, B-TYPE, I-TYPE")


def _read_columns(path: str) -> tuple[list[Sentence], int]:
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, text in _decoded_lines(path):
        if not text.strip():
            if tokens:
                sentences.append(Sentence(tuple(tokens), tuple(tags), path, start, per_token_lines=True))
                tokens, tags = [], []
            continue
        if text.startswith("-DOCSTART-"):
            continue
        columns = text.split("\t") if "\t" in text else text.split()
        if len(columns) == 3:
            index, token, tag = columns
            if not index.strip().isdigit():
                raise DataError(f"{path}:{number}: expected a number in the index column, got {index!r}")
        elif len(columns) == 2:
            token, tag = columns
        else:
            raise DataError(
                f"{path}:{number}: expected 2 tab-separated columns (token, tag) or 3 (index, token, tag), "
                f"got {len(columns)}"
            )
        token, tag = token.strip(), tag.strip()
        if not token:
            raise DataError(f"{path}:{number}: empty token")
        if not is_bio_tag(tag):
            raise DataError(f"{path}:{number}: malformed tag {tag!r}; expected O, B-TYPE or I-TYPE")
        if not tokens:
            start = number
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append(Sentence(tuple(tokens), tuple(tags), path, start, per_token_lines=True))
    # A column file cannot hold an empty sentence: blank lines only separate them.
    return sentences, 0


def _read_hub(dataset_id: str, split: str, lang: str) -> tuple[list[Sentence], int]:
    """Fetch one language's file of one split from the hub (or the local cache) via `datasets`."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a runtime dependency
        raise DataError("reading a hub dataset needs the `datasets` package: pip install datasets") from None
    stem = SPLIT_ALIASES[split][0]
    data_file = f"{stem}/{stem}_{lang}.jsonl"
    try:
        rows = datasets.load_dataset(dataset_id, data_files={split: data_file}, split=split)
    except Exception as exc:  # network, missing repo or file: all end the same way for the user
        raise DataError(
            f"cannot load {data_file} of {dataset_id} from the Hugging Face hub and no copy is cached "
            f"({type(exc).__name__}); use --data FOLDER with a local copy in the hub layout "
            f"(train/train_{lang}.jsonl, val/val_{lang}.jsonl, test/test_{lang}.jsonl) or column files"
        ) from None
    where_file = f"hub:{dataset_id}/{data_file}"
    return _collect(((record, where_file, index + 1, f"{where_file} record {index}") for index, record in enumerate(rows)),
                    lang)


def tag_ids(sentence: Sentence, label_set: LabelSet) -> list[int]:
    """The label ids of a sentence's tags.

    Raises:
        DataError: a tag the label set does not know, with its file and line and the known tags.
    """
    ids = []
    for i, tag in enumerate(sentence.tags):
        try:
            ids.append(label_set.tag_id(tag))
        except KeyError:
            raise DataError(
                f"{sentence.locate(i)}: unknown tag {tag!r} for label set {label_set.name}; "
                f"known: {' '.join(label_set.labels)}"
                + ("" if label_set.name == "auto" else " (use --labels auto for other tag sets)")
            ) from None
    return ids


def all_tags(splits: Sequence[Split]) -> list[tuple[str, ...]]:
    """The tag sequences of every sentence of the given splits (for `auto` label sets)."""
    return [s.tags for split in splits for s in split.sentences]
