"""`nerlib convert`: write any source nerlib reads in another format, entity for entity.

    python -m nerlib convert eng.train train.tsv --to bio-tsv
    python -m nerlib convert path/to/conll2003 conll-spans --to spans

Formats written:

* `bio-tsv`: token TAB tag lines, BIO tags, a blank line between sentences;
* `jsonl`: MultiNERD's layout, `{"tokens", "ner_tags", "lang"}` a line, with string BIO tags;
* `spans`: `{"text", "entities": [{"start", "end", "label"}]}` a line, the words joined by one
  space (what annotation tools and `nerlib.predict` take).

A single file (or one-dataset folder) becomes a single file; a folder or hub id becomes a folder
with one file a split, in a layout `--data` reads back (`train.tsv`, `train.jsonl`, or
`train/train_en.jsonl`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Callable, Sequence

from .data import Sentence, SplitNotFound, load_split, parse_langs, single_split_source, split_of_file_name
from .errors import ConfigError, DataError
from .formats import ReadOptions, write_bio_tsv, write_span_jsonl, write_token_jsonl

logger = logging.getLogger(__name__)

WRITERS: dict[str, Callable] = {"bio-tsv": write_bio_tsv, "jsonl": write_token_jsonl, "spans": write_span_jsonl}


def convert(source: str, output: str, to: str, lang: str = "en", options: ReadOptions = ReadOptions(),
            overwrite: bool = False) -> dict[str, list[str]]:
    """Read `source` and write it as `to` into `output`.

    Args:
        source: a file, a folder or a hub dataset id (anything `--data` takes).
        output: a file for a single-file source, else a folder.
        to: `bio-tsv`, `jsonl` or `spans`.
        lang: the language(s) read, as for `--lang`.
        options: how the source is read (tag scheme, columns, overlaps).
        overwrite: replace output files that exist.

    Returns:
        Split -> the files written.

    Raises:
        ConfigError: an unknown format, an output that exists, or one that cannot be written.
        DataError: the source cannot be read.
    """
    if to not in WRITERS:
        raise ConfigError(f"--to must be one of {', '.join(WRITERS)}, got {to!r}")
    if single_split_source(source):
        split = split_of_file_name(os.path.basename(source.rstrip(os.sep))) or "train"
        sentences = load_split(source, split, lang, options).sentences
        _write(output, sentences, to, overwrite)
        return {split: [output]}
    written: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        try:
            sentences = load_split(source, split, lang, options).sentences
        except SplitNotFound:
            continue
        written[split] = []
        for path, group in _layout(output, split, to, lang, sentences):
            _write(path, group, to, overwrite)
            written[split].append(path)
    if not written:  # pragma: no cover - load_split raises for a source without any split
        raise DataError(f"{source}: no split to convert")
    return written


def _layout(output: str, split: str, to: str, lang: str,
            sentences: Sequence[Sentence]) -> list[tuple[str, list[Sentence]]]:
    """Where each sentence of a split goes in an output folder."""
    if to == "bio-tsv":
        return [(os.path.join(output, f"{split}.tsv"), list(sentences))]
    if to == "spans":
        return [(os.path.join(output, f"{split}.jsonl"), list(sentences))]
    # MultiNERD's hub layout: one file a language.
    langs = parse_langs(lang)
    fallback = langs[0] if langs and len(langs) == 1 else "und"
    by_lang: dict[str, list[Sentence]] = {}
    for sentence in sentences:
        by_lang.setdefault(sentence.lang or fallback, []).append(sentence)
    return [(os.path.join(output, split, f"{split}_{code}.jsonl"), group) for code, group in sorted(by_lang.items())]


def _write(path: str, sentences: Sequence[Sentence], to: str, overwrite: bool) -> None:
    """Write atomically: a temporary file beside `path`, renamed into place when complete."""
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{path}: exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=".tmp-", suffix=".part",
                                             delete=False)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with handle:
            WRITERS[to](sentences, handle)
        os.chmod(handle.name, 0o666 & ~_umask())  # a temporary file is private; the result is not
        os.replace(handle.name, path)
    except OSError as exc:
        _remove_quietly(handle.name)
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None
    except BaseException:
        _remove_quietly(handle.name)
        raise
    logger.info("wrote %d sentences to %s", len(sentences), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
