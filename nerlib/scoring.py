"""Scores of predicted against gold tags, and the one table that shows them.

`compute_metrics` is seqeval's (micro averages over entities, word-level accuracy: the
definitions behind the original notebook's table); `format_table` writes any metrics dict as
aligned text, Markdown or CSV.

seqeval's default scores are also computed from label ids with NumPy, without a loop over words.

`seqeval.metrics.classification_report` walks every tag in Python several times (about 3 s for
MultiNERD's 133,000 test words: the time of scoring a few thousand sentences on two cores), and
scoring runs after every epoch. For label sets of `O`, `B-X` and `I-X` tags, the entities of
seqeval's default (lenient) mode are simple to find with array operations:

* an entity starts at every `B-X`, and at an `I-X` that follows `O`, an entity of another type,
  or the start of a sentence;
* it goes on over the `I-X` of the same type that follow.

`score_label_ids` returns the same numbers as `compute_metrics` (which calls
seqeval), computed with seqeval's formulas in the same order, so the floats agree exactly;
`tests/test_scoring.py` checks it against seqeval on random and hand-written sequences. Other tag
schemes (BIOES, labels without prefixes) and strict IOB2 scoring go to seqeval itself.
"""

from __future__ import annotations

import csv
import io
import warnings
from typing import Sequence

import numpy as np

from .errors import ModelError
from .labels import entity_spans, tags_of
from .schemes import to_bio


def compute_metrics(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], strict: bool = False) -> dict:
    """seqeval metrics of predicted against gold tag sequences.

    Args:
        gold_tags: gold BIO tags of each sentence.
        pred_tags: predicted tags, the same shape.
        strict: score entities by strict IOB2 rules (an `I-X` cannot start an entity) instead of
            seqeval's default lenient reading.

    Returns:
        `precision`, `recall`, `f1` (micro averages over entities), `accuracy` (words),
        `words` (words scored) and `per_type` (class -> precision, recall, f1, support).
    """
    # Imported here: seqeval imports scikit-learn (seconds), and most scores take the NumPy path
    # below, so predict, serve and most training runs never need it.
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    if len(gold_tags) != len(pred_tags) or any(len(g) != len(p) for g, p in zip(gold_tags, pred_tags)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    options = {"mode": "strict", "scheme": IOB2} if strict else {}
    gold, pred = [list(g) for g in gold_tags], [list(p) for p in pred_tags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when a class has no gold or no predicted entity
        report = classification_report(gold, pred, output_dict=True, zero_division=0, **options)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in sorted(report.items())
        if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(gold, pred)) if gold else 0.0,
        "words": sum(len(g) for g in gold),
        "per_type": per_type,
    }


OUTSIDE, BEGIN, INSIDE = 0, 1, 2


def _is_bio_label(label: str) -> bool:
    return label == "O" or (len(label) > 2 and label[:2] in ("B-", "I-"))


