"""File formats: each reader turns one file into sentences with the tags as written, and says what it did.

Readers are pure functions of a file (no torch, no model). Every problem is raised as
`DataError` naming the file and line (or row, or record); any exception while one record is
parsed becomes such an error too, so no malformed input ends in a traceback.

* column files: a token and a tag on each line, whitespace- or tab-separated, any number of
  columns (token first and tag last unless told otherwise; an index column first is skipped),
  a blank line between sentences, `-DOCSTART-` lines between documents, `#` comment lines;
* JSON lines (or a JSON array, as Label Studio exports it) of token records
  (`{"tokens", "ner_tags"}`, MultiNERD's layout) or of raw text with character spans
  (`{"text", "entities": [{"start", "end", "label"}]}`, `spans`, `[start, end, label]`
  triples, Doccano's `label`, Label Studio's `data.text` + `annotations[].result[].value`);
* Parquet and Arrow files and `datasets.save_to_disk` folders, with integer tags named by the
  dataset's `ClassLabel` feature.

Character spans are cut into words exactly as `nerlib.predict` cuts raw text (`split_words`);
a span boundary inside a word splits the word there, and the count is reported.

Tags come back as written; `nerlib.data` converts them to BIO (`nerlib.schemes`). Span
records are turned into BIO tags here, since their entities are already explicit.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .errors import ConfigError, DataError
from .labels import MULTINERD_TAGS, entity_spans
from .schemes import SCHEME_CHOICES, split_tag, to_bio
from .text import json_line, split_words, utf8_lines

logger = logging.getLogger(__name__)

JSON_EXTENSIONS = (".jsonl", ".json", ".ndjson")
TABLE_EXTENSIONS = (".parquet", ".arrow")
# Column files: these extensions, or none at all (CoNLL-2003's eng.train), or a split name as
# the extension (eng.testa).
COLUMN_EXTENSIONS = ("", ".txt", ".tsv", ".conll", ".conllu", ".iob", ".iob1", ".iob2", ".bio", ".bioes",
                     ".iobes", ".bilou", ".io", ".col", ".tags")
TOKEN_KEYS = ("tokens", "words")
TAG_KEYS = ("ner_tags", "tags", "labels", "ner")
SPAN_LIST_KEYS = ("entities", "spans", "label", "labels")
ON_OVERLAP = ("error", "keep-longest")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, their string tags, and where it was read from.

    `path` and `line` locate the sentence; in column files token i stands on line
    `token_lines[i]` (or `line + i`, with `per_token_lines`), in JSON lines all tokens share one
    line. `unit` names what `line` counts: `line`, or `row` / `record` in tables and datasets.
    `lang` is the record's language where the source says it.
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    path: str
    line: int
    per_token_lines: bool = False
    lang: str | None = None
    token_lines: tuple[int, ...] | None = None
    unit: str = "line"

    def locate(self, token_index: int | None = None) -> str:
        """`file:line` of the sentence, or of one of its tokens."""
        if self.unit != "line":
            where = f"{self.path} {self.unit} {self.line}"
            return where if token_index is None else f"{where} (token {token_index})"
        if token_index is None:
            return f"{self.path}:{self.line}"
        if self.token_lines is not None:
            return f"{self.path}:{self.token_lines[token_index]}"
        if self.per_token_lines:
            return f"{self.path}:{self.line + token_index}"
        return f"{self.path}:{self.line} (token {token_index})"


@dataclass
class FileReport:
    """What reading one file found besides its sentences, for the data summary.

    Attributes:
        format: the format found, in words (`columns: token 1, tag 4 of 4`, `span JSON lines`).
        raw_tags: whether the tags are as written (to be converted by a scheme) or already BIO
            (made here from character spans).
        documents: `-DOCSTART-` lines.
        comments: `#` comment lines.
        words_split: span boundaries that fell inside a word and split it.
        empty: sentences without words (skipped).
        skipped: records left out, by reason (other languages, tasks without annotation, ...).
        notes: other things done, by kind, with counts (duplicate spans merged, ...).
    """

    format: str
    raw_tags: bool = True
    documents: int = 0
    comments: int = 0
    words_split: int = 0
    empty: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class ReadOptions:
    """How files are read: `--tag-scheme`, `--token-column`, `--tag-column`, `--on-overlap`.

    Columns count from 1, the index column included.

    Raises:
        ConfigError: an option out of range.
    """

    tag_scheme: str = "auto"
    token_column: int | None = None
    tag_column: int | None = None
    on_overlap: str = "error"

    def __post_init__(self) -> None:
        problems = []
        if self.tag_scheme not in SCHEME_CHOICES:
            problems.append(f"--tag-scheme must be one of {', '.join(SCHEME_CHOICES)}, got {self.tag_scheme!r}")
        for name in ("token_column", "tag_column"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"--{name.replace('_', '-')} counts columns from 1, got {value!r}")
        if (self.token_column is not None and self.token_column == self.tag_column):
            problems.append(f"--token-column and --tag-column are both {self.token_column}")
        if self.on_overlap not in ON_OVERLAP:
            problems.append(f"--on-overlap must be error or keep-longest, got {self.on_overlap!r}")
        if problems:
            raise ConfigError("; ".join(problems))


def decoded_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the line ending) for each line; CRLF reads like LF.

    Raises:
        DataError: the file cannot be opened, or a line is not UTF-8.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, text in utf8_lines(handle, path):
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text.rstrip("\r\n")


# --- column files ------------------------------------------------------------------------------


def _columns(text: str, tabs: bool) -> list[str]:
    """A line's columns: tab-separated in a file of tabs (tokens may hold spaces), else whitespace-separated.

    Whitespace around the line is not a column: a trailing tab adds no empty last column.
    """
    stripped = text.strip()
    if tabs:
        return [column.strip() for column in stripped.split("\t")]
    return stripped.split()


def _is_tag(value: str) -> bool:
    return split_tag(value)[0] is not None


def read_columns(path: str, options: ReadOptions = ReadOptions()) -> tuple[list[Sentence], FileReport]:
    """Read a column file: one token a line, sentences separated by blank lines.

    Every token line of a file has the same number of columns. The token is the first column
    (the second when the first counts the words of each sentence, 1, 2, 3... or 0, 1, 2...,
    as in CoNLL-U), the tag the last, unless `options` names them. `-DOCSTART-` lines end a
    document (and the sentence before them); a line starting with `#` is a comment unless it
    reads as a token line (the file's column count, a tag in the tag column), since tweets have
    `#hashtags`.

    Args:
        path: the file.
        options: token and tag columns (1-based), if not the default ones.

    Returns:
        The sentences with their tags as written, and what was found.

    Raises:
        DataError: with file and line: columns that differ from the file's, a bad index
            column, a missing column, an empty token or tag.
    """
    lines = [(number, text) for number, text in decoded_lines(path)]
    report = FileReport(format="columns")
    width: int | None = None
    width_line, first, tabs = 0, "", False
    for number, text in lines:
        if text.strip() and not text.lstrip().startswith(("#", "-DOCSTART-")):
            # The first token line decides: tab-separated (tokens may hold spaces) or whitespace.
            tabs = "\t" in text.strip()
            columns = _columns(text, tabs)
            width, width_line, first = len(columns), number, columns[0]
            break
    if width is None:
        return [], report
    tag_column = (options.tag_column or width) - 1
    token_column = None if options.token_column is None else options.token_column - 1
    index_column = False
    if token_column is None:
        # An index column counts words from 0 or 1: decided on the file's first token line.
        index_column = width >= 3 and tag_column != 0 and first in ("0", "1")
        token_column = 1 if index_column else 0
    for name, column in (("token", token_column), ("tag", tag_column)):
        if column >= width:
            raise DataError(f"{path}:{width_line}: no {name} column {column + 1}: the file's lines have {width} "
                            f"column{'s' if width > 1 else ''}")
    if width < 2 and options.token_column is None and options.tag_column is None:
        raise DataError(f"{path}:{width_line}: 1 column; expected a token and a tag (token TAB tag, or CoNLL's "
                        f"token POS chunk tag)")
    if token_column == tag_column:
        raise DataError(f"{path}:{width_line}: the token and the tag would be the same column {token_column + 1}")

    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    token_lines: list[int] = []
    index_base = int(first) if index_column else 0

    def close_sentence() -> None:
        nonlocal tokens, tags, token_lines
        if tokens:
            sentences.append(Sentence(tuple(tokens), tuple(tags), path, token_lines[0], per_token_lines=True,
                                      token_lines=tuple(token_lines)))
        tokens, tags, token_lines = [], [], []

    for number, text in lines:
        if not text.strip():
            close_sentence()
            continue
        columns = _columns(text, tabs)
        if columns[0].split()[0] == "-DOCSTART-":
            close_sentence()
            report.documents += 1
            continue
        if columns[0].startswith("#") and not (len(columns) == width and _is_tag(columns[tag_column])):
            report.comments += 1
            continue
        if len(columns) != width:
            raise DataError(f"{path}:{number}: {len(columns)} column{'s' if len(columns) != 1 else ''} where line "
                            f"{width_line} has {width} (every token line of a file has the same columns)")
        if index_column and columns[0] != str(index_base + len(tokens)):
            raise DataError(f"{path}:{number}: expected {index_base + len(tokens)} in the index column, got "
                            f"{columns[0]!r} (the first column counts the words of each sentence from {index_base}, "
                            f"as on line {width_line}; pass --token-column 1 if it holds tokens)")
        token, tag = columns[token_column], columns[tag_column]
        if not token:
            raise DataError(f"{path}:{number}: empty token")
        if not tag:
            raise DataError(f"{path}:{number}: empty tag")
        tokens.append(token)
        tags.append(tag)
        token_lines.append(number)
    close_sentence()
    described = f"columns ({'tab' if tabs else 'space'}-separated): token {token_column + 1}, tag {tag_column + 1} of {width}"
    if index_column:
        described += ", index column 1"
    report.format = described
    return sentences, report


# --- JSON: token records and character spans --------------------------------------------------


def _short(exc: BaseException) -> str:
    """An exception as a short single line."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # huge integers, deep nesting
        raise DataError(f"{where}: malformed JSON: {_short(exc)}") from None


def json_records(path: str) -> Iterator[tuple[object, int]]:
    """`(record, line)` for each record of a JSON lines file or of a JSON array file.

    A file whose first non-blank character is `[` is one JSON array (Label Studio's export);
    anything else is JSON lines, blank lines skipped.

    Raises:
        DataError: malformed JSON (with the line), bytes that are not UTF-8.
    """
    lines = decoded_lines(path)
    first_text = None
    buffered = []
    for number, text in lines:
        buffered.append((number, text))
        if text.strip():
            first_text = text
            break
    if first_text is not None and _starts_an_array(first_text):
        whole = "\n".join(t for _, t in buffered) + "\n" + "\n".join(t for _, t in lines)
        yield from _json_array(whole, path, 0)
        return
    for number, text in itertools.chain(buffered, lines):
        if text.strip():
            yield _parse_json(text, f"{path}:{number}"), number


def _starts_an_array(first_line: str) -> bool:
    """Whether a file is one JSON array of records rather than JSON lines.

    A line that is a whole spaCy record (`[text, {"entities": ...}]`) starts JSON lines; a line
    that opens an array it does not close, or holds a whole array of records, starts an array.
    """
    if not first_line.lstrip().startswith("["):
        return False
    try:
        value = json.loads(first_line)
    except (ValueError, RecursionError):
        return True
    return record_kind(value) != "spans"


def _json_array(text: str, path: str, line_offset: int) -> Iterator[tuple[object, int]]:
    """The elements of a JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    position = whitespace.match(text, 0).end() + 1  # past the "["
    line, counted = 1 + line_offset, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    expect_value = True
    while True:
        position = whitespace.match(text, position).end()
        if position >= len(text):
            raise DataError(f"{path}:{line_at(len(text))}: malformed JSON: the array is not closed with ]")
        if text[position] == "]":
            return
        if not expect_value:
            if text[position] != ",":
                raise DataError(f"{path}:{line_at(position)}: malformed JSON: expected , or ] between records")
            position = whitespace.match(text, position + 1).end()
        where_line = line_at(position)
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno + line_offset}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise DataError(f"{path}:{where_line}: malformed JSON: {_short(exc)}") from None
        expect_value = False
        yield record, where_line


def _check_unicode(strings: Sequence[str], what: str, where: str) -> None:
    """Strings from JSON may hold lone surrogates (`\\ud800`), which no file or tokenizer can take."""
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        for index, value in enumerate(strings):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(value[exc.start])
                raise DataError(f"{where}: {what} {index} is not valid Unicode (lone surrogate U+{code:04X})") from None


def _first_key(record: dict, keys: Sequence[str]) -> str | None:
    return next((key for key in keys if key in record), None)


def record_kind(record: object) -> str:
    """`tokens` for token records, `spans` for text with character spans, `label-studio`, or `other`."""
    if isinstance(record, dict):
        if _first_key(record, TOKEN_KEYS):
            return "tokens"
        if isinstance(record.get("data"), dict) and ("annotations" in record or "predictions" in record
                                                     or "text" in record["data"]):
            return "label-studio"
        if "text" in record:
            return "spans"
    if isinstance(record, list) and len(record) == 2 and isinstance(record[0], str) and isinstance(record[1], dict):
        return "spans"  # spaCy's [text, {"entities": [[start, end, label], ...]}]
    return "other"


def _tag_name(tag: object, names: Sequence[str], where: str, index: int) -> str:
    """A tag's name: integer ids through `names` (a ClassLabel's, else MultiNERD's), strings as they are."""
    if isinstance(tag, int) and not isinstance(tag, bool):
        if 0 <= tag < len(names):
            return names[tag]
        owner = "MultiNERD's" if names is MULTINERD_TAGS else "the dataset's"
        raise DataError(f"{where} (token {index}): unknown tag id {tag}; {owner} ids are 0..{len(names) - 1}")
    if isinstance(tag, str):
        return tag
    raise DataError(f"{where} (token {index}): malformed tag {tag!r}; expected a string or an integer id")


def token_record(record: dict, where: str, names: Sequence[str] = MULTINERD_TAGS) -> tuple[list[str], list[str]]:
    """Tokens and tags of a `{"tokens", "ner_tags"}` record (also `words`, `tags`, `labels`).

    Raises:
        DataError: a missing or malformed field, lengths that differ, an unknown tag id.
    """
    token_key, tag_key = _first_key(record, TOKEN_KEYS), _first_key(record, TAG_KEYS)
    if tag_key is None:
        raise DataError(f"{where}: record has no ner_tags field")
    tokens, tags = record[token_key], record[tag_key]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: {token_key} must be a list of strings")
    if not isinstance(tags, list):
        raise DataError(f"{where}: {tag_key} must be a list")
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} {token_key} but {len(tags)} {tag_key}")
    tag_names = [_tag_name(tag, names, where, i) for i, tag in enumerate(tags)]
    _check_unicode(tokens, "token", where)
    _check_unicode(tag_names, "tag of token", where)
    return tokens, tag_names


