"""Error analysis: outcome classes counted exactly on a hand-built case, slices, and agreement with seqeval."""

from __future__ import annotations

import random

import pytest

from nerlib.analysis import (
    EXACT, MISSED, OUTCOMES, SPURIOUS, WRONG_BOUNDARY, WRONG_BOUNDARY_AND_TYPE, WRONG_TYPE, Outcome, analyse,
    bucket_name, classify_sentence, classify_spans, training_surface_forms,
)
from nerlib.scoring import compute_metrics

# Each sentence: tokens, gold tags, predicted tags; the comments give the outcomes worked out by hand.
HAND_BUILT = [
    # "Ann Lee" exact PER; "Bob" PER read as ORG (wrong type); "Paris and Rome" as one LOC: it shares one word
    # with "Paris" and one with "Rome", pairs with the leftmost (wrong boundary), and "Rome" is missed.
    ("Ann Lee met Bob in Paris and Rome .".split(),
     ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O", "B-LOC", "O"],
     ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC", "I-LOC", "I-LOC", "O"]),
    # The ORG "Bank of Oslo" cut in two: "Bank" pairs (wrong boundary), "of Oslo ." is spurious; "Lima" LOC read as
    # PER (wrong type); "Kim" a spurious PER.
    ("Bank of Oslo . near Lima Kim".split(),
     ["B-ORG", "I-ORG", "I-ORG", "O", "O", "B-LOC", "O"],
     ["B-ORG", "O", "B-ORG", "I-ORG", "O", "B-PER", "B-PER"]),
    # A PER read as a LOC one word to the right: wrong boundary and type.
    ("said Jo Ann Smith Street".split(),
     ["O", "B-PER", "I-PER", "I-PER", "O"],
     ["O", "O", "B-LOC", "I-LOC", "I-LOC"]),
    # A LOC missed, an ORG exact.
    ("Quito and Acme".split(), ["B-LOC", "O", "B-ORG"], ["O", "O", "B-ORG"]),
    # A spurious ORG, and a PER found although its tag starts with I- (seqeval's lenient reading).
    ("Hi Eve".split(), ["O", "B-PER"], ["B-ORG", "I-PER"]),
    # A DIS and an ANIM missed.
    ("swine flu in a fox".split(), ["B-DIS", "I-DIS", "O", "O", "B-ANIM"], ["O", "O", "O", "O", "O"]),
]
TYPES = ("PER", "ORG", "LOC", "ANIM", "DIS")


def hand_built_report(**options) -> dict:
    tokens, gold, pred = zip(*HAND_BUILT)
    return analyse(tokens, gold, pred, TYPES, **options)


def test_every_outcome_class_of_the_hand_built_case_is_counted_exactly():
    report = hand_built_report()
    assert report["outcomes"]["total"] == {
        EXACT: 3, WRONG_TYPE: 2, WRONG_BOUNDARY: 2, WRONG_BOUNDARY_AND_TYPE: 1, MISSED: 4, SPURIOUS: 3,
        "gold": 12, "predicted": 11}
    zero = dict.fromkeys(OUTCOMES, 0)
    assert report["outcomes"]["per_type"] == {
        "PER": {**zero, EXACT: 2, WRONG_TYPE: 1, WRONG_BOUNDARY_AND_TYPE: 1, SPURIOUS: 1, "gold": 4, "predicted": 4},
        "ORG": {**zero, EXACT: 1, WRONG_BOUNDARY: 1, SPURIOUS: 2, "gold": 2, "predicted": 5},
        "LOC": {**zero, WRONG_TYPE: 1, WRONG_BOUNDARY: 1, MISSED: 2, "gold": 4, "predicted": 2},
        "ANIM": {**zero, MISSED: 1, "gold": 1, "predicted": 0},
        "DIS": {**zero, MISSED: 1, "gold": 1, "predicted": 0},
    }
    assert report["confusion"]["rows"] == ["PER", "ORG", "LOC", "ANIM", "DIS", "spurious"]
    assert report["confusion"]["columns"] == ["PER", "ORG", "LOC", "ANIM", "DIS", "missed"]
    assert report["confusion"]["counts"] == [
        # PER ORG LOC ANIM DIS missed
        [2, 1, 1, 0, 0, 0],  # gold PER
        [0, 2, 0, 0, 0, 0],  # gold ORG
        [1, 0, 1, 0, 0, 2],  # gold LOC
        [0, 0, 0, 0, 0, 1],  # gold ANIM
        [0, 0, 0, 0, 0, 1],  # gold DIS
        [1, 2, 0, 0, 0, 0],  # spurious
    ]


def test_outcomes_of_each_hand_built_sentence():
    first, second = (classify_sentence(gold, pred) for _, gold, pred in HAND_BUILT[:2])
    assert first == [Outcome(EXACT, ("PER", 0, 2), ("PER", 0, 2)), Outcome(WRONG_TYPE, ("PER", 3, 4), ("ORG", 3, 4)),
                     Outcome(WRONG_BOUNDARY, ("LOC", 5, 6), ("LOC", 5, 8)), Outcome(MISSED, ("LOC", 7, 8), None)]
    assert second == [Outcome(WRONG_BOUNDARY, ("ORG", 0, 3), ("ORG", 0, 1)), Outcome(SPURIOUS, None, ("ORG", 2, 4)),
                      Outcome(WRONG_TYPE, ("LOC", 5, 6), ("PER", 5, 6)), Outcome(SPURIOUS, None, ("PER", 6, 7))]


def test_pairing_prefers_the_larger_overlap_then_the_same_type_and_never_depends_on_order():
    # A prediction over three words shares two with the second gold entity and one with the first.
    gold = [("PER", 0, 1), ("LOC", 1, 3)]
    pred = [("LOC", 0, 3)]
    # Ordered by first word, then by class.
    expected = [Outcome(WRONG_BOUNDARY, ("LOC", 1, 3), ("LOC", 0, 3)), Outcome(MISSED, ("PER", 0, 1), None)]
    assert classify_spans(gold, pred) == classify_spans(gold[::-1], pred) == expected
    # Equal overlaps: the pair of the same type wins over the leftmost one.
    gold = [("PER", 0, 1), ("LOC", 1, 2)]
    assert classify_spans(gold, [("LOC", 0, 2)]) == [Outcome(WRONG_BOUNDARY, ("LOC", 1, 2), ("LOC", 0, 2)),
                                                     Outcome(MISSED, ("PER", 0, 1), None)]
    assert classify_spans([], []) == []


def test_slices_of_one_sentence_worked_by_hand():
    tokens, gold, pred = HAND_BUILT[0]
    report = analyse([tokens], [gold], [pred], TYPES, train_forms={"Ann Lee", "Paris", "Lima"}, windows=[2])
    rows = {name: {row["name"]: (row["gold"], row["predicted"], row["exact"]) for row in bucket_rows}
            for name, bucket_rows in report["slices"].items()}
    # Gold: "Ann Lee" (seen), "Bob", "Paris" (seen), "Rome"; predicted: "Ann Lee" (seen), "Bob", "Paris and Rome".
    assert rows["seen in training"] == {"seen": (2, 1, 1), "unseen": (2, 2, 0)}
    assert rows["entity length (words)"] == {"1": (3, 1, 0), "2": (1, 1, 1), "3": (0, 1, 0), "4+": (0, 0, 0)}
    assert rows["sentence length (words)"] == {"1-10": (4, 3, 1), "11-20": (0, 0, 0), "21-40": (0, 0, 0),
                                               "41+": (0, 0, 0)}
    assert rows["windows per sentence"] == {"one": (0, 0, 0), "several": (4, 3, 1)}
    seen = report["slices"]["seen in training"][0]
    assert (seen["precision"], seen["recall"]) == (1.0, 0.5) and seen["f1"] == pytest.approx(2 / 3)
    assert report["slices"]["seen in training"][1]["f1"] == 0.0
    # Types with no entity on either side are left out.
    assert report["types"] == ["PER", "ORG", "LOC"] and report["confusion"]["rows"] == ["PER", "ORG", "LOC", "spurious"]
    # Without training forms or windows those slices are left out.
    assert set(hand_built_report()["slices"]) == {"entity length (words)", "sentence length (words)"}


def test_bucket_names():
    assert [bucket_name(n, (1, 2, 3)) for n in (1, 2, 3, 4, 9)] == ["1", "2", "3", "4+", "4+"]
    assert [bucket_name(n, (10, 20, 40)) for n in (1, 10, 11, 40, 41)] == ["1-10", "1-10", "11-20", "21-40", "41+"]


def test_training_surface_forms():
    assert training_surface_forms([["Ann", "Lee", "met", "Bob"]], [["B-PER", "I-PER", "O", "I-ORG"]]) == {
        "Ann Lee", "Bob"}


def test_sentences_with_most_errors_come_first_with_their_source():
    tokens, gold, pred = zip(*HAND_BUILT)
    sources = [("test.jsonl", line) for line in range(1, 7)]
    report = analyse(tokens, gold, pred, TYPES, sources=sources, top=3)
    # Errors per sentence: 3, 4, 1, 1, 1, 2.
    assert [(s["index"], s["errors"]) for s in report["worst_sentences"]] == [(1, 4), (0, 3), (5, 2)]
    assert report["sentences_with_errors"] == 6
    first = report["worst_sentences"][0]
    assert first["source"] == {"file": "test.jsonl", "line": 2, "where": "test.jsonl:2"}
    assert first["gold"] == [["ORG", 0, 3], ["LOC", 5, 6]]
    assert [o["class"] for o in first["outcomes"]] == [WRONG_BOUNDARY, SPURIOUS, WRONG_TYPE, SPURIOUS]


def random_tags(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]) for _ in range(length)]


