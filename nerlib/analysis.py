"""Error analysis: which entities a model gets wrong, and how (pure Python and NumPy, no torch).

Every gold and every predicted entity of a sentence ends in exactly one outcome, in the classes
of the usual NER error analyses (MUC's correct / incorrect / partial / missing / spurious, as in
Batista's "Named-Entity evaluation metrics based on entity-level" and `nervaluate`):

* `exact`: a gold and a predicted entity with the same first word, last word and type (what
  seqeval counts as a true positive);
* `wrong_type`: the same first and last word, another type;
* `wrong_boundary`: overlapping words, other boundaries, the same type;
* `wrong_boundary_and_type`: overlapping words, other boundaries, another type;
* `missed`: a gold entity paired with no predicted one;
* `spurious`: a predicted entity paired with no gold one.

Pairs are made one to one, in this order: exact matches; then same-span pairs; then, among the
entities left, overlapping gold/predicted pairs by the number of words they share (most first;
on a tie a pair of the same type first, then the leftmost gold entity, then the leftmost
predicted one). So a predicted entity that spans two gold entities pairs with the one it shares
more words with (a boundary error) and the other gold entity is `missed`, although it is
overlapped; likewise a gold entity cut into two predictions pairs with the larger piece and the
other piece is `spurious`. This differs from `nervaluate`, which pairs a prediction with the
first overlapping gold entity in input order and then counts the other overlapped gold entities
nowhere (its issue #40: the counts change with the order of the annotations). Here the outcome
never depends on order, every gold entity is counted once (exact + wrong type + wrong boundary +
wrong boundary and type + missed = gold entities) and so is every predicted one (the four paired
classes + spurious = predicted entities).

Entities are read from BIO tags (and a BIOES or BILOU model's tags) leniently, like seqeval's
default (`nerlib.labels.entity_spans`), so `exact` counts equal seqeval's true positives, type by
type.

Slices follow Fu et al. (2020), "Interpretable Multi-dataset Evaluation for Named Entity
Recognition": each gold entity is put in a bucket by its own attribute (its surface form seen in
training or not, its length in words, its sentence's length, whether its sentence was cut into
several windows) and so is each predicted entity; a bucket's recall is its exact matches over its
gold entities, its precision the exact matches over its predicted entities (an exact match has the
same attributes on both sides). "Seen" follows Augenstein et al. (2017), "Generalisation in named
entity recognition": the entity's words, joined by single spaces and compared case-sensitively,
are the words of some gold entity (of any type) of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .labels import entity_spans

EXACT = "exact"
WRONG_TYPE = "wrong_type"
WRONG_BOUNDARY = "wrong_boundary"
WRONG_BOUNDARY_AND_TYPE = "wrong_boundary_and_type"
MISSED = "missed"
SPURIOUS = "spurious"
OUTCOMES = (EXACT, WRONG_TYPE, WRONG_BOUNDARY, WRONG_BOUNDARY_AND_TYPE, MISSED, SPURIOUS)
ERROR_CLASSES = OUTCOMES[1:]
# Outcomes that pair a gold entity with a predicted one.
PAIRED = (EXACT, WRONG_TYPE, WRONG_BOUNDARY, WRONG_BOUNDARY_AND_TYPE)

# Bucket edges (inclusive upper bounds, in words); the last bucket is open.
ENTITY_LENGTH_EDGES = (1, 2, 3)
SENTENCE_LENGTH_EDGES = (10, 20, 40)

Span = tuple  # (type, first_word, end_word), end exclusive, as `entity_spans` returns it


@dataclass(frozen=True)
class Outcome:
    """What became of one gold entity, one predicted entity, or a pair of them.

    Attributes:
        kind: one of `OUTCOMES`.
        gold: the gold entity `(type, first_word, end_word)`, None for `spurious`.
        pred: the predicted entity, None for `missed`.
    """

    kind: str
    gold: Span | None
    pred: Span | None

    @property
    def start(self) -> int:
        return min(span[1] for span in (self.gold, self.pred) if span is not None)

    def to_dict(self) -> dict:
        return {"class": self.kind, "gold": list(self.gold) if self.gold else None,
                "pred": list(self.pred) if self.pred else None}


def classify_spans(gold: Sequence[Span], pred: Sequence[Span]) -> list[Outcome]:
    """Pair one sentence's gold and predicted entities and classify each pair or leftover.

    Args:
        gold, pred: the entities `(type, first_word, end_word)` of one sentence; within a side
            they do not overlap (as `entity_spans` returns them).

    Returns:
        One outcome per pair and per unpaired entity, ordered by first word (see the module
        docstring for the pairing rules).
    """
    outcomes: list[Outcome] = []
    gold_left = list(dict.fromkeys(gold))
    pred_left = list(dict.fromkeys(pred))
    exact = set(gold_left) & set(pred_left)
    outcomes += [Outcome(EXACT, span, span) for span in gold_left if span in exact]
    gold_left = [span for span in gold_left if span not in exact]
    pred_left = [span for span in pred_left if span not in exact]
    pred_by_bounds = {(span[1], span[2]): span for span in pred_left}
    for span in list(gold_left):
        other = pred_by_bounds.get((span[1], span[2]))
        if other is not None:
            outcomes.append(Outcome(WRONG_TYPE, span, other))
            gold_left.remove(span)
            pred_left.remove(other)
    candidates = []
    for g in gold_left:
        for p in pred_left:
            shared = min(g[2], p[2]) - max(g[1], p[1])
            if shared > 0:
                candidates.append((-shared, g[0] != p[0], g[1], p[1], g, p))
    paired_gold, paired_pred = set(), set()
    for _, other_type, _, _, g, p in sorted(candidates):
        if g in paired_gold or p in paired_pred:
            continue
        paired_gold.add(g)
        paired_pred.add(p)
        outcomes.append(Outcome(WRONG_BOUNDARY_AND_TYPE if other_type else WRONG_BOUNDARY, g, p))
    outcomes += [Outcome(MISSED, g, None) for g in gold_left if g not in paired_gold]
    outcomes += [Outcome(SPURIOUS, None, p) for p in pred_left if p not in paired_pred]
    return sorted(outcomes, key=lambda o: (o.start, OUTCOMES.index(o.kind)))


def classify_sentence(gold_tags: Sequence[str], pred_tags: Sequence[str]) -> list[Outcome]:
    """`classify_spans` of the entities read from one sentence's gold and predicted BIO tags."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError("gold and predicted tag sequences differ in length")
    return classify_spans(entity_spans(gold_tags), entity_spans(pred_tags))


