"""Text: the one word splitter that prediction and character-offset data share, the one UTF-8
line reader of data files and prediction input, one JSON line, and what reads as a hub id.

Pure Python (no torch), so the data readers can split annotated text exactly as `nerlib.predict`
splits what it is given, and training and prediction see the same words.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from typing import BinaryIO, Iterator

from .errors import DataError


# The planes that hold combining marks: the BMP, the Supplementary Multilingual Plane (Brahmi,
# Chakma, musical and mathematical marks...) and the Supplementary Special-purpose Plane (variation
# selectors). Unicode's roadmap gives planes 2 and 3 to ideographs and 15 and 16 to private use; the
# rest are unassigned. (A test checks every mark of the running Python's Unicode is listed.)
_MARK_PLANES = (0, 1, 14)


def _combining_marks() -> str:
    """A regex character-class body of every combining mark (categories Mn, Mc, Me)."""
    ranges = []
    for plane in _MARK_PLANES:
        first = plane << 16
        # One letter a code point, its category's major class: the runs of M are the marks.
        majors = "".join([unicodedata.category(chr(code))[0] for code in range(first, first + 0x10000)])
        ranges += [f"{chr(first + run.start())}-{chr(first + run.end() - 1)}" for run in re.finditer("M+", majors)]
    return "".join(ranges)


# Zero-width non-joiner and joiner: inside words of Indic scripts and Persian, and in emoji sequences.
_JOINERS = "\u200c\u200d"
# What may follow an emoji in one sequence besides marks: skin-tone modifiers, and the tag
# characters of subdivision flags.
_EMOJI_TRAILERS = "\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f"
_REGIONAL_INDICATOR = "[\U0001f1e6-\U0001f1ff]"  # two of them are one flag

# CJK ideographs are words of one character each, as in MultiNERD's Chinese data and BERT.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CLITIC = r"(?i:s|m|d|ll|re|ve)(?!\w)"
_TITLES = ("Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Mt|Ft|No|Nos|vs|Gen|Col|Capt|Lt|Sgt|Rev|Sen|Gov|Rep|Co|Corp|Inc|Ltd|Bros|"
           "Ave|Jan|Feb|Aug|Sept|Oct|Nov|Dec")


@functools.lru_cache(maxsize=1)
def word_pattern() -> re.Pattern:
    """The regular expression of a word (compiled on first use: listing the marks takes ~0.1 s)."""
    # A run is letters and digits (never ideographs), each with the combining marks and joiners that
    # follow it; a symbol keeps its marks, modifiers and joined symbols (an emoji ZWJ sequence).
    marks = _combining_marks()
    run = rf"(?:[^\W{_CJK}][{marks}{_JOINERS}]*)+"
    symbol = rf"\S[{marks}{_EMOJI_TRAILERS}]*(?:\u200d\S[{marks}{_EMOJI_TRAILERS}]*)*"
    after_word = rf"(?<=[\w{marks}{_JOINERS}])"  # a word's last character may be a mark (café's, Hindi)
    return re.compile(
        rf"""
          (?<!\w)(?:[^\W\d_]\.){{2,}}(?!\w)           # letters with dots: U.S., i.e., F.C.
        | (?<!\w)(?:{_TITLES})\.(?=\s+\w)             # a title before a word: Mr. Smith, St. Louis, No. 5
        | (?<!\w)[A-Z]\.(?=\s+[A-Z])                  # an initial before a name: J. R. R. Tolkien
        | {run}(?=(?i:n['’]t)(?!\w))                  # do|n't, ca|n't
        | {after_word}(?i:n['’]t)(?!\w)
        | {after_word}['’]{_CLITIC}                   # Smith|'s, I|'m, they|'re
        | {run}(?:(?:[-‐‑–&/]|['’](?!{_CLITIC})|(?<=\d)[.,:](?=\d)){run})*
                                                      # well-known, Paris–Roubaix, O'Neill, R&B, km/h, 5,000
        | {_REGIONAL_INDICATOR}{{2}}                   # a flag
        | {symbol}                                    # anything else is a word of one character
        """,
        re.VERBOSE,
    )


def split_words(text: str) -> list[tuple[int, int]]:
    """Cut a text into words as MultiNERD and CoNLL are tokenised; returns each word's character span.

    Whitespace separates words and is never part of one; punctuation is a word of its own, except
    inside hyphenated words (`well-known`), names with apostrophes (`O'Neill`), numbers (`5,000`,
    `3.5`), dotted abbreviations (`U.S.`, `i.e.`), titles and initials before a name (`Dr.`, `J.`);
    clitics are split off (`Smith` `'s`, `do` `n't`). Invisible format and control characters
    (zero-width space, byte-order mark) are no words.

    Args:
        text: any string.

    Returns:
        `(start, end)` of each word, so `text[start:end]` is the word.
    """
    spans = []
    for match in word_pattern().finditer(text):
        if all(unicodedata.category(ch) in ("Cc", "Cf") for ch in match.group()):
            continue
        spans.append(match.span())
    return spans


def decode_utf8(raw: bytes, name: str, first_line: int = 1) -> str:
    """`raw` decoded as UTF-8.

    Args:
        raw: a line, or a whole input whose first line is number `first_line`.
        name: the file (or stream) named in the error.

    Raises:
        DataError: `raw` is not UTF-8, naming the line, the byte and its column.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column})") from None


def utf8_lines(handle: BinaryIO, name: str) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of each line of a binary stream.

    Only the line ending (`\\n` or `\\r\\n`) is dropped, so character offsets point into the
    line as it was read.

    Raises:
        DataError: a line is not UTF-8 (see `decode_utf8`).
    """
    for number, raw in enumerate(handle, start=1):
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        yield number, decode_utf8(raw, name, number)


# A Hugging Face hub id: `name` or `owner/name` of letters, digits, `_`, `.` and `-`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str, dataset: bool = False) -> bool:
    """Whether `name` reads as a hub id rather than a path (`./x`, `/a/b/c`, an existing file).

    Args:
        name: a `--model` or `--data` value.
        dataset: a dataset id: `owner/name`, optionally followed by `:config`.
    """
    if os.path.exists(name):
        return False
    if dataset:
        name = name.split(":", 1)[0]
        if name.count("/") != 1:
            return False
    return bool(_HUB_ID.match(name))


# Characters that end a line for some line splitters (Python's str.splitlines, JavaScript) but that
# json.dumps(ensure_ascii=False) leaves raw: escaped, so one JSON line stays one line for every reader.
_LINE_BREAKS_JSON_KEEPS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(record) -> str:
    """`record` as one line of JSON (UTF-8 text kept readable), newline included."""
    line = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS_JSON_KEEPS.items():
        line = line.replace(raw, escaped)  # outside strings JSON is ASCII, so these are inside strings
    return line + "\n"
