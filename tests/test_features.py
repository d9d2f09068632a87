import numpy as np
import pytest
import torch

from nerlib.data import Sentence
from nerlib.features import (
    IGNORE_INDEX, align_labels, collate, encode, length_grouped_batches, padding_efficiency, plan_windows, shuffled_batches,
    sorted_batches, uniform_length_batches,
)
from nerlib.labels import multinerd_label_set


def test_align_labels_first_subtoken_carries_the_label():
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert align_labels(word_ids, [5, 6, 7], ignore_index=-9) == [-9, 5, -9, 6, 7, -9, -9, -9]


def test_align_labels_specials_only_and_single_words():
    assert align_labels([None, None], [], ignore_index=-9) == [-9, -9]
    assert align_labels([None, 0, 1, 2, None], [3, 0, 4]) == [IGNORE_INDEX, 3, 0, 4, IGNORE_INDEX]


def test_align_labels_refuses_a_word_without_sub_tokens():
    # Word 1 produced no sub-token: it could not be scored, so alignment refuses rather than skip it.
    with pytest.raises(ValueError, match=r"word\(s\) \[1\] have no sub-token"):
        align_labels([None, 0, 2, 2, None], [1, 2, 3], ignore_index=-9)
    with pytest.raises(ValueError, match=r"\[2\]"):
        align_labels([None, 0, 1, None], [1, 2, 3], ignore_index=-9)  # the last word missing


def test_align_labels_labels_a_word_once_even_if_its_sub_tokens_are_not_adjacent():
    assert align_labels([None, 0, 1, 0, None], [7, 8], ignore_index=-9) == [-9, 7, 8, -9, -9]


@pytest.mark.parametrize("counts, budget, expected", [
    ([1, 1, 1], 10, [(0, 3)]),
    ([2, 2, 2], 4, [(0, 2), (2, 3)]),
    ([3, 3, 3], 3, [(0, 1), (1, 2), (2, 3)]),
    ([1, 9, 1], 4, [(0, 1), (1, 2), (2, 3)]),  # a word over the budget gets a window of its own
    ([], 4, [(0, 0)]),
])
def test_plan_windows(counts, budget, expected):
    assert plan_windows(counts, budget) == expected


def test_plan_windows_covers_every_word_once():
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(1, 6, size=rng.integers(1, 40)).tolist()
        windows = plan_windows(counts, 7)
        assert [w for a, b in windows for w in range(a, b)] == list(range(len(counts)))
        assert all(sum(min(c, 7) for c in counts[a:b]) <= 7 for a, b in windows)


def test_collate_pads_to_multiple_of_eight_with_sentinels():
    ids = [np.array([11, 12, 13]), np.array([21] * 9)]
    labels = [np.array([-100, 1, -100]), np.array([2] * 9)]
    batch = collate(ids, labels, pad_id=-8, label_pad_id=-9)
    expected_ids = torch.full((2, 16), -8)
    expected_ids[0, :3] = torch.tensor([11, 12, 13])
    expected_ids[1, :9] = 21
    expected_labels = torch.full((2, 16), -9)
    expected_labels[0, :3] = torch.tensor([-100, 1, -100])
    expected_labels[1, :9] = 2
    expected_mask = torch.zeros((2, 16), dtype=torch.long)
    expected_mask[0, :3] = 1
    expected_mask[1, :9] = 1
    assert torch.equal(batch["input_ids"], expected_ids)
    assert torch.equal(batch["labels"], expected_labels)
    assert torch.equal(batch["attention_mask"], expected_mask)


def test_collate_exact_multiple_is_not_padded_further():
    batch = collate([np.arange(8)], [np.zeros(8, dtype=np.int64)], pad_id=0)
    assert batch["input_ids"].shape == (1, 8)
    assert batch["input_ids"].dtype == torch.int64


def test_length_grouped_batches_reproducible_and_complete():
    lengths = np.random.default_rng(1).integers(5, 60, size=1000)
    first = length_grouped_batches(lengths, 32, seed=3, epoch=1, group_size=4)
    again = length_grouped_batches(lengths, 32, seed=3, epoch=1, group_size=4)
    other_epoch = length_grouped_batches(lengths, 32, seed=3, epoch=2, group_size=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sorted(np.concatenate(first).tolist()) == list(range(1000))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_epoch))
    # Grouping cuts padding well below a plain shuffle.
    def efficiency(batches):
        return lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)

    assert efficiency(first) > 0.8 > 0.6 > efficiency(shuffled_batches(1000, 32, seed=3, epoch=1))


def test_sorted_batches_longest_first():
    batches = sorted_batches(np.array([3, 9, 1, 7]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 2]]


def test_uniform_length_batches_never_mix_lengths_and_cover_every_window():
    lengths = np.array([3, 5, 3, 5, 5, 2, 3, 3])
    batches = uniform_length_batches(lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4], [0, 2], [6, 7], [5]]
    assert uniform_length_batches(np.array([], dtype=np.int64), 2) == []


def _sentence(tokens, tags):
    return Sentence(tuple(tokens), tuple(tags), "mem", 1)


def test_encode_labels_first_subtokens_and_unicode(tiny_tokenizer):
    five = multinerd_label_set("five")
    sentence = _sentence(["Alice", "unknowns", "Zürich", "\u200b", "."], ["B-PER", "O", "B-LOC", "O", "O"])
    encoded = encode([sentence], five, tiny_tokenizer, max_length=32)
    assert len(encoded) == 1
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    assert ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id
    # One labelled position per word, in word order; the zero-width word became [UNK].
    assert labels[labels != IGNORE_INDEX].tolist() == [1, 0, 5, 0, 0]
    assert tiny_tokenizer.unk_token_id in ids.tolist()
    assert len(ids) > 7  # "unknowns" split into several sub-tokens
    assert encoded.gold[0].tolist() == [1, 0, 5, 0, 0]


def test_encode_windows_long_sentences_without_losing_words(tiny_tokenizer):
    five = multinerd_label_set("five")
    tokens = ["alice", "saw", "the", "fox", "in", "paris"] * 7
    tags = ["B-PER", "O", "O", "B-ANIM", "O", "B-LOC"] * 7
    encoded = encode([_sentence(tokens, tags), _sentence(["bob"], ["B-PER"])], five, tiny_tokenizer, max_length=10)
    assert all(len(ids) <= 10 for ids in encoded.input_ids)
    assert len(encoded) > 5
    first_sentence = encoded.sentence_index == 0
    labelled = np.concatenate([encoded.labels[i][encoded.labels[i] != IGNORE_INDEX] for i in np.flatnonzero(first_sentence)])
    assert labelled.tolist() == [five.tag_id(t) for t in tags]
    assert encoded.word_start[first_sentence].tolist() == sorted(encoded.word_start[first_sentence].tolist())
    assert encoded.words_per_window().sum() == encoded.num_words == 43


def test_a_sentence_longer_than_the_model_is_windowed_without_the_tokenizers_length_warning(tiny_encoder, caplog):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder, model_max_length=16)  # a fresh one: it warns once
    tokens = ["alice", "saw", "the", "fox", "in", "paris"] * 7
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            encoded = encode([_sentence(tokens, ["O"] * len(tokens))], multinerd_label_set("five"), tokenizer,
                             max_length=16)
    finally:
        hf_logging.disable_propagation()
    assert len(encoded) > 1 and encoded.num_words == len(tokens)  # the sentence was longer than the model
    assert not [r for r in caplog.records if "longer than the specified maximum" in r.getMessage()], caplog.text


def test_padding_efficiency_counts_padding_as_collate_pads():
    lengths = np.array([3, 5, 2, 8])
    batches = [np.array([0, 1]), np.array([2, 3])]
    # Widths 5 and 8: 18 real tokens of 26 computed; rounded to multiples of 4: 8 and 8.
    assert padding_efficiency(lengths, batches) == pytest.approx(18 / 26)
    assert padding_efficiency(lengths, batches, pad_to_multiple_of=4) == pytest.approx(18 / 32)
    ids = [np.arange(n) for n in lengths]
    widths = [collate([ids[i] for i in b], [ids[i] for i in b], pad_id=0, pad_to_multiple_of=4)["input_ids"].shape[1]
              for b in batches]
    assert widths == [8, 8]
    assert padding_efficiency(lengths, []) == 1.0


# --- exact windows on a vocabulary written here ---------------------------------------------------

HAND_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alice", "bob", "saw", "un", "##a", "##b", "##c", "##s"]
CLS, UNK, SEP = 2, 1, 3
ALICE, BOB, SAW = 5, 6, 7
UNABCS = [8, 9, 10, 11, 12]  # "unabcs" = un ##a ##b ##c ##s, five sub-tokens
X = IGNORE_INDEX


@pytest.fixture(scope="module")
def hand_tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("hand-vocab")
    (folder / "vocab.txt").write_text("\n".join(HAND_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids(["un", "##a", "##b", "##c", "##s"]) == UNABCS  # the ids below hold
    return tokenizer


def _windows(encoded):
    return [ids.tolist() for ids in encoded.input_ids], [lab.tolist() for lab in encoded.labels]


def test_a_word_longer_than_the_window_is_cut_to_its_first_sub_tokens(hand_tokenizer):
    five = multinerd_label_set("five")
    per, loc = five.tag_id("B-PER"), five.tag_id("B-LOC")
    # max_length 5 leaves 3 sub-tokens beside [CLS] and [SEP]: "unabcs" (5) gets a window of its
    # own holding un ##a ##b, labelled on "un"; its neighbours get windows of their own too.
    encoded = encode([_sentence(["alice", "unabcs", "bob"], ["B-PER", "B-LOC", "B-PER"])], five, hand_tokenizer,
                     max_length=5)
    ids, labels = _windows(encoded)
    assert ids == [[CLS, ALICE, SEP], [CLS, *UNABCS[:3], SEP], [CLS, BOB, SEP]]
    assert labels == [[X, per, X], [X, loc, X, X, X], [X, per, X]]
    assert encoded.word_start.tolist() == [0, 1, 2] and encoded.sentence_index.tolist() == [0, 0, 0]


def test_a_long_word_between_short_ones_with_room_to_spare(hand_tokenizer):
    five = multinerd_label_set("five")
    o, per, i_per, loc = (five.tag_id(t) for t in ("O", "B-PER", "I-PER", "B-LOC"))
    # Budget 4: "saw" (1) | "unabcs" cut to 4 | "alice bob" (1 + 1) share the last window.
    encoded = encode([_sentence(["saw", "unabcs", "alice", "bob"], ["O", "B-LOC", "B-PER", "I-PER"]),
                      _sentence(["unabcs"], ["B-LOC"])], five, hand_tokenizer, max_length=6)
    ids, labels = _windows(encoded)
    assert ids == [[CLS, SAW, SEP], [CLS, *UNABCS[:4], SEP], [CLS, ALICE, BOB, SEP], [CLS, *UNABCS[:4], SEP]]
    assert labels == [[X, o, X], [X, loc, X, X, X, X], [X, per, i_per, X], [X, loc, X, X, X, X]]
    assert encoded.word_start.tolist() == [0, 1, 2, 0] and encoded.sentence_index.tolist() == [0, 0, 0, 1]
    assert encoded.words_per_window().sum() == encoded.num_words == 5


def test_words_the_tokenizer_drops_become_the_unknown_token_and_are_scored(hand_tokenizer):
    five = multinerd_label_set("five")
    per, loc = five.tag_id("B-PER"), five.tag_id("B-LOC")
    # A zero-width space and a control character: BERT's tokenizer gives them no sub-token at all.
    sentence = _sentence(["alice", "\u200b", "\x07", "bob"], ["B-PER", "O", "B-LOC", "B-PER"])
    encoded = encode([sentence], five, hand_tokenizer, max_length=16)
    ids, labels = _windows(encoded)
    assert ids == [[CLS, ALICE, UNK, UNK, BOB, SEP]]
    assert labels == [[X, per, 0, loc, per, X]]
