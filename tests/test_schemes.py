"""Tag schemes: hand-written tag sequences against hand-worked entities, detection, and every broken case."""

import random

import pytest

from nerlib.schemes import SCHEMES, SchemeError, convert_to_bio, detect_scheme, get_scheme

# "Alice Bob saw New York and Oslo ." with PER Alice, PER Bob (adjacent, same type), LOC New York, LOC Oslo.
ENTITIES = [("PER", 0, 1), ("PER", 1, 2), ("LOC", 3, 5), ("LOC", 6, 7)]
WRITTEN = {
    "bio": "B-PER B-PER O B-LOC I-LOC O B-LOC O",
    "iob1": "I-PER B-PER O I-LOC I-LOC O I-LOC O",
    "bioes": "S-PER S-PER O B-LOC E-LOC O S-LOC O",
    "bilou": "U-PER U-PER O B-LOC L-LOC O U-LOC O",
}
BIO = WRITTEN["bio"].split()


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_each_scheme_reads_and_writes_the_hand_worked_entities(name):
    tags = WRITTEN[name].split()
    scheme = get_scheme(name)
    assert scheme.decode(tags) == ENTITIES
    assert scheme.encode(ENTITIES, len(tags)) == tags
    converted, detection = convert_to_bio([tags])
    assert converted == [BIO]
    assert detection.scheme is SCHEMES[name], detection.reason


def test_io_reads_a_run_of_one_type_as_one_entity_and_cannot_write_adjacent_ones():
    tags = "I-PER I-PER O I-LOC I-LOC O LOC O".split()  # a bare class name is IO too (with --tag-scheme io)
    converted, detection = convert_to_bio([tags], "io")
    assert converted == ["B-PER I-PER O B-LOC I-LOC O B-LOC O".split()]
    assert detection.scheme.name == "IO"
    assert detect_scheme([tags[:6]]).scheme.name == "IO"  # only I- tags: detected as IO
    with pytest.raises(ValueError, match="IO cannot tell them apart"):
        SCHEMES["io"].encode(ENTITIES, 8)


@pytest.mark.parametrize("aliases", [("iob2", "bio"), ("iobes", "bioes"), ("BILOU", "bilou")])
def test_scheme_aliases(aliases):
    assert get_scheme(aliases[0]) is SCHEMES[aliases[1]]


def test_bio_and_iob1_detection_reasons():
    # I- after O in a file that opens entities with B-: BIO read leniently, as seqeval does.
    assert detect_scheme([["B-PER", "O", "I-LOC"]]).scheme.name == "BIO"
    assert "1 entities open with I-" in detect_scheme([["B-PER", "O", "I-LOC"]]).reason
    # I- opens, B- only splits two entities of one type: IOB1.
    assert detect_scheme([["I-PER", "I-PER", "B-PER", "O"]]).scheme.name == "IOB1"
    assert detect_scheme([["O", "O"]]).reason == "no entity tags"
    # Gold data is trained on in BIO: an entity that opens with I- gets B-.
    assert convert_to_bio([["B-PER", "O", "I-LOC", "I-LOC", "I-PER"]])[0] == [["B-PER", "O", "B-LOC", "I-LOC", "B-PER"]]


# (tags of two sentences, scheme or auto, message fragment, (sentence, word) of the error)
BROKEN = [
    ([["S-PER", "O"], ["O", "U-LOC"]], "auto", "mixes tag schemes", (1, 1)),
    ([["B-PER", "O"]], "bioes", "needs I-PER or E-PER", (0, 1)),
    ([["O", "I-PER", "E-PER"]], "bioes", "continues no entity", (0, 1)),
    ([["O", "E-LOC"]], "bioes", "continues no entity", (0, 1)),
    ([["B-PER", "I-PER"]], "bioes", "never closed", (0, 0)),
    ([["B-PER", "E-LOC"]], "bioes", "needs I-PER or E-PER", (0, 1)),
    ([["B-PER", "S-PER"]], "auto", "needs I-PER or E-PER", (0, 1)),
    ([["B-PER", "U-PER"]], "bilou", "needs I-PER or L-PER", (0, 1)),
    ([["O"], ["I-PER", "B-PER"]], "io", "IO has no B-", (1, 1)),
    ([["O", "PER"]], "auto", "no scheme prefix", (0, 1)),
    ([["O", "PER"]], "bio", "no scheme prefix", (0, 1)),
    ([["S-PER"]], "bio", "is no BIO tag", (0, 0)),
    ([["B-"]], "auto", "malformed tag", (0, 0)),
    ([["O", "B-NEW YORK"]], "auto", "malformed tag", (0, 1)),
]


@pytest.mark.parametrize("tags, scheme, message, position", BROKEN)
def test_tags_that_fit_no_scheme_or_mix_two_name_the_word(tags, scheme, message, position):
    with pytest.raises(SchemeError, match=message) as caught:
        convert_to_bio(tags, scheme)
    assert caught.value.position == position


def test_every_scheme_round_trips_random_entities():
    rng = random.Random(3)
    for _ in range(200):
        length = rng.randint(1, 12)
        spans, index = [], 0
        while index < length:
            if rng.random() < 0.4:
                end = min(length, index + rng.randint(1, 3))
                spans.append((rng.choice(["PER", "LOC"]), index, end))
                index = end
            else:
                index += 1
        for name in ("bio", "iob1", "bioes", "bilou"):
            tags = SCHEMES[name].encode(spans, length)
            assert SCHEMES[name].decode(tags) == spans, (name, tags)
            assert convert_to_bio([tags], name)[0] == [SCHEMES["bio"].encode(spans, length)]