@dataclass(frozen=True)
class CharSpan:
    start: int
    end: int
    label: str


def _span_from_item(item: object, where: str) -> CharSpan:
    """A span from `[start, end, label]` or `{"start"/"start_offset", "end"/"end_offset", "label"/"labels"}`."""
    if isinstance(item, (list, tuple)) and len(item) == 3:
        start, end, label = item
    elif isinstance(item, dict):
        start = item.get("start", item.get("start_offset"))
        end = item.get("end", item.get("end_offset"))
        label = item.get("label", item.get("labels"))
        if isinstance(label, list):
            if len(label) != 1:
                raise DataError(f"{where}: a span has {len(label)} labels {label!r}; NER here gives a span one type")
            label = label[0]
    else:
        raise DataError(f"{where}: a span must be [start, end, label] or an object with start, end and label, "
                        f"got {json.dumps(item)[:60]}")
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{where}: span {name} must be an integer offset, got {value!r}")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{where}: span label must be a non-empty string, got {label!r}")
    if any(ch.isspace() for ch in label) or split_tag(label)[0] not in (None,):
        raise DataError(f"{where}: span label {label!r} must be a class name without spaces or a B-/I- prefix")
    return CharSpan(start, end, label)


def _utf16_offset(text: str, offset: int) -> int | None:
    """The string index at UTF-16 code unit `offset` (JavaScript's offsets), or None if inside a character."""
    units = 0
    for index, ch in enumerate(text):
        if units == offset:
            return index
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text) if units == offset else None


