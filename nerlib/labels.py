"""MultiNERD's tag set and the label sets nerlib trains on (pure Python, no torch).

A label set is an ordered tuple of BIO tags; a tag's position is its id. Data readers produce
string tags, and a label set maps them to ids, so the hub's integer ids, string column files and
subsets all go through one path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import ConfigError

# MultiNERD's 15 classes in the hub's order; tag id 2k+1 is B-class k, 2k+2 is I-class k.
MULTINERD_CLASSES: tuple[str, ...] = (
    "PER", "ORG", "LOC", "ANIM", "BIO", "CEL", "DIS", "EVE",
    "FOOD", "INST", "MEDIA", "MYTH", "PLANT", "TIME", "VEHI",
)
MULTINERD_TAGS: tuple[str, ...] = ("O",) + tuple(
    f"{prefix}-{cls}" for cls in MULTINERD_CLASSES for prefix in ("B", "I")
)
FIVE_CLASSES: tuple[str, ...] = ("PER", "ORG", "LOC", "ANIM", "DIS")

_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


def is_bio_tag(tag: str) -> bool:
    """True for `O` and for `B-X` / `I-X` with a non-empty class name."""
    return bool(_TAG_RE.match(tag))


def tags_of(label_ids, labels: Sequence[str]) -> list[str]:
    """The tags of a sequence of label ids (a label's position in `labels` is its id)."""
    return [labels[i] for i in label_ids]


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of BIO labels; a label's position is the id the model predicts.

    Attributes:
        name: how the set was asked for (`all`, `five`, `auto`, `PER,LOC`).
        labels: `O` first, then `B-X`, `I-X` for each class.
        remap_multinerd: whether tags of MultiNERD classes outside this set become `O`
            (true for `five` and subsets; false for `all` and `auto`, where an unknown tag is
            an error).
    """

    name: str
    labels: tuple[str, ...]
    remap_multinerd: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(tag[2:] for tag in self.labels if tag != "O"))

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def tag_id(self, tag: str) -> int:
        """The id of a string tag, with out-of-set MultiNERD classes sent to `O` when remapping.

        Raises:
            KeyError: the tag is not in this set (and is not a MultiNERD tag to remap).
        """
        label2id = self._label2id
        if tag in label2id:
            return label2id[tag]
        if self.remap_multinerd and tag in _MULTINERD_TAG_SET:
            return 0
        raise KeyError(tag)

    @property
    def _label2id(self) -> dict[str, int]:
        # Cached on first use; the dataclass is frozen, so bypass __setattr__.
        cached = self.__dict__.get("_label2id_cache")
        if cached is None:
            cached = self.label2id
            object.__setattr__(self, "_label2id_cache", cached)
        return cached

    def describe(self) -> str:
        """`five (11 labels: O B-PER I-PER ...)`, for logs and error messages."""
        return f"{self.name} ({self.num_labels} labels: {' '.join(self.labels)})"


_MULTINERD_TAG_SET = frozenset(MULTINERD_TAGS)


def labels_for_classes(classes: Iterable[str]) -> tuple[str, ...]:
    """`O` followed by `B-X`, `I-X` for each class, in the order given."""
    return ("O",) + tuple(f"{p}-{cls}" for cls in classes for p in ("B", "I"))


def multinerd_label_set(spec: str) -> LabelSet:
    """The label set named by `spec`: `all`, `five`, or a comma-separated class subset.

    A subset keeps MultiNERD's class order (so `LOC,PER` equals `PER,LOC`) and, like `five`,
    sends every other class to `O`.

    Raises:
        ConfigError: an unknown class name or an empty subset.
    """
    if spec == "all":
        return LabelSet("all", MULTINERD_TAGS, remap_multinerd=False)
    if spec == "five":
        return LabelSet("five", labels_for_classes(FIVE_CLASSES), remap_multinerd=True)
    wanted = [part.strip().upper() for part in spec.split(",") if part.strip()]
    unknown = [cls for cls in wanted if cls not in MULTINERD_CLASSES]
    if unknown or not wanted:
        raise ConfigError(
            f"--labels {spec!r}: expected all, five, auto or a comma-separated subset of "
            f"MultiNERD classes ({', '.join(MULTINERD_CLASSES)}); unknown: {', '.join(unknown) or '(empty)'}"
        )
    ordered = [cls for cls in MULTINERD_CLASSES if cls in wanted]
    return LabelSet(",".join(ordered), labels_for_classes(ordered), remap_multinerd=True)


def auto_label_set(tag_sequences: Iterable[Sequence[str]]) -> LabelSet:
    """The label set read from the data: `O`, then B-/I- of every class seen, sorted by name.

    Both B- and I- of a class are included even if only one occurs, so the head can predict
    either.
    """
    classes = sorted({tag[2:] for tags in tag_sequences for tag in tags if tag != "O"})
    return LabelSet("auto", labels_for_classes(classes), remap_multinerd=False)


def label_set_from_labels(name: str, labels: Sequence[str]) -> LabelSet:
    """A label set rebuilt from a saved model's `id2label` (the order is the model's)."""
    return LabelSet(name, tuple(labels), remap_multinerd=False)


# How the prefixes of other schemes read: BIOES's (and BILOU's) last word `E-X` (`L-X`) goes on like
# `I-X` and closes the entity; a one-word entity `S-X` (`U-X`) opens like `B-X` and closes it.
_PREFIX_READS_AS = {"B": "B", "I": "I", "E": "I", "L": "I", "S": "B", "U": "B"}
_CLOSING_PREFIXES = ("E", "L", "S", "U")


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of a tag sequence as `(class, first_word, end_word)`, end exclusive.

    Read leniently, like seqeval's default and transformers' token-classification pipeline: an
    entity starts at `B-X`, or at `I-X` after `O` or after another class, and goes on over
    `I-X`. A tag with no prefix (other than `O`) reads as `I-`, as the pipeline does. The tags of
    a model that predicts BIOES (or BILOU) read as seqeval's default reads BIOES: `E-X` (`L-X`)
    goes on like `I-X` and ends the entity, `S-X` (`U-X`) is a one-word entity.

    Args:
        tags: one tag a word.

    Returns:
        The entities in order; `tags[first_word:end_word]` are an entity's words.
    """
    spans: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for index, tag in enumerate(tags):
        if tag == "O":
            prefix, cls = "O", None
        elif len(tag) > 2 and tag[1] == "-" and tag[0] in _PREFIX_READS_AS:
            prefix, cls = tag[0], tag[2:]
        else:
            prefix, cls = "I", tag
        if current is not None and (cls != current[0] or _PREFIX_READS_AS.get(prefix) == "B"):
            spans.append((current[0], current[1], index))
            current = None
        if cls is not None and current is None:
            current = (cls, index)
        if current is not None and prefix in _CLOSING_PREFIXES:
            spans.append((current[0], current[1], index + 1))
            current = None
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans
