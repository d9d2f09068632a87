from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nerlib.data import Sentence
from nerlib.evaluation import compute_metrics, format_table, predict_encoded
from nerlib.features import encode
from nerlib.labels import multinerd_label_set


def test_metrics_match_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    m = compute_metrics(gold, pred)
    # 3 gold entities, 3 predicted, 2 correct (PER, ORG); 5 of 6 words right.
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 6)
    assert m["words"] == 6
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert set(m) == {"precision", "recall", "f1", "accuracy", "words", "per_type"}


def test_lenient_and_strict_reading_of_i_after_o():
    gold = [["O", "B-PER", "I-PER"]]
    pred = [["O", "I-PER", "I-PER"]]
    assert compute_metrics(gold, pred)["f1"] == 1.0  # seqeval's default: I- after O starts an entity
    assert compute_metrics(gold, pred, strict=True)["f1"] == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        compute_metrics([["O"]], [["O", "O"]])


class EchoModel(torch.nn.Module):
    """Predicts, at every position, the label (input_id % num_labels): a known mapping."""

    def __init__(self, num_labels):
        super().__init__()
        self.num_labels = num_labels

    def forward(self, input_ids, attention_mask):
        logits = torch.nn.functional.one_hot(input_ids % self.num_labels, self.num_labels).float()
        return SimpleNamespace(logits=logits)


def test_predictions_come_back_to_every_word_across_windows(tiny_tokenizer):
    five = multinerd_label_set("five")
    words = ["alice", "saw", "the", "fox", "in", "paris", "unknowns"] * 5
    sentences = [Sentence(tuple(words), ("O",) * len(words), "m", 1), Sentence(("bob", "."), ("O", "O"), "m", 2)]
    encoded = encode(sentences, five, tiny_tokenizer, max_length=9)
    assert len(encoded) > 4
    predicted = predict_encoded(EchoModel(five.num_labels), encoded, pad_id=0, batch_size=3)
    vocab = tiny_tokenizer.get_vocab()
    for sentence, pred in zip(sentences, predicted):
        first_pieces = [tiny_tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in sentence.tokens]
        assert pred.tolist() == [p % five.num_labels for p in first_pieces]
    assert [len(p) for p in predicted] == [len(words), 2]
    assert vocab  # the tokenizer really had a vocabulary


def test_format_table_lists_types_and_words():
    m = compute_metrics([["B-PER", "O"]], [["B-PER", "O"]])
    table = format_table(m, title="t")
    assert "PER" in table and "overall" in table and "over 2 words" in table