def _fit_span(text: str, span: CharSpan, quoted: object, where: str) -> CharSpan:
    """Check a span against its text; JavaScript (UTF-16) offsets are mapped when the quoted text says so."""
    if not 0 <= span.start < span.end:
        raise DataError(f"{where}: span [{span.start}, {span.end}) {span.label} is empty or reversed")
    if isinstance(quoted, str) and text[span.start:span.end] != quoted:
        start, end = _utf16_offset(text, span.start), _utf16_offset(text, span.end)
        if start is not None and end is not None and text[start:end] == quoted:
            return CharSpan(start, end, span.label)
        raise DataError(f"{where}: span [{span.start}, {span.end}) {span.label} says {quoted!r} but the text there "
                        f"is {text[span.start:span.end]!r}")
    if span.end > len(text):
        raise DataError(f"{where}: span [{span.start}, {span.end}) {span.label} ends past the end of the text "
                        f"({len(text)} characters)")
    return span


def _resolve_overlaps(spans: list[CharSpan], on_overlap: str, where: str, report: FileReport) -> list[CharSpan]:
    """Spans sorted and flat: duplicates merged, overlaps an error or (keep-longest) the longest kept."""
    unique = sorted(set(spans), key=lambda s: (s.start, -s.end, s.label))
    if len(unique) < len(spans):
        report.notes["duplicate spans merged"] += len(spans) - len(unique)
    for previous, current in zip(unique, unique[1:]):
        if current.start < previous.end:
            break
    else:
        return unique
    if on_overlap != "keep-longest":
        raise DataError(f"{where}: spans [{previous.start}, {previous.end}) {previous.label} and "
                        f"[{current.start}, {current.end}) {current.label} overlap; NER here is flat (one type a "
                        f"word): fix the record, or pass --on-overlap keep-longest")
    kept: list[CharSpan] = []
    for span in sorted(unique, key=lambda s: (-(s.end - s.start), s.start, s.label)):
        if all(span.end <= other.start or other.end <= span.start for other in kept):
            kept.append(span)
        else:
            report.notes["overlapping spans dropped (--on-overlap keep-longest)"] += 1
    return sorted(kept, key=lambda s: s.start)


