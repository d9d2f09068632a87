"""Where a split's sentences come from, and what they become: `load_split`, the one entry point.

A data source is one of:

* a hub dataset id: `Babelscape/multinerd` (one language's file of a split, or several) or any
  hub dataset with `tokens` and `ner_tags` (`owner/name`, or `owner/name:config`), read through
  `datasets`, with the tag names of its `ClassLabel` feature;
* a folder: MultiNERD's hub layout (`train/train_en.jsonl`, ...), files named after their split
  as people name them (`train.txt`, `dev.tsv`, `test.conll`, `eng.train`, `eng.testa`,
  `eng.testb`, `train.jsonl`, `validation.parquet`, `train-00000-of-00002.parquet`, ...), or a
  `datasets.save_to_disk` folder;
* a file (or a `save_to_disk` folder of one dataset): read whole as the split asked for.

How each file format reads is `nerlib.formats`; here the file's tags are converted to BIO by its
tag scheme (`nerlib.schemes`, detected per file unless `--tag-scheme` says), and what was read is
summarised in one line a file. A folder that holds two candidates for one split (`val/` and
`validation/`, hub-layout and column files) is refused, naming both. Every problem in a file is
raised as `DataError` naming the file and line.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from .errors import DataError
from .formats import (
    COLUMN_EXTENSIONS, JSON_EXTENSIONS, TABLE_EXTENSIONS, FileReport, ReadOptions, Sentence, read_columns, read_json,
    read_table, rows_to_sentences,
)
from .labels import LabelSet
from .schemes import SchemeError, convert_to_bio, entity_counts
from .text import looks_like_hub_id

__all__ = ["DEFAULT_HUB_DATASET", "ReadOptions", "Sentence", "Split", "SplitNotFound", "all_tags", "canonical_split",
           "load_split", "parse_langs", "single_split_source", "split_of_file_name", "tag_ids"]

logger = logging.getLogger(__name__)

DEFAULT_HUB_DATASET = "Babelscape/multinerd"

# Canonical split name -> the names it goes by, in file and folder names (CoNLL-2003's eng.testa
# is its validation split, eng.testb its test split).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validation", "dev", "valid", "development", "testa"),
    "test": ("test", "testb"),
}
# The folder names of MultiNERD's hub layout: {stem}/{stem}_{lang}.jsonl.
HUB_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "validation", "dev", "valid"),
    "test": ("test",),
}
_SHARD = re.compile(r"^(?P<prefix>.+)-\d+-of-\d+(?P<ext>\.[^.]+)$")


@dataclass
class Split:
    """The sentences of one split, where they came from, and what reading them found.

    Attributes:
        name: `train`, `val` or `test`.
        source: the file read (or folder, or hub id).
        sentences: the non-empty sentences, tags in BIO.
        empty_skipped: sentences without words, skipped.
        lang: the `--lang` asked for (hub layout and JSON sources), else None.
        summary: one line a file read: format, scheme, counts, what was skipped.
    """

    name: str
    source: str
    sentences: list[Sentence]
    empty_skipped: int = 0
    lang: str | None = None
    summary: list[str] = field(default_factory=list)

    @property
    def num_words(self) -> int:
        return sum(len(s.tokens) for s in self.sentences)

    @property
    def langs(self) -> list[str]:
        """The languages of the sentences that say (sorted); empty when none does."""
        return sorted({s.lang for s in self.sentences if s.lang})

    def head(self, n: int | None) -> "Split":
        """The first n sentences (all when n is None)."""
        if n is None or n >= len(self.sentences):
            return self
        return replace(self, sentences=self.sentences[:n])


class SplitNotFound(DataError):
    """The source has no file for the requested split (training goes on without it)."""


def canonical_split(split: str) -> str:
    """`validation`/`dev`/`testa` -> `val`, `testb` -> `test`; raises DataError for a name that is no split."""
    for name, aliases in SPLIT_ALIASES.items():
        if split == name or split in aliases:
            return name
    raise DataError(f"unknown split {split!r}: expected train, val (validation, dev) or test")


def parse_langs(lang: str) -> list[str] | None:
    """`en` -> ["en"], `en,de` -> ["en", "de"], `all` -> None (every language).

    Raises:
        DataError: an empty list.
    """
    if lang.strip().lower() == "all":
        return None
    langs = [part.strip() for part in lang.split(",") if part.strip()]
    if not langs:
        raise DataError(f"--lang {lang!r}: expected a language code, a comma-separated list, or all")
    return list(dict.fromkeys(langs))


def single_split_source(path: str) -> bool:
    """Whether `path` holds one split only: a file, or a `save_to_disk` folder of one dataset."""
    return os.path.isfile(path) or (os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json"))
                                    and not os.path.isfile(os.path.join(path, "dataset_dict.json")))


def load_split(data: str, split: str, lang: str = "en", options: ReadOptions = ReadOptions()) -> Split:
    """Read one split of a data source into sentences with BIO tags.

    Args:
        data: a folder, a file (read whole as this split), or a hub dataset id.
        split: `train`, `val` (or `validation`, `dev`, `testa`) or `test` (or `testb`).
        lang: the language(s) whose files are read and whose records are kept: `en`, `en,de`, or
            `all` (hub layout and records that carry a `lang`).
        options: tag scheme, columns and span overlaps (`ReadOptions`).

    Returns:
        The split's non-empty sentences, with the count of empty ones skipped and a summary of
        each file (also logged).

    Raises:
        SplitNotFound: the source has no file for this split.
        DataError: the source cannot be found, is ambiguous or cannot be read, or a record is
            malformed (file and line).
    """
    split = canonical_split(split)
    langs = parse_langs(lang)
    if single_split_source(data):
        return _finish(split, data, lang, [_read_file(data, langs, None, options)])
    if os.path.isdir(data):
        if os.path.isfile(os.path.join(data, "dataset_dict.json")):
            return _finish(split, data, lang, [_read_dataset_dict(data, split, langs, options)])
        candidates = _candidates(data, split, langs)
        if len(candidates) > 1:
            listed = " and ".join(_relative(data, c[0]) + (f" (+{len(c) - 1} more)" if len(c) > 1 else "")
                                  for c in candidates)
            raise DataError(f"{data}: two sources for the {split} split: {listed}; keep one, or name the file "
                            f"with --{split} FILE")
        if candidates:
            files = candidates[0]
            reads = [_read_file(path, langs, _hub_file_lang(path), options) for path in files]
            return _finish(split, files[0] if len(files) == 1 else data, lang, reads)
        if any(_candidates(data, other, langs) for other in SPLIT_ALIASES):
            raise SplitNotFound(f"{data}: no {split} split ({_expected_names(split, lang)})")
        raise DataError(
            f"{data}: not a data folder: expected the hub layout ({_expected_names('train', lang)}), files named "
            f"after their split (train.txt, dev.conll, test.jsonl, eng.train, train.parquet, ...) or a "
            f"datasets.save_to_disk folder; name files with --train/--val/--test FILE"
        )
    if looks_like_hub_id(data, dataset=True):
        return _finish(split, f"hub:{data}", lang, [_read_hub(data, split, langs, options)])
    raise DataError(f"{data}: no such data folder or file")


def _relative(folder: str, path: str) -> str:
    return os.path.relpath(path, folder)


def _finish(split: str, source: str, lang: str | None, reads: list[tuple[str, list[Sentence], str, int]]) -> Split:
    """One split from `(file, sentences, summary line, empty count)` of each file read."""
    sentences = [sentence for _, file_sentences, _, _ in reads for sentence in file_sentences]
    empty = sum(count for _, _, _, count in reads)
    summary = [f"{split}: {line}" for _, _, line, _ in reads]
    for line in summary:
        logger.info("%s", line)
    if not sentences:
        raise DataError(f"{source}: the {split} split holds no sentences" + (f" in language {lang!r}" if lang else ""))
    return Split(split, source, sentences, empty, lang, summary)


def _read_file(path: str, langs: list[str] | None, default_lang: str | None,
               options: ReadOptions) -> tuple[str, list[Sentence], str, int]:
    """Read one file (or one-dataset folder), convert its tags to BIO, and summarise it."""
    wanted = None if langs is None else set(langs)
    lower = path.lower()
    if os.path.isdir(path):
        sentences, report = _read_dataset(path, None, wanted, default_lang, options)
    elif lower.endswith(TABLE_EXTENSIONS):
        sentences, report = read_table(path, wanted, default_lang, options)
    elif lower.endswith(JSON_EXTENSIONS) or _looks_like_json_lines(path):
        sentences, report = read_json(path, wanted, default_lang, options)
    else:
        sentences, report = read_columns(path, options)
    sentences, scheme = _to_bio(sentences, report, options)
    return path, sentences, _summary_line(path, report, scheme, sentences), report.empty


def _looks_like_json_lines(path: str) -> bool:
    """A column-file name holding JSON lines (`train.txt` of `{"tokens": ...}` records)."""
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if raw.strip():
                    return raw.lstrip().lstrip(b"\xef\xbb\xbf").startswith(b"{")
    except OSError:
        return False
    return False


def _to_bio(sentences: list[Sentence], report: FileReport, options: ReadOptions) -> tuple[list[Sentence], str]:
    """A file's sentences with BIO tags, and the scheme they were read with (and why)."""
    if not report.raw_tags:
        return sentences, "BIO, made from the character spans"
    try:
        converted, detection = convert_to_bio([s.tags for s in sentences], options.tag_scheme)
    except SchemeError as exc:
        sentence, word = exc.position
        where = sentences[sentence].locate(word)
        also = ""
        if exc.other is not None and exc.other != exc.position:
            other_sentence, other_word = exc.other
            also = f" (see {sentences[other_sentence].locate(other_word)})"
        raise DataError(f"{where}: {exc}{also}") from None
    changed = [s if tuple(tags) == s.tags else replace(s, tags=tuple(tags)) for s, tags in zip(sentences, converted)]
    scheme = detection.scheme.name
    if scheme != "BIO":
        scheme += ", converted to BIO"
    return changed, f"{scheme} ({detection.reason})"


