"""Vectorised seqeval scores: exactly what seqeval (through compute_metrics) gives, much faster."""

import numpy as np
import pytest

from nerlib.errors import ModelError
from nerlib.labels import multinerd_label_set
from nerlib.scoring import bio_scheme, compute_metrics, score_label_ids, score_predictions

FIVE = multinerd_label_set("five").labels  # O B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-ANIM I-ANIM B-DIS I-DIS


def ids_of(*sentences):
    return [np.array([FIVE.index(tag) for tag in sentence.split()], dtype=np.int64) for sentence in sentences]


def seqeval_scores(gold, pred, labels=FIVE):
    return compute_metrics([[labels[i] for i in g] for g in gold], [[labels[i] for i in p] for p in pred])


@pytest.mark.parametrize("gold, pred", [
    # An I- after O, after another type, and at a sentence start each begin an entity (seqeval's lenient mode).
    (["B-PER I-PER O I-LOC I-LOC", "I-ORG O"], ["B-PER I-PER O B-LOC I-LOC", "I-ORG O"]),
    (["B-PER I-LOC I-LOC B-PER B-PER"], ["B-PER I-PER I-LOC B-PER I-PER"]),
    # An entity at the end of one sentence does not run into an I- at the start of the next.
    (["O B-PER", "I-PER O"], ["O B-PER", "O O"]),
    (["O O O", "O"], ["O O O", "O"]),                      # no entity anywhere
    (["O O B-DIS"], ["O O O"]),                            # nothing predicted
    (["O O O"], ["B-ANIM I-ANIM O"]),                      # nothing to find
    (["B-ORG", "B-ORG I-ORG", "I-DIS"], ["B-ORG", "B-ORG B-ORG", "I-DIS"]),
])
def test_hand_written_cases_match_seqeval(gold, pred):
    gold, pred = ids_of(*gold), ids_of(*pred)
    assert score_label_ids(gold, pred, FIVE) == seqeval_scores(gold, pred)


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_match_seqeval_exactly(seed):
    rng = np.random.default_rng(seed)
    labels = multinerd_label_set("all").labels if seed % 2 else FIVE
    # Mostly O, with every prefix and type mixed in: I- after O, type switches, runs of B-.
    weights = np.full(len(labels), 1.0)
    weights[0] = 3 * len(labels)
    weights /= weights.sum()
    gold = [rng.choice(len(labels), size=rng.integers(1, 30), p=weights) for _ in range(200)]
    pred = [np.where(rng.random(len(g)) < 0.7, g, rng.choice(len(labels), size=len(g), p=weights)) for g in gold]
    ours = score_label_ids(gold, pred, labels)
    theirs = seqeval_scores(gold, pred, labels)
    assert ours == theirs  # exactly: the same formulas in the same order
    assert 0 < ours["f1"] < 1 and ours["per_type"]


def test_schemes_other_than_bio_go_to_seqeval():
    assert bio_scheme(("O", "B-PER", "I-PER")) is not None
    for labels in [("O", "PER"), ("O", "S-PER", "B-PER", "I-PER", "E-PER"), ("O", "B-")]:
        assert bio_scheme(labels) is None
        assert score_label_ids([np.array([0, 1])], [np.array([1, 1])], labels) is None
    bioes = ("O", "B-PER", "I-PER", "E-PER", "S-PER")
    gold, pred = [np.array([1, 2, 3, 0, 4])], [np.array([1, 2, 3, 0, 0])]
    assert score_predictions(gold, pred, bioes) == seqeval_scores(gold, pred, bioes)
    assert score_predictions(gold, pred, bioes)["recall"] == 0.5


@pytest.mark.parametrize("labels, spelled_for_seqeval, gold, pred", [
    # BILOU, spelled as BIOES for seqeval (which reads BIOES but not BILOU).
    (("O", "B-PER", "I-PER", "L-PER", "U-PER"), ("O", "B-PER", "I-PER", "E-PER", "S-PER"),
     [[1, 2, 3, 0, 4, 4, 0]], [[1, 2, 3, 0, 4, 0, 0]]),
    # Bare class names, read as I- (as the transformers pipeline reads them).
    (("O", "PER", "LOC", "B-PER", "I-PER"), ("O", "I-PER", "I-LOC", "B-PER", "I-PER"),
     [[3, 4, 0, 1, 1, 0, 2], [1, 2]], [[3, 4, 0, 1, 0, 0, 2], [1, 2]]),
])
def test_a_model_of_another_scheme_is_scored_on_the_entities_its_tags_show(labels, spelled_for_seqeval, gold, pred):
    gold, pred = [np.array(ids) for ids in gold], [np.array(ids) for ids in pred]
    assert score_predictions(gold, pred, labels) == seqeval_scores(gold, pred, spelled_for_seqeval)
    assert 0 < score_predictions(gold, pred, labels)["f1"] < 1
    with pytest.raises(ModelError, match="strict IOB2"):
        score_predictions(gold, pred, labels, strict=True)

def test_strict_mode_uses_seqeval_strict():
    gold, pred = ids_of("I-PER I-PER O B-LOC"), ids_of("I-PER I-PER O B-LOC")
    lenient = score_predictions(gold, pred, FIVE)
    strict = score_predictions(gold, pred, FIVE, strict=True)
    assert lenient["f1"] == 1.0 and lenient["per_type"]["PER"]["support"] == 1
    assert strict == compute_metrics([[FIVE[i] for i in gold[0]]], [[FIVE[i] for i in pred[0]]], strict=True)
    assert "PER" not in strict["per_type"], "strict IOB2 has no entity starting with I-"


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        score_label_ids(ids_of("O O"), ids_of("O"), FIVE)