def words_and_tags(text: str, spans: Sequence[CharSpan], where: str, report: FileReport) -> tuple[list[str], list[str]]:
    """Cut a text into words as `split_words` does, split at span boundaries inside words, and tag in BIO.

    Args:
        text: the raw text.
        spans: flat, sorted, checked spans.
        where: the record, for errors.
        report: counts the words split at a span boundary.

    Returns:
        The words and their BIO tags.

    Raises:
        DataError: a span that covers no word (only spaces).
    """
    boundaries = sorted({s.start for s in spans} | {s.end for s in spans})
    pieces: list[tuple[int, int]] = []
    cut = 0
    for word_start, word_end in split_words(text):
        start = word_start
        while cut < len(boundaries) and boundaries[cut] <= word_start:
            cut += 1
        while cut < len(boundaries) and boundaries[cut] < word_end:
            pieces.append((start, boundaries[cut]))
            report.words_split += 1
            start = boundaries[cut]
            cut += 1
        pieces.append((start, word_end))
    entities = []
    piece = 0
    for span in spans:
        while piece < len(pieces) and pieces[piece][0] < span.start:
            piece += 1
        first = piece
        while piece < len(pieces) and pieces[piece][1] <= span.end:
            piece += 1
        if piece == first:
            raise DataError(f"{where}: span [{span.start}, {span.end}) {span.label} ({text[span.start:span.end]!r}) "
                            f"covers no word")
        entities.append((span.label, first, piece))
    return [text[s:e] for s, e in pieces], to_bio(entities, len(pieces))


def span_record(record: object, where: str, on_overlap: str, report: FileReport) -> tuple[list[str], list[str]] | None:
    """Words and BIO tags of a text with character spans; None for a Label Studio task left out (counted).

    Raises:
        DataError: no text, a malformed span, an offset past the end of the text, overlapping
            spans (unless `on_overlap` is `keep-longest`).
    """
    quoted: list[object] = []
    if isinstance(record, list):  # spaCy's [text, {"entities": [...]}]
        text, items = record[0], record[1].get("entities")
        if items is None:
            raise DataError(f"{where}: [text, annotations] record has no entities list")
    elif record_kind(record) == "label-studio":
        text, items, quoted = _label_studio(record, where, report)
        if text is None:
            return None
    else:
        text = record.get("text")
        key = _first_key(record, SPAN_LIST_KEYS)
        if key is None:
            raise DataError(f"{where}: record has text but no entities, spans or label list")
        items = record[key]
    if not isinstance(text, str):
        raise DataError(f"{where}: text must be a string, got {type(text).__name__}")
    _check_unicode([text], "text", where)
    if not isinstance(items, list):
        raise DataError(f"{where}: the span list must be a list, got {type(items).__name__}")
    spans = []
    for index, item in enumerate(items):
        span = _span_from_item(item, where)
        _check_unicode([span.label], "span label", where)
        hint = quoted[index] if quoted else (item.get("text") if isinstance(item, dict) else None)
        spans.append(_fit_span(text, span, hint, where))
    return words_and_tags(text, _resolve_overlaps(spans, on_overlap, where, report), where, report)