def surface_form(tokens: Sequence[str], span: Span) -> str:
    """An entity's words joined by single spaces."""
    return " ".join(tokens[span[1]:span[2]])


def training_surface_forms(token_lists: Iterable[Sequence[str]], tag_lists: Iterable[Sequence[str]]) -> set[str]:
    """The surface forms of every gold entity of a split (the training split, for `analyse`)."""
    return {surface_form(tokens, span) for tokens, tags in zip(token_lists, tag_lists)
            for span in entity_spans(tags)}


def bucket_name(value: int, edges: Sequence[int]) -> str:
    """`1`, `2`, `3`, `4+` for edges (1, 2, 3); `1-10`, `11-20`, `21-40`, `41+` for (10, 20, 40)."""
    low = 1
    for edge in edges:
        if value <= edge:
            return str(edge) if edge == low else f"{low}-{edge}"
        low = edge + 1
    return f"{low}+"


def _bucket_names(edges: Sequence[int]) -> list[str]:
    names, low = [], 1
    for edge in edges:
        names.append(str(edge) if edge == low else f"{low}-{edge}")
        low = edge + 1
    return names + [f"{low}+"]


def slice_scores(exact: int, predicted: int, gold: int) -> dict:
    """Precision, recall and F1 of one bucket (0 where undefined, as seqeval's `zero_division=0`)."""
    precision = exact / predicted if predicted else 0.0
    recall = exact / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"gold": gold, "predicted": predicted, "exact": exact, "precision": precision, "recall": recall, "f1": f1}


class _Buckets:
    """Counts of gold, predicted and exactly matched entities per bucket of one slice."""

    def __init__(self, names: Sequence[str]) -> None:
        self.counts = {name: [0, 0, 0] for name in names}  # exact, predicted, gold

    def add(self, name: str, exact: int = 0, predicted: int = 0, gold: int = 0) -> None:
        row = self.counts[name]
        row[0] += exact
        row[1] += predicted
        row[2] += gold

    def rows(self) -> list[dict]:
        return [{"name": name, **slice_scores(*row)} for name, row in self.counts.items()]


