"""Words of raw text: the one word splitter that prediction and character-offset data share.

Pure Python (no torch), so the data readers can split annotated text exactly as `nerlib.predict`
splits what it is given, and training and prediction see the same words.
"""

from __future__ import annotations

import functools
import re
import unicodedata


def _combining_marks() -> str:
    """A regex character-class body of the Basic Multilingual Plane's combining marks (M*)."""
    ranges, start, previous = [], None, None
    for code in range(0x10000):
        if unicodedata.category(chr(code)).startswith("M"):
            if start is None:
                start = code
            previous = code
        elif start is not None:
            ranges.append(f"\\u{start:04x}-\\u{previous:04x}" if previous > start else f"\\u{start:04x}")
            start = None
    return "".join(ranges)


# CJK ideographs are words of one character each, as in MultiNERD's Chinese data and BERT.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CLITIC = r"(?i:s|m|d|ll|re|ve)(?!\w)"
_TITLES = ("Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Mt|Ft|No|Nos|vs|Gen|Col|Capt|Lt|Sgt|Rev|Sen|Gov|Rep|Co|Corp|Inc|Ltd|Bros|"
           "Ave|Jan|Feb|Aug|Sept|Oct|Nov|Dec")


@functools.lru_cache(maxsize=1)
def word_pattern() -> re.Pattern:
    """The regular expression of a word (compiled on first use: listing the marks takes ~50 ms)."""
    # A run is letters and digits (never ideographs), each with the combining marks that follow it.
    run = rf"(?:[^\W{_CJK}][{_combining_marks()}]*)+"
    return re.compile(
        rf"""
          (?<!\w)(?:[^\W\d_]\.){{2,}}(?!\w)           # letters with dots: U.S., i.e., F.C.
        | (?<!\w)(?:{_TITLES})\.(?=\s+\w)             # a title before a word: Mr. Smith, St. Louis, No. 5
        | (?<!\w)[A-Z]\.(?=\s+[A-Z])                  # an initial before a name: J. R. R. Tolkien
        | {run}(?=(?i:n['’]t)(?!\w))                  # do|n't, ca|n't
        | (?<=\w)(?i:n['’]t)(?!\w)
        | (?<=\w)['’]{_CLITIC}                        # Smith|'s, I|'m, they|'re
        | {run}(?:(?:[-‐‑–&/]|['’](?!{_CLITIC})|(?<=\d)[.,:](?=\d)){run})*
                                                      # well-known, Paris–Roubaix, O'Neill, R&B, km/h, 5,000
        | \S                                          # anything else is a word of one character
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