def _label_studio(task: dict, where: str, report: FileReport) -> tuple[str | None, list, list]:
    """The text, span items and quoted span texts of one Label Studio task (the first kept annotation)."""
    data = task["data"]
    text = data.get("text")
    if not isinstance(text, str):
        keys = ", ".join(sorted(map(str, data))) or "none"
        raise DataError(f"{where}: Label Studio task has no text (data.text; data has: {keys})")
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        report.skipped["Label Studio tasks without an annotation"] += 1
        return None, [], []
    if len(annotations) > 1:
        report.notes["Label Studio tasks with several annotations (the first kept)"] += 1
    result = annotations[0].get("result") or []
    if not isinstance(result, list):
        raise DataError(f"{where}: Label Studio annotation result must be a list")
    items, quoted = [], []
    for entry in result:
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, dict) or "labels" not in value or "start" not in value:
            report.notes["Label Studio results that are no labelled span (ignored)"] += 1
            continue
        items.append(value)
        quoted.append(value.get("text"))
    return text, items, quoted


def sentences_from_records(records: Iterable[tuple[object, str, int]], path: str, langs: set[str] | None,
                           default_lang: str | None, on_overlap: str, report: FileReport,
                           names: Sequence[str] = MULTINERD_TAGS, unit: str = "line") -> list[Sentence]:
    """Sentences of token or span records, all of one kind in a file.

    Args:
        records: `(record, where, number)`; `where` names it in errors, `number` is its line or row.
        path: the file.
        langs: keep records whose `lang` is one of these (None: all); others are counted.
        default_lang: the language of records that do not say.
        on_overlap: `error` or `keep-longest`.
        report: filled with what was found.
        names: the names of integer tag ids.
        unit: what `number` counts (`line`, `row`).

    Raises:
        DataError: a malformed record (any exception while it is read), naming it.
    """
    sentences: list[Sentence] = []
    kind_of_file: str | None = None
    first_number = 0
    for record, where, number in records:
        try:
            kind = record_kind(record)
            if kind == "other":
                raise DataError(f"{where}: expected a JSON object with tokens and ner_tags, or text and entities, "
                                f"got {type(record).__name__}")
            family = "tokens" if kind == "tokens" else "spans"
            if kind_of_file is None:
                kind_of_file, first_number = family, number
                report.raw_tags = family == "tokens"
                report.format = {"tokens": "token records", "spans": "character spans"}[family]
            elif family != kind_of_file:
                raise DataError(f"{where}: a {family} record in a file of {kind_of_file} records")
            lang = record.get("lang", default_lang) if isinstance(record, dict) else default_lang
            if langs is not None and lang is not None and lang not in langs:
                report.skipped[f"records in other languages than {','.join(sorted(langs))}"] += 1
                continue
            if kind_of_file == family and number == first_number:
                if kind == "label-studio":
                    report.format = "character spans (Label Studio)"
                elif kind == "spans" and isinstance(record, dict) and _first_key(record, SPAN_LIST_KEYS) == "label":
                    report.format = "character spans (Doccano)"
            if family == "tokens":
                tokens, tags = token_record(record, where, names)
            else:
                words = span_record(record, where, on_overlap, report)
                if words is None:
                    continue
                tokens, tags = words
        except DataError:
            raise
        except Exception as exc:  # anything else a strange record can raise still names the record
            raise DataError(f"{where}: cannot read the record ({_short(exc)})") from None
        if not tokens:
            report.empty += 1
            continue
        sentences.append(Sentence(tuple(tokens), tuple(tags), path, number, lang=lang if isinstance(lang, str) else None,
                                  unit=unit))
    return sentences