def analyse(
    tokens: Sequence[Sequence[str]],
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    types: Sequence[str] = (),
    train_forms: set[str] | None = None,
    windows: Sequence[int] | None = None,
    sources: Sequence[tuple[str, int]] | None = None,
    top: int = 100,
) -> dict:
    """The error analysis of one split: outcome counts, type confusion, slices, worst sentences.

    Args:
        tokens: each sentence's words.
        gold_tags, pred_tags: each sentence's gold and predicted BIO tags, the same shape.
        types: the order of the entity types (a label set's classes); types found in the tags but
            not listed follow, sorted; types with no gold or predicted entity are left out.
        train_forms: surface forms of the training split's gold entities
            (`training_surface_forms`); None leaves out the seen/unseen slice.
        windows: how many windows each sentence was cut into; None leaves out that slice.
        sources: `(file, line)` of each sentence, for the worst sentences, or `(file, line, where)`
            with how to show it (`Sentence.locate()`: `file:line`, or `file row N` in tables).
        top: how many of the sentences with the most errors to list.

    Returns:
        A JSON-ready dict: `types`, `outcomes` (counts per type and `total`: the outcomes
        attributed to the gold entity's type, `spurious` to the predicted one's, plus `gold` and
        `predicted` entity counts), `confusion` (`rows`: gold types then `spurious`; `columns`:
        predicted types then `missed`; `counts`: gold/predicted type pairs of every paired
        outcome), `slices` (name -> bucket rows with `gold`, `predicted`, `exact`, `precision`,
        `recall`, `f1`), `sentences_with_errors` and `worst_sentences` (the `top` sentences with the
        most errors, most first, then in split order: `index`, `source`, `tokens`, `gold`,
        `pred`, `errors`, `outcomes`).

    Raises:
        ValueError: gold and predicted tags differ in shape.
    """
    if len(gold_tags) != len(pred_tags) or len(tokens) != len(gold_tags):
        raise ValueError("tokens, gold and predicted tags differ in the number of sentences")
    per_sentence = [classify_sentence(g, p) for g, p in zip(gold_tags, pred_tags)]
    seen = {span[0] for outcomes in per_sentence for o in outcomes for span in (o.gold, o.pred) if span}
    # Types with no gold or predicted entity (ANIM and DIS on data without them) would only add rows of zeros.
    ordered = [name for name in dict.fromkeys(types) if name in seen] + sorted(seen - set(types))
    index = {name: i for i, name in enumerate(ordered)}

    counts = {name: dict.fromkeys(OUTCOMES + ("gold", "predicted"), 0) for name in ordered}
    confusion = [[0] * (len(ordered) + 1) for _ in range(len(ordered) + 1)]
    slices = {"seen in training": _Buckets(["seen", "unseen"]) if train_forms is not None else None,
              "entity length (words)": _Buckets(_bucket_names(ENTITY_LENGTH_EDGES)),
              "sentence length (words)": _Buckets(_bucket_names(SENTENCE_LENGTH_EDGES)),
              "windows per sentence": _Buckets(["one", "several"]) if windows is not None else None}

    def attributes(sentence: int, span: Span) -> dict[str, str]:
        found = {"entity length (words)": bucket_name(span[2] - span[1], ENTITY_LENGTH_EDGES),
                 "sentence length (words)": bucket_name(len(tokens[sentence]), SENTENCE_LENGTH_EDGES)}
        if train_forms is not None:
            found["seen in training"] = "seen" if surface_form(tokens[sentence], span) in train_forms else "unseen"
        if windows is not None:
            found["windows per sentence"] = "one" if windows[sentence] <= 1 else "several"
        return found

    for sentence, outcomes in enumerate(per_sentence):
        for outcome in outcomes:
            gold, pred = outcome.gold, outcome.pred
            counts[(gold or pred)[0]][outcome.kind] += 1
            confusion[index[gold[0]] if gold else -1][index[pred[0]] if pred else -1] += 1
            if gold:
                counts[gold[0]]["gold"] += 1
                for name, bucket in attributes(sentence, gold).items():
                    slices[name].add(bucket, gold=1, exact=int(outcome.kind == EXACT))
            if pred:
                counts[pred[0]]["predicted"] += 1
                for name, bucket in attributes(sentence, pred).items():
                    slices[name].add(bucket, predicted=1)
    total = {key: sum(row[key] for row in counts.values()) for key in OUTCOMES + ("gold", "predicted")}

    errors = [sum(o.kind != EXACT for o in outcomes) for outcomes in per_sentence]
    worst = sorted((i for i, n in enumerate(errors) if n), key=lambda i: (-errors[i], i))[:top]
    worst_sentences = []
    for i in worst:
        gold_spans = [list(span) for span in entity_spans(gold_tags[i])]
        pred_spans = [list(span) for span in entity_spans(pred_tags[i])]
        source = None
        if sources is not None:
            file, line = sources[i][:2]
            source = {"file": file, "line": line, "where": sources[i][2] if len(sources[i]) > 2 else f"{file}:{line}"}
        worst_sentences.append({"index": i, "source": source, "tokens": list(tokens[i]), "gold": gold_spans,
                          "pred": pred_spans, "errors": errors[i],
                          "outcomes": [o.to_dict() for o in per_sentence[i]]})
    return {
        "types": ordered,
        "outcomes": {"per_type": counts, "total": total},
        "confusion": {"rows": ordered + [SPURIOUS], "columns": ordered + [MISSED], "counts": confusion},
        "slices": {name: buckets.rows() for name, buckets in slices.items() if buckets is not None},
        "sentences_with_errors": sum(1 for n in errors if n),
        "worst_sentences": worst_sentences,
    }
