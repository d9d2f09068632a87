"""Tag schemes: read IOB1, BIO, BIOES, BILOU and IO tags into entities, write entities as BIO.

nerlib trains and scores BIO (IOB2) tags. Data comes in other schemes too; each scheme here is a
pair of pure functions, `decode` (tags -> entities, by the scheme's rules) and `encode`
(entities -> tags), and every file is converted at the edge, entity for entity:
`to_bio(scheme.decode(tags), len(tags))`. The same sentences in any scheme therefore become the
same BIO tags, train the same model and score the same.

The schemes, and how their tags read:

* BIO (IOB2): `B-X` opens an entity, `I-X` continues one of type X. An `I-X` that follows `O` or
  another type opens an entity, as seqeval and the transformers pipeline read it.
* IOB1 (CoNLL-2003's original files): `I-X` opens an entity unless it directly follows a tag of
  type X; `B-X` is used only there, to split two adjacent entities of type X. Read this way, IOB1
  and BIO are one reading: a file's scheme only decides how its tags are written back.
* BIOES (IOBES) and BILOU: `S-X` / `U-X` is a one-word entity; `B-X I-X* E-X` / `B-X I-X* L-X`
  a longer one. These are checked strictly: a tag that breaks the pattern (an `I-X` with no open
  entity, an entity never closed) has no meaning and is an error.
* IO: every tag is `I-X` (or a bare class name `X`); a run of words of one type is one entity.
  IO cannot mark where two adjacent entities of one type meet, so such words read as one
  entity, and a `B-` tag in a file read as IO is an error (the file mixes IO with BIO or IOB1).

`detect_scheme` picks a file's scheme from its tags and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .labels import entity_spans

Span = tuple[str, int, int]  # (type, first_word, end_word), end exclusive
Position = tuple[int, int]  # (sentence index, word index) within a file

PREFIXES = ("B", "I", "E", "S", "L", "U")


class SchemeError(ValueError):
    """Tags that fit no scheme, mix two, or break their scheme's rules.

    Attributes:
        position: `(sentence, word)` of the offending tag; within one sentence's decode, only
            the word index is known and the sentence is 0.
        other: the position of an earlier tag that the offending one conflicts with, if any.
    """

    def __init__(self, message: str, position: Position, other: Position | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.other = other


def split_tag(tag: str) -> tuple[str | None, str | None]:
    """`("B", "PER")` for `B-PER`, `("O", None)` for `O`, `(None, "PER")` for a bare class name.

    A prefix is one of `B I E S L U` followed by `-` and a non-empty type; anything else that is
    not `O` is a bare name (read only by IO).
    """
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[1] == "-" and tag[0] in PREFIXES:
        return tag[0], tag[2:]
    return None, tag


def _valid_type(name: str | None) -> bool:
    return bool(name) and not any(ch.isspace() for ch in name)


def _encode_bio(spans: Sequence[Span], length: int) -> list[str]:
    tags = ["O"] * length
    for name, first, end in spans:
        tags[first] = f"B-{name}"
        for index in range(first + 1, end):
            tags[index] = f"I-{name}"
    return tags


def _encode_iob1(spans: Sequence[Span], length: int) -> list[str]:
    tags = ["O"] * length
    previous: Span | None = None
    for span in spans:
        name, first, end = span
        adjacent = previous is not None and previous[0] == name and previous[2] == first
        for index in range(first, end):
            tags[index] = f"I-{name}"
        if adjacent:
            tags[first] = f"B-{name}"
        previous = span
    return tags


def _strict_pair(begin: str, inside: str, last: str, unit: str, name: str):
    """decode/encode of a scheme that marks the last word (`E`/`L`) and one-word entities (`S`/`U`)."""

    def decode(tags: Sequence[str]) -> list[Span]:
        spans: list[Span] = []
        current: tuple[str, int] | None = None
        for index, tag in enumerate(tags):
            prefix, kind = split_tag(tag)
            if current is not None and not (prefix in (inside, last) and kind == current[0]):
                raise SchemeError(f"{tag!r} where the {name} entity opened by {begin}-{current[0]} "
                                  f"needs {inside}-{current[0]} or {last}-{current[0]}", (0, index), (0, current[1]))
            if prefix == begin:
                current = (kind, index)
            elif prefix == unit:
                spans.append((kind, index, index + 1))
            elif prefix in (inside, last):
                if current is None:
                    raise SchemeError(f"{tag!r} continues no entity ({name} opens one with {begin}- or {unit}-)",
                                      (0, index))
                if prefix == last:
                    spans.append((kind, current[1], index + 1))
                    current = None
        if current is not None:
            raise SchemeError(f"the {name} entity opened by {begin}-{current[0]} is never closed with "
                              f"{last}-{current[0]}", (0, current[1]))
        return spans

    def encode(spans: Sequence[Span], length: int) -> list[str]:
        tags = ["O"] * length
        for kind, first, end in spans:
            if end - first == 1:
                tags[first] = f"{unit}-{kind}"
                continue
            tags[first] = f"{begin}-{kind}"
            for index in range(first + 1, end - 1):
                tags[index] = f"{inside}-{kind}"
            tags[end - 1] = f"{last}-{kind}"
        return tags

    return decode, encode


def _encode_io(spans: Sequence[Span], length: int) -> list[str]:
    tags = ["O"] * length
    previous: Span | None = None
    for span in spans:
        name, first, end = span
        if previous is not None and previous[0] == name and previous[2] == first:
            raise ValueError(f"two adjacent {name} entities at word {first}: IO cannot tell them apart")
        for index in range(first, end):
            tags[index] = f"I-{name}"
        previous = span
    return tags


@dataclass(frozen=True)
class Scheme:
    """A tag scheme: the prefixes its tags may carry and its two conversions."""

    name: str
    prefixes: frozenset
    decode: Callable[[Sequence[str]], list[Span]]
    encode: Callable[[Sequence[Span], int], list[str]]
    bare_names: bool = False  # whether a tag without prefix is a class name (IO only)


# BIO and IOB1 read alike (the module's docstring says why), and so does IO once its tags are
# checked to hold no B-: `entity_spans`, seqeval's lenient reading, where a run of I- tags of one
# type (or bare names) is one entity.
_decode_bio = _decode_io = entity_spans
_decode_bioes, _encode_bioes = _strict_pair("B", "I", "E", "S", "BIOES")
_decode_bilou, _encode_bilou = _strict_pair("B", "I", "L", "U", "BILOU")

SCHEMES: dict[str, Scheme] = {
    "bio": Scheme("BIO", frozenset("BI"), _decode_bio, _encode_bio),
    "iob1": Scheme("IOB1", frozenset("BI"), _decode_bio, _encode_iob1),
    "bioes": Scheme("BIOES", frozenset("BIES"), _decode_bioes, _encode_bioes),
    "bilou": Scheme("BILOU", frozenset("BILU"), _decode_bilou, _encode_bilou),
    "io": Scheme("IO", frozenset("I"), _decode_io, _encode_io, bare_names=True),
}
# What `--tag-scheme` accepts: the names above, their other names, and auto (detect per file).
SCHEME_CHOICES = ("auto", "bio", "iob2", "iob1", "bioes", "iobes", "bilou", "io")
_ALIASES = {"iob2": "bio", "iobes": "bioes"}


def get_scheme(name: str) -> Scheme:
    """The scheme called `name` (`bio`, `iob2`, `iob1`, `bioes`, `iobes`, `bilou`, `io`).

    Raises:
        KeyError: no such scheme.
    """
    return SCHEMES[_ALIASES.get(name.lower(), name.lower())]


def to_bio(spans: Sequence[Span], length: int) -> list[str]:
    """The BIO tags of `length` words holding `spans`."""
    return _encode_bio(spans, length)


@dataclass(frozen=True)
class Detection:
    """The scheme a file's tags were read with, and why (for the log and the data summary)."""

    scheme: Scheme
    reason: str