def read_json(path: str, langs: set[str] | None, default_lang: str | None,
              options: ReadOptions = ReadOptions()) -> tuple[list[Sentence], FileReport]:
    """Read a JSON lines (or JSON array) file of token records or character spans.

    Raises:
        DataError: malformed JSON or a malformed record, with file and line.
    """
    report = FileReport(format="JSON lines")
    records = ((record, f"{path}:{number}", number) for record, number in json_records(path))
    sentences = sentences_from_records(records, path, langs, default_lang, options.on_overlap, report)
    report.format = f"JSON: {report.format}"
    return sentences, report


# --- tables and datasets ----------------------------------------------------------------------


def tag_names_from_features(features, tag_key: str | None) -> list[str] | None:
    """The names of a `ClassLabel` tag feature (`Sequence(ClassLabel(...))`), or None."""
    if features is None or tag_key is None or tag_key not in features:
        return None
    feature = features[tag_key]
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def rows_to_sentences(rows: Iterable[dict], columns: Sequence[str], features, path: str, langs: set[str] | None,
                      default_lang: str | None, options: ReadOptions, unit: str = "row") -> tuple[list[Sentence], FileReport]:
    """Sentences of a table's rows; integer tags named by the tag column's ClassLabel where it has one."""
    tag_key = next((key for key in TAG_KEYS if key in columns), None)
    names = tag_names_from_features(features, tag_key)
    report = FileReport(format="rows")
    records = ((row, f"{path} {unit} {number}", number) for number, row in enumerate(rows, start=1))
    sentences = sentences_from_records(records, path, langs, default_lang, options.on_overlap, report,
                                       names=names or MULTINERD_TAGS, unit=unit)
    report.format += f", tag names from the ClassLabel feature ({len(names)})" if names else ""
    return sentences, report