def bio_scheme(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Each label's prefix (`OUTSIDE`, `BEGIN`, `INSIDE`) and entity type index, and the type names.

    Returns:
        `(prefix, type_index, type_names)` indexed by label id, or None when some label is not
        `O`, `B-X` or `I-X` with a non-empty X.
    """
    type_names: list[str] = []
    prefix = np.zeros(len(labels), dtype=np.int8)
    type_index = np.full(len(labels), -1, dtype=np.int64)
    for label_id, label in enumerate(labels):
        if label == "O":
            continue
        if not _is_bio_label(label):
            return None
        name = label[2:]
        if name not in type_names:
            type_names.append(name)
        prefix[label_id] = BEGIN if label[0] == "B" else INSIDE
        type_index[label_id] = type_names.index(name)
    return prefix, type_index, type_names


def entity_keys(ids: np.ndarray, sentence_starts: np.ndarray, prefix: np.ndarray, type_index: np.ndarray,
                num_types: int) -> np.ndarray:
    """The entities of a flat sequence of label ids, each as one int64 `(start, end, type)` key.

    Args:
        ids: label ids of every word of every sentence, one after the other.
        sentence_starts: a boolean mask of the words that begin a sentence.
        prefix, type_index: from `bio_scheme`.
        num_types: the number of entity types.

    Returns:
        The sorted keys `(start * (n + 1) + end) * num_types + type`, `end` inclusive.
    """
    n = len(ids)
    kind = prefix[ids]
    types = type_index[ids]
    previous_kind = np.concatenate([[OUTSIDE], kind[:-1]])
    previous_type = np.concatenate([[-1], types[:-1]])
    previous_kind[sentence_starts] = OUTSIDE
    continues = (kind == INSIDE) & (previous_kind != OUTSIDE) & (previous_type == types)
    starts = np.flatnonzero((kind != OUTSIDE) & ~continues)
    # An entity ends where the next word does not continue it.
    ends_mask = (kind != OUTSIDE) & ~np.concatenate([continues[1:], [False]])
    ends = np.flatnonzero(ends_mask)
    return (starts * (n + 1) + ends) * num_types + types[starts]


def score_label_ids(gold: Sequence[np.ndarray], predicted: Sequence[np.ndarray], labels: Sequence[str]) -> dict | None:
    """`compute_metrics` (seqeval's default, lenient scores) from label ids.

    Args:
        gold: the gold label ids of each sentence.
        predicted: the predicted label ids, the same shape.
        labels: the label set, a label's position being its id.

    Returns:
        `precision`, `recall`, `f1`, `accuracy`, `words` and `per_type`, equal to what
        `compute_metrics` returns for the same tags; None when the labels are not plain BIO
        (then use `compute_metrics`).

    Raises:
        ValueError: gold and predicted sequences differ in shape.
    """
    scheme = bio_scheme(labels)
    if scheme is None:
        return None
    prefix, type_index, type_names = scheme
    lengths = np.fromiter((len(g) for g in gold), dtype=np.int64, count=len(gold))
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    words = int(lengths.sum())
    gold_flat = np.concatenate(gold).astype(np.int64) if words else np.zeros(0, dtype=np.int64)
    pred_flat = np.concatenate(predicted).astype(np.int64) if words else np.zeros(0, dtype=np.int64)
    sentence_starts = np.zeros(words, dtype=bool)
    sentence_starts[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    num_types = max(1, len(type_names))
    true_keys = entity_keys(gold_flat, sentence_starts, prefix, type_index, num_types)
    pred_keys = entity_keys(pred_flat, sentence_starts, prefix, type_index, num_types)
    hits = np.intersect1d(true_keys, pred_keys, assume_unique=True)
    true_sum = np.bincount(true_keys % num_types, minlength=num_types)
    pred_sum = np.bincount(pred_keys % num_types, minlength=num_types)
    tp_sum = np.bincount(hits % num_types, minlength=num_types)

    present = [t for t in range(len(type_names)) if true_sum[t] or pred_sum[t]]
    per_class = _prf(tp_sum[present], pred_sum[present], true_sum[present])
    micro = _prf(np.array([tp_sum.sum()]), np.array([pred_sum.sum()]), np.array([true_sum.sum()]))
    per_type = {
        type_names[t]: {"precision": float(per_class[0][i]), "recall": float(per_class[1][i]),
                        "f1": float(per_class[2][i]), "support": int(true_sum[t])}
        for i, t in enumerate(present)
    }
    return {
        "precision": float(micro[0][0]),
        "recall": float(micro[1][0]),
        "f1": float(micro[2][0]),
        "accuracy": int(np.count_nonzero(gold_flat == pred_flat)) / words if words else 0.0,
        "words": words,
        "per_type": dict(sorted(per_type.items())),
    }


def _prf(tp_sum: np.ndarray, pred_sum: np.ndarray, true_sum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 as seqeval computes them with `zero_division=0`, operation for operation."""
    precision = _divide(tp_sum, pred_sum)
    recall = _divide(tp_sum, true_sum)
    denominator = 1.0 * precision + recall
    denominator[denominator == 0.0] = 1
    f1 = (1 + 1.0) * precision * recall / denominator
    return precision, recall, f1


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    mask = denominator == 0.0
    denominator = denominator.copy()
    denominator[mask] = 1
    result = numerator / denominator
    result[mask] = 0.0
    return result


def score_predictions(gold: Sequence[np.ndarray], predicted: Sequence[np.ndarray], labels: Sequence[str],
                      strict: bool = False) -> dict:
    """Scores of predicted against gold label ids: vectorised where it can be, seqeval otherwise.

    A model whose labels are not all `O`, `B-X` and `I-X` (one that predicts BIOES or BILOU tags,
    or bare class names) is scored on its entities as `entity_spans` reads them, rewritten as BIO:
    the entities its predictions show are the ones scored.

    Args:
        gold, predicted: label ids of each sentence's words.
        labels: the label set.
        strict: strict IOB2 entity scoring (always through seqeval).

    Returns:
        What `compute_metrics` returns.

    Raises:
        ModelError: strict scoring of a label set with other labels than `O`, `B-X` and `I-X`,
            which IOB2 cannot read.
    """
    other = next((label for label in labels if not _is_bio_label(label)), None)
    if strict and other is not None:
        raise ModelError(f"strict IOB2 scores (--strict) need labels O, B-X and I-X; the model also predicts {other!r}")
    if not strict and other is None:
        return score_label_ids(gold, predicted, labels)

    def tags(ids: np.ndarray) -> list[str]:
        found = tags_of(ids, labels)
        return found if other is None else to_bio(entity_spans(found), len(found))

    return compute_metrics([tags(ids) for ids in gold], [tags(ids) for ids in predicted], strict=strict)


def score_by_language(gold: Sequence[np.ndarray], predicted: Sequence[np.ndarray], labels: Sequence[str],
                      langs: Sequence[str | None], strict: bool = False) -> dict[str, dict] | None:
    """`score_predictions` of each language's sentences, when a split holds more than one language.

    Args:
        gold, predicted, labels, strict: as for `score_predictions`.
        langs: each sentence's language (None where the data does not say).

    Returns:
        Language -> its metrics (the keys of `compute_metrics`), sorted by language; None when
        fewer than two languages are named.
    """
    named = sorted({lang for lang in langs if lang})
    if len(named) < 2:
        return None
    return {lang: score_predictions([g for g, sl in zip(gold, langs) if sl == lang],
                                    [p for p, sl in zip(predicted, langs) if sl == lang], labels, strict)
            for lang in named}


def score_split(gold: Sequence[np.ndarray], predicted: Sequence[np.ndarray], labels: Sequence[str],
                langs: Sequence[str | None], strict: bool = False) -> dict:
    """`score_predictions` of a whole split, with `per_lang` (`score_by_language`) when it holds several languages."""
    metrics = score_predictions(gold, predicted, labels, strict=strict)
    per_lang = score_by_language(gold, predicted, labels, langs, strict=strict)
    if per_lang:
        metrics["per_lang"] = per_lang
    return metrics


TABLE_FORMATS = ("text", "md", "csv")


def format_table(metrics: dict, fmt: str = "text", title: str = "") -> str:
    """The per-type and overall precision, recall, F1 and support as one table.

    Args:
        metrics: as `compute_metrics` or `evaluate` return them.
        fmt: `text` (aligned columns, then the accuracy; for a terminal), `md` (Markdown, values
            to 4 decimals) or `csv` (full precision).
        title: a line above a `text` table.

    Returns:
        The table; `md` and `csv` end with a newline. The last row is `overall` (micro averages).

    Raises:
        ValueError: an unknown format.
    """
    rows = [(name, row["precision"], row["recall"], row["f1"], row["support"])
            for name, row in metrics["per_type"].items()]
    support = sum(row["support"] for row in metrics["per_type"].values())
    rows.append(("overall", metrics["precision"], metrics["recall"], metrics["f1"], support))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["type", "precision", "recall", "f1", "support"])
        writer.writerows([name, repr(p), repr(r), repr(f), support] for name, p, r, f, support in rows)
        return buffer.getvalue()
    if fmt == "md":
        lines = ["| type | precision | recall | f1 | support |", "|:-----|----------:|-------:|---:|--------:|"]
        lines += [f"| {name} | {p:.4f} | {r:.4f} | {f:.4f} | {support} |" for name, p, r, f, support in rows]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r}: expected {', '.join(TABLE_FORMATS)}")
    header = f"{'type':<10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"
    lines = ([title] if title else []) + [header, "-" * len(header)]
    cells = [f"{name:<10} {p:>9.4f} {r:>9.4f} {f:>9.4f} {support:>9d}" for name, p, r, f, support in rows]
    lines += cells[:-1] + ["-" * len(header), cells[-1]]
    lines.append(f"accuracy {metrics['accuracy']:.4f} over {metrics['words']} words")
    return "\n".join(lines)