def _summary_line(path: str, report: FileReport, scheme: str, sentences: list[Sentence]) -> str:
    """`path: format; scheme ...; N sentences, N words; entities ...; ...` for the log."""
    words = sum(len(s.tokens) for s in sentences)
    counts = entity_counts(s.tags for s in sentences)
    entities = ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"
    parts = [report.format, f"scheme {scheme}", f"{len(sentences)} sentences, {words} words",
             f"entities: {entities}"]
    if report.documents:
        parts.append(f"{report.documents} documents (-DOCSTART-)")
    if report.comments:
        parts.append(f"{report.comments} comment lines")
    if not report.raw_tags:
        parts.append(f"{report.words_split} words split at a span boundary")
    for reason, count in sorted(report.notes.items()):
        parts.append(f"{reason}: {count}")
    skipped = dict(report.skipped)
    if report.empty:
        skipped["empty sentences"] = report.empty
    if skipped:
        parts.append("skipped " + ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())))
    return f"{path}: " + "; ".join(parts)


def _hub_file_lang(path: str) -> str | None:
    """The language of a hub-layout file name (`train_en.jsonl` -> `en`), None for other files."""
    stem = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.basename(os.path.dirname(path))
    if stem.startswith(folder + "_") and path.endswith(".jsonl"):
        return stem[len(folder) + 1:]
    return None


def split_of_file_name(name: str) -> str | None:
    """The split a file name names (`eng.testa` -> val, `train-00000-of-00002.parquet` -> train), or None."""
    lower = name.lower()
    if lower.startswith("."):
        return None
    stem, ext = os.path.splitext(lower)
    if ext in COLUMN_EXTENSIONS or ext in JSON_EXTENSIONS or ext in TABLE_EXTENSIONS:
        parts = re.split(r"[._-]", stem)
    elif any(ext[1:] in aliases for aliases in SPLIT_ALIASES.values()):
        parts = re.split(r"[._-]", lower)  # eng.train, eng.testa: the split is the extension
    else:
        return None
    named = {split for split, aliases in SPLIT_ALIASES.items() if any(part in aliases for part in parts)}
    return named.pop() if len(named) == 1 else None


def _candidates(folder: str, split: str, langs: list[str] | None) -> list[list[str]]:
    """Each distinct source of `split` in a folder, as the list of its files (shards together)."""
    candidates: list[list[str]] = []
    for stem in HUB_STEMS[split]:
        sub = os.path.join(folder, stem)
        if not os.path.isdir(sub):
            continue
        if langs is None:
            prefix = f"{stem}_"
            files = sorted(os.path.join(sub, n) for n in os.listdir(sub) if n.startswith(prefix) and n.endswith(".jsonl"))
        else:
            files = [os.path.join(sub, f"{stem}_{lang}.jsonl") for lang in langs]
            files = [f for f in files if os.path.isfile(f)]
        if files:
            candidates.append(files)
    shards: dict[tuple[str, str], list[str]] = {}
    for place in (folder, os.path.join(folder, "data")):
        if not os.path.isdir(place):
            continue
        for name in sorted(os.listdir(place)):
            path = os.path.join(place, name)
            if not os.path.isfile(path) or split_of_file_name(name) != split:
                continue
            shard = _SHARD.match(name)
            if shard:
                shards.setdefault((place, shard["prefix"] + shard["ext"]), []).append(path)
            else:
                candidates.append([path])
    candidates.extend(shards.values())
    return candidates