def check_tags(tag_sequences: Sequence[Sequence[str]], scheme: Scheme) -> None:
    """Check that every tag is `O` or a tag of `scheme` with a well-formed type.

    Raises:
        SchemeError: the first tag that is not, with its position.
    """
    for sentence, tags in enumerate(tag_sequences):
        for word, tag in enumerate(tags):
            prefix, name = split_tag(tag)
            if prefix == "O":
                continue
            if not _valid_type(name):
                raise SchemeError(f"malformed tag {tag!r}", (sentence, word))
            if prefix is None and not scheme.bare_names:
                raise SchemeError(f"malformed tag {tag!r}: no scheme prefix (B-, I-, E-, S-, L-, U-); bare class "
                                  f"names are read as IO with --tag-scheme io", (sentence, word))
            if prefix is not None and prefix not in scheme.prefixes:
                if scheme.name == "IO" and prefix == "B":
                    raise SchemeError(f"{tag!r} in tags read as IO: IO has no B- (it cannot split two adjacent "
                                      f"entities of one type), so B- and I- mix IO with BIO or IOB1; use "
                                      f"--tag-scheme bio or iob1", (sentence, word))
                allowed = ", ".join(f"{p}-" for p in sorted(scheme.prefixes, key=PREFIXES.index))
                raise SchemeError(f"{tag!r} is no {scheme.name} tag ({scheme.name} has O, {allowed})", (sentence, word))


