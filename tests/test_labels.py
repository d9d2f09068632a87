import pytest

from nerlib.errors import ConfigError
from nerlib.labels import (
    FIVE_CLASSES, MULTINERD_TAGS, auto_label_set, is_bio_tag, labels_for_classes, multinerd_label_set,
)

HUB_IDS = {
    "O": 0, "B-PER": 1, "I-PER": 2, "B-ORG": 3, "I-ORG": 4, "B-LOC": 5, "I-LOC": 6, "B-ANIM": 7, "I-ANIM": 8,
    "B-BIO": 9, "I-BIO": 10, "B-CEL": 11, "I-CEL": 12, "B-DIS": 13, "I-DIS": 14, "B-EVE": 15, "I-EVE": 16,
    "B-FOOD": 17, "I-FOOD": 18, "B-INST": 19, "I-INST": 20, "B-MEDIA": 21, "I-MEDIA": 22, "B-MYTH": 23,
    "I-MYTH": 24, "B-PLANT": 25, "I-PLANT": 26, "B-TIME": 27, "I-TIME": 28, "B-VEHI": 29, "I-VEHI": 30,
}


def test_multinerd_tags_have_the_hub_ids():
    assert {tag: i for i, tag in enumerate(MULTINERD_TAGS)} == HUB_IDS


def test_all_is_the_31_tags_unchanged():
    labels = multinerd_label_set("all")
    assert labels.labels == MULTINERD_TAGS
    assert [labels.tag_id(tag) for tag in MULTINERD_TAGS] == list(range(31))


def test_five_has_eleven_compact_labels():
    five = multinerd_label_set("five")
    assert five.labels == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-ANIM", "I-ANIM", "B-DIS", "I-DIS")
    assert five.id2label == dict(enumerate(five.labels))
    assert set(FIVE_CLASSES) == set(five.classes)


def test_five_keeps_anim_and_sends_other_classes_to_o():
    five = multinerd_label_set("five")
    # The original notebook's mapping sent ANIM to O: it must survive here.
    assert five.tag_id("B-ANIM") == 7 and five.tag_id("I-ANIM") == 8
    assert five.tag_id("B-DIS") == 9 and five.tag_id("I-DIS") == 10
    kept = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-ANIM", "I-ANIM", "B-DIS", "I-DIS"}
    for tag in MULTINERD_TAGS:
        expected = five.labels.index(tag) if tag in kept else 0
        assert five.tag_id(tag) == expected, tag


def test_five_rejects_tags_outside_multinerd():
    with pytest.raises(KeyError):
        multinerd_label_set("five").tag_id("B-MISC")


def test_all_rejects_unknown_tags():
    with pytest.raises(KeyError):
        multinerd_label_set("all").tag_id("B-MISC")


def test_subset_follows_multinerd_order_and_remaps():
    subset = multinerd_label_set("dis, per,LOC")
    assert subset.labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-DIS", "I-DIS")
    assert subset.tag_id("B-ORG") == 0
    assert subset.tag_id("I-DIS") == 6


@pytest.mark.parametrize("spec", ["PER,MISC", "", " , ", "six"])
def test_bad_label_specs_are_config_errors(spec):
    with pytest.raises(ConfigError, match="--labels"):
        multinerd_label_set(spec)


def test_auto_reads_classes_from_the_data_with_both_prefixes():
    auto = auto_label_set([("O", "B-PER", "I-PER"), ("B-MISC", "O"), ("I-LOC",)])
    assert auto.labels == ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER")
    assert auto.tag_id("I-MISC") == 4
    with pytest.raises(KeyError):
        auto.tag_id("B-ORG")


def test_labels_for_classes_and_bio_check():
    assert labels_for_classes(["X"]) == ("O", "B-X", "I-X")
    assert is_bio_tag("O") and is_bio_tag("B-PER") and is_bio_tag("I-VEHI")
    assert not any(is_bio_tag(t) for t in ("PER", "B-", "S-PER", "o", "B PER", ""))