def test_exact_matches_and_entity_counts_agree_with_seqeval_on_random_tags():
    rng = random.Random(11)
    gold = [random_tags(rng, rng.randint(1, 10)) for _ in range(300)]
    pred = [[tag if rng.random() < 0.6 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for tag in tags]
            for tags in gold]
    report = analyse([["w"] * len(tags) for tags in gold], gold, pred)
    metrics = compute_metrics(gold, pred)
    for name, row in metrics["per_type"].items():
        counts = report["outcomes"]["per_type"][name]
        assert counts["gold"] == row["support"]
        assert counts[EXACT] == round(row["recall"] * row["support"])
        if row["precision"]:
            assert counts["predicted"] == round(counts[EXACT] / row["precision"])
        # Every gold entity has one outcome, and every predicted one.
        assert sum(counts[k] for k in (EXACT, WRONG_TYPE, WRONG_BOUNDARY, WRONG_BOUNDARY_AND_TYPE, MISSED)) == \
            counts["gold"]
    total = report["outcomes"]["total"]
    assert total[EXACT] + total[WRONG_TYPE] + total[WRONG_BOUNDARY] + total[WRONG_BOUNDARY_AND_TYPE] + \
        total[SPURIOUS] == total["predicted"]
    exact_over_slices = sum(row["exact"] for row in report["slices"]["entity length (words)"])
    assert exact_over_slices == total[EXACT]
    assert report["slices"]["sentence length (words)"][0]["recall"] == pytest.approx(metrics["recall"])


def test_the_readme_example_of_nerlib_analyse():
    import nerlib

    found = nerlib.analyse([["Alice", "met", "Bob", "Smith"]], [["B-PER", "O", "B-PER", "I-PER"]],
                           [["B-LOC", "O", "B-PER", "O"]])
    # "Alice": same word, PER read as LOC; "Bob Smith": PER cut to "Bob".
    assert found["outcomes"]["total"] == {"exact": 0, "wrong_type": 1, "wrong_boundary": 1,
                                          "wrong_boundary_and_type": 0, "missed": 0, "spurious": 0,
                                          "gold": 2, "predicted": 2}