def detect_scheme(tag_sequences: Sequence[Sequence[str]]) -> Detection:
    """The scheme of a file's tags, from the prefixes it uses and where its entities open.

    * `S-`/`E-` tags: BIOES; `U-`/`L-` tags: BILOU; both families: an error.
    * only `B-`/`I-`: IOB1 when `I-` opens entities and `B-` appears only directly after a tag of
      its own type; BIO otherwise (the two read the same; see the module's docstring).
    * only `I-`: IO (IOB1 without adjacent entities of one type reads the same).
    * no entity tags at all: BIO.

    Raises:
        SchemeError: a malformed tag, a bare class name, or two scheme families mixed.
    """
    first_seen: dict[str, tuple[Position, str]] = {}
    i_opens = b_opens = b_splits = 0
    for sentence, tags in enumerate(tag_sequences):
        previous_type: str | None = None
        for word, tag in enumerate(tags):
            prefix, name = split_tag(tag)
            if prefix != "O" and not _valid_type(name):
                raise SchemeError(f"malformed tag {tag!r}", (sentence, word))
            if prefix is None:
                raise SchemeError(f"malformed tag {tag!r}: no scheme prefix (B-, I-, E-, S-, L-, U-); bare class "
                                  f"names are read as IO with --tag-scheme io", (sentence, word))
            first_seen.setdefault(prefix, ((sentence, word), tag))
            if prefix == "I" and name != previous_type:
                i_opens += 1
            elif prefix == "B":
                if name == previous_type:
                    b_splits += 1
                else:
                    b_opens += 1
            previous_type = name
    bioes = [p for p in ("S", "E") if p in first_seen]
    bilou = [p for p in ("U", "L") if p in first_seen]
    if bioes and bilou:
        (here, tag), (there, other_tag) = sorted([first_seen[bioes[0]], first_seen[bilou[0]]])[::-1]
        raise SchemeError(f"{tag!r} mixes tag schemes with {other_tag!r}: BIOES uses S- and E-, BILOU U- and L-; "
                          f"a file uses one", here, there)
    if bioes:
        return Detection(SCHEMES["bioes"], f"{'/'.join(p + '-' for p in bioes)} tags")
    if bilou:
        return Detection(SCHEMES["bilou"], f"{'/'.join(p + '-' for p in bilou)} tags")
    if "B" not in first_seen and "I" not in first_seen:
        return Detection(SCHEMES["bio"], "no entity tags")
    if "B" not in first_seen:
        return Detection(SCHEMES["io"], "only I- tags: a run of one type is one entity (IOB1 reads them the same)")
    if i_opens and not b_opens:
        return Detection(SCHEMES["iob1"], f"I- opens {i_opens} entities; B- only splits adjacent entities of one "
                                          f"type ({b_splits})")
    if i_opens:
        return Detection(SCHEMES["bio"], f"B- opens entities; {i_opens} entities open with I- after another tag "
                                         f"(read as opening one, as seqeval does)")
    return Detection(SCHEMES["bio"], "B- opens every entity")


def convert_to_bio(tag_sequences: Sequence[Sequence[str]], scheme_name: str = "auto") -> tuple[list[list[str]], Detection]:
    """A file's tags in BIO, entity for entity, and the scheme they were read with.

    Args:
        tag_sequences: each sentence's tags as written in the file.
        scheme_name: `auto` to detect the scheme, or one of `SCHEME_CHOICES`.

    Returns:
        Each sentence's BIO tags, and the scheme used with the reason.

    Raises:
        SchemeError: tags that fit no scheme, mix two, or break the scheme's rules (position:
            sentence and word).
    """
    if scheme_name == "auto":
        detection = detect_scheme(tag_sequences)
    else:
        scheme = get_scheme(scheme_name)
        check_tags(tag_sequences, scheme)
        detection = Detection(scheme, "--tag-scheme")
    converted = []
    for sentence, tags in enumerate(tag_sequences):
        try:
            spans = detection.scheme.decode(tags)
        except SchemeError as exc:
            raise SchemeError(str(exc), (sentence, exc.position[1]),
                              None if exc.other is None else (sentence, exc.other[1])) from None
        converted.append(to_bio(spans, len(tags)))
    return converted, detection


def entity_counts(tag_sequences: Iterable[Sequence[str]]) -> dict[str, int]:
    """Entities per type in BIO tag sequences, sorted by type."""
    counts: dict[str, int] = {}
    for tags in tag_sequences:
        for name, _, _ in _decode_bio(tags):
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
