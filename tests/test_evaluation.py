from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nerlib.data import Sentence
from nerlib.inference import predict_words
from nerlib.scoring import compute_metrics, format_table
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
    predicted = predict_words(EchoModel(five.num_labels), encoded, pad_id=0, batch_size=3).label_ids
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


def test_cpu_inference_in_threads_matches_one_window_at_a_time(tiny_encoder, tiny_tokenizer):
    from nerlib.inference import predict_windows
    from nerlib.modeling import load_model_for_training

    five = multinerd_label_set("five")
    torch.manual_seed(0)
    model = load_model_for_training(tiny_encoder, five).eval()
    vocabulary = ["alice", "saw", "the", "fox", "in", "paris", "bob", "."]
    rng = np.random.default_rng(0)
    sentences = [Sentence(tuple(rng.choice(vocabulary, size=int(n))), ("O",) * int(n), "m", i)
                 for i, n in enumerate(rng.integers(1, 12, size=40))]
    encoded = encode(sentences, five, tiny_tokenizer, max_length=16)
    windows = np.arange(len(encoded))
    with torch.inference_mode():  # reference: each window alone, no padding, no batching
        expected = [model(input_ids=torch.from_numpy(ids)[None]).logits[0, labels != -100].argmax(-1).numpy()
                    for ids, labels in zip(encoded.input_ids, encoded.labels)]
    assert len(np.unique(np.concatenate(expected))) > 1  # the model does not predict one label everywhere
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):  # one torch thread: one loop; three: three Python threads
            torch.set_num_threads(count)
            predicted, scores = predict_windows(model, encoded, windows, 0, batch_size=4, with_scores=True)
            assert torch.get_num_threads() == count  # restored after the threaded path
            assert [p.tolist() for p in predicted] == [e.tolist() for e in expected]
            assert all(len(s) == len(p) and (s > 0).all() for s, p in zip(scores, predicted))
    finally:
        torch.set_num_threads(threads)
    assert not model.training