def _expected_names(split: str, lang: str) -> str:
    stem = HUB_STEMS[split][0]
    first = "*" if lang.strip().lower() == "all" else lang.split(",")[0].strip()
    return f"{stem}/{stem}_{first}.jsonl or {stem}.txt"


def _read_dataset(path: str, split: str | None, langs: set[str] | None, default_lang: str | None,
                  options: ReadOptions) -> tuple[list[Sentence], FileReport]:
    """Rows of a `save_to_disk` folder (one dataset, or `split` of a dataset dict), with its features."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a runtime dependency
        raise DataError("reading a datasets folder needs the `datasets` package: pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # a damaged or foreign folder fails inside datasets in many ways
        raise DataError(f"{path}: cannot read as a datasets.save_to_disk folder ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]})") from None
    where = path
    if split is not None:
        names = [name for name in loaded if canonical_split_or_none(name) == split]
        if len(names) > 1:
            raise DataError(f"{path}: two sources for the {split} split: {' and '.join(names)}; keep one")
        if not names:
            raise SplitNotFound(f"{path}: no {split} split (the dataset has {', '.join(loaded) or 'none'})")
        loaded, where = loaded[names[0]], os.path.join(path, names[0])
    sentences, report = rows_to_sentences(loaded, loaded.column_names, loaded.features, where, langs, default_lang,
                                          options)
    report.format = f"datasets folder: {report.format}"
    return sentences, report


def canonical_split_or_none(name: str) -> str | None:
    """`canonical_split`, or None for a name that is no split."""
    try:
        return canonical_split(name)
    except DataError:
        return None


def _read_dataset_dict(path: str, split: str, langs: list[str] | None,
                       options: ReadOptions) -> tuple[str, list[Sentence], str, int]:
    sentences, report = _read_dataset(path, split, None if langs is None else set(langs), None, options)
    sentences, scheme = _to_bio(sentences, report, options)
    return path, sentences, _summary_line(path, report, scheme, sentences), report.empty


def _read_hub(dataset_id: str, split: str, langs: list[str] | None,
              options: ReadOptions) -> tuple[str, list[Sentence], str, int]:
    """Fetch a split from the hub (or the local cache) via `datasets`.

    MultiNERD: only the wanted languages' files of the split. Any other dataset (`owner/name`
    or `owner/name:config`): the split of the dataset, tag names from its ClassLabel feature.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - a runtime dependency
        raise DataError("reading a hub dataset needs the `datasets` package: pip install datasets") from None
    name, _, config = dataset_id.partition(":")
    wanted = None if langs is None else set(langs)
    try:
        if name == DEFAULT_HUB_DATASET:
            stem = HUB_STEMS[split][0]
            data_files = ([f"{stem}/{stem}_*.jsonl"] if langs is None
                          else [f"{stem}/{stem}_{lang}.jsonl" for lang in langs])
            described = ", ".join(data_files)
            rows = datasets.load_dataset(name, data_files={split: data_files}, split=split)
        else:
            described = f"the {split} split"
            loaded = datasets.load_dataset(name, config or None)
            names = [key for key in loaded if canonical_split_or_none(key) == split]
            if not names:
                raise SplitNotFound(f"hub:{dataset_id}: no {split} split (the dataset has {', '.join(loaded)})")
            rows = loaded[names[0]]
    except SplitNotFound:
        raise
    except Exception as exc:  # network, missing repo or file: all end the same way for the user
        raise DataError(
            f"cannot load {described} of {dataset_id} from the Hugging Face hub and no copy is cached "
            f"({type(exc).__name__}); use --data FOLDER with a local copy (the hub layout: train/train_en.jsonl, "
            f"val/val_en.jsonl, test/test_en.jsonl; column files; or a datasets.save_to_disk folder)"
        ) from None
    where = f"hub:{dataset_id}/{split}"
    sentences, report = rows_to_sentences(rows, rows.column_names, rows.features, where, wanted,
                                          None, options, unit="record")
    report.format = f"hub dataset: {report.format}"
    sentences, scheme = _to_bio(sentences, report, options)
    return where, sentences, _summary_line(where, report, scheme, sentences), report.empty


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