def read_table(path: str, langs: set[str] | None, default_lang: str | None,
               options: ReadOptions = ReadOptions()) -> tuple[list[Sentence], FileReport]:
    """Read a Parquet or Arrow file (as `datasets` writes them, with its features in the schema).

    Raises:
        DataError: the file cannot be read as such, or a malformed row.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets, a dependency
        raise DataError(f"{path}: reading Parquet or Arrow needs pyarrow: pip install datasets") from None
    kind = "Parquet" if path.endswith(".parquet") else "Arrow"
    try:
        if kind == "Parquet":
            table = pq.read_table(path)
        else:
            with pa.memory_map(path) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    table = pa.ipc.open_file(source).read_all()
    except Exception as exc:  # truncated, foreign or unreadable files fail in many ways
        raise DataError(f"{path}: cannot read as {kind} ({_short(exc)})") from None
    features = _features_of_schema(table.schema)
    sentences, report = rows_to_sentences(table.to_pylist(), table.column_names, features, path, langs,
                                          default_lang, options)
    report.format = f"{kind}: {report.format}"
    return sentences, report


def _features_of_schema(schema):
    """The `datasets` features stored in an Arrow schema's metadata, or None."""
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    try:
        import datasets

        return datasets.Features.from_arrow_schema(schema)
    except Exception:  # features written by another version of datasets: integer tags stay MultiNERD ids
        logger.warning("could not read the datasets features in the file's schema; integer tags are read as "
                       "MultiNERD's ids")
        return None


# --- writers ----------------------------------------------------------------------------------


def write_bio_tsv(sentences: Sequence[Sentence], handle) -> None:
    """token TAB tag lines, a blank line after each sentence.

    Raises:
        DataError: a token holding a tab or a line break, which no column file can carry.
    """
    for sentence in sentences:
        for index, (token, tag) in enumerate(zip(sentence.tokens, sentence.tags)):
            if (any(ch in token for ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029") or token != token.strip()
                    or token == "-DOCSTART-"):
                raise DataError(f"{sentence.locate(index)}: token {token!r} holds a tab, a line break or "
                                f"surrounding spaces, or is -DOCSTART-, which a column file cannot carry; use "
                                f"--to jsonl or spans")
            handle.write(f"{token}\t{tag}\n")
        handle.write("\n")


def write_token_jsonl(sentences: Sequence[Sentence], handle) -> None:
    """`{"tokens", "ner_tags", "lang"}` a line (MultiNERD's layout, with string tags)."""
    for sentence in sentences:
        record = {"tokens": list(sentence.tokens), "ner_tags": list(sentence.tags)}
        if sentence.lang:
            record["lang"] = sentence.lang
        handle.write(json_line(record))


def write_span_jsonl(sentences: Sequence[Sentence], handle) -> None:
    """`{"text", "entities": [{"start", "end", "label"}]}` a line: the words joined with single spaces."""
    for sentence in sentences:
        starts, offset = [], 0
        for token in sentence.tokens:
            starts.append(offset)
            offset += len(token) + 1
        entities = [{"start": starts[first], "end": starts[end - 1] + len(sentence.tokens[end - 1]), "label": name}
                    for name, first, end in entity_spans(sentence.tags)]
        record = {"text": " ".join(sentence.tokens), "entities": entities}
        if sentence.lang:
            record["lang"] = sentence.lang
        handle.write(json_line(record))
