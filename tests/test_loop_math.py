"""The training loop's mathematics against references worked out by hand or computed in plain torch.

What the loop did is observed from torch's side only: an AdamW subclass put in place of
`torch.optim.AdamW` writes down, at every optimizer step, the learning rate of each parameter
group and the gradient it was handed, and a hook on each parameter keeps the gradient as
`backward` left it (before clipping); a global forward hook writes down the windows the model was
run on. Nothing here calls the loop's own schedule, loss or batching helpers, so a bug in them
cannot cancel out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import nerlib
from nerlib.config import TrainConfig
from nerlib.labels import MULTINERD_TAGS, multinerd_label_set

from conftest import write_jsonl


@dataclass
class Step:
    """One optimizer step as the optimizer saw it."""

    lrs: list[float]                                # the learning rate of each parameter group
    grads: dict[int, torch.Tensor]                  # id(parameter) -> the gradient the step used
    backward_grads: dict[int, torch.Tensor]         # id(parameter) -> the gradient as backward left it


@dataclass
class Observed:
    """What a training run did, seen from torch."""

    optimizers: list = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    initial: dict[int, torch.Tensor] = field(default_factory=dict)   # id(parameter) -> value before training
    model: torch.nn.Module | None = None
    train_windows: list[tuple[int, ...]] = field(default_factory=list)  # unpadded token ids, in training mode
    train_forwards: int = 0


def global_norm(grads: dict[int, torch.Tensor]) -> float:
    """The L2 norm of all the gradients together, as if they were one vector."""
    return torch.cat([g.flatten() for g in grads.values()]).norm().item()


@pytest.fixture
def observed(monkeypatch):
    record = Observed()
    backward_grads: dict[int, torch.Tensor] = {}

    def keep_backward_grad(parameter: torch.Tensor) -> None:
        backward_grads[id(parameter)] = parameter.grad.detach().clone()

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            record.optimizers.append(self)
            for group in self.param_groups:
                for parameter in group["params"]:
                    record.initial[id(parameter)] = parameter.detach().clone()
                    parameter.register_post_accumulate_grad_hook(keep_backward_grad)

        def step(self, closure=None):
            grads = {id(p): p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None}
            record.steps.append(Step([g["lr"] for g in self.param_groups], grads, dict(backward_grads)))
            return super().step(closure)

    def watch_forward(module, args, kwargs, output) -> None:
        if not type(module).__name__.endswith("ForTokenClassification") or not module.training:
            return
        record.model = module
        record.train_forwards += 1
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for row, row_mask in zip(input_ids, mask if mask is not None else torch.ones_like(input_ids)):
            record.train_windows.append(tuple(row[row_mask.bool()].tolist()))

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    handle = torch.nn.modules.module.register_module_forward_hook(watch_forward, with_kwargs=True)
    yield record
    handle.remove()


def write_train_split(root, sentences: list[str]) -> str:
    """A hub-layout folder with a training split only; each sentence is written `word/TAG word/TAG`."""
    records = []
    for sentence in sentences:
        pairs = [item.rsplit("/", 1) for item in sentence.split()]
        records.append({"tokens": [w for w, _ in pairs], "ner_tags": [MULTINERD_TAGS.index(t) for _, t in pairs],
                        "lang": "en"})
    write_jsonl(os.path.join(str(root), "train", "train_en.jsonl"), records)
    return str(root)


def train_config(data, model, out, **overrides) -> TrainConfig:
    values = dict(labels="five", data=data, model=model, output_dir=str(out), epochs=1, lr=5e-3, batch_size=2,
                  max_length=16, weight_decay=0.0, progress=False, num_threads=1, device="cpu", seed=3)
    values.update(overrides)
    return TrainConfig(**values)


# Ten one-word-per-token sentences: with batch 2, five optimizer steps an epoch.
TEN_SENTENCES = [
    "alice/B-PER saw/O paris/B-LOC", "bob/B-PER likes/O pasta/O", "the/O fox/B-ANIM was/O near/O oslo/B-LOC",
    "carol/B-PER and/O dave/B-PER", "acme/B-ORG saw/O lima/B-LOC", "a/O flu/B-DIS in/O zurich/B-LOC",
    "the/O otter/B-ANIM", "globex/B-ORG of/O paris/B-LOC", "dave/B-PER saw/O the/O eagle/B-ANIM",
    "measles/B-DIS was/O in/O lima/B-LOC",
]


def test_learning_rate_at_every_step_with_warmup(observed, tiny_encoder, tmp_path):
    data = write_train_split(tmp_path / "data", TEN_SENTENCES)
    peak = 7e-3
    nerlib.train(train_config(data, tiny_encoder, tmp_path / "run", epochs=2, lr=peak, warmup_ratio=0.3))

    # By hand: 10 sentences / batch 2 = 5 steps an epoch, x 2 epochs = 10 optimizer steps; warmup
    # int(0.3 x 10) = 3 steps. The rate applied at step k (counting from 0) is the peak times
    #   k / 3                  for k < 3   (0, 1/3, 2/3: the first update runs at rate 0),
    #   (10 - k) / (10 - 3)    for k >= 3  (7/7, 6/7, ..., 1/7),
    # and after the last step the rate has decayed to (10 - 10) / 7 = 0.
    # The epoch boundary (after step 4) does not restart the schedule.
    expected = [0.0, peak / 3, 2 * peak / 3, 7e-3, 6e-3, 5e-3, 4e-3, 3e-3, 2e-3, 1e-3]
    assert len(observed.steps) == 10
    for k, step in enumerate(observed.steps):
        # Both parameter groups (decayed and not) follow the same schedule.
        assert step.lrs == pytest.approx([expected[k]] * 2, abs=1e-12), f"step {k}"
    (optimizer,) = observed.optimizers
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_learning_rate_without_warmup_decays_linearly_from_the_peak(observed, tiny_encoder, tmp_path):
    data = write_train_split(tmp_path / "data", TEN_SENTENCES[:8])
    nerlib.train(train_config(data, tiny_encoder, tmp_path / "run", lr=4e-3))
    # 8 sentences / batch 2 = 4 steps, no warmup: the rate at step k is 4e-3 x (4 - k) / 4.
    assert [s.lrs[0] for s in observed.steps] == pytest.approx([4e-3, 3e-3, 2e-3, 1e-3], abs=1e-12)


@pytest.mark.parametrize("limit", [0.01, 1e6])
def test_gradient_clipping_brings_a_larger_norm_down_to_the_limit(observed, tiny_encoder, tmp_path, limit):
    data = write_train_split(tmp_path / "data", TEN_SENTENCES[:6])
    nerlib.train(train_config(data, tiny_encoder, tmp_path / "run", max_grad_norm=limit))

    assert len(observed.steps) == 3
    for k, step in enumerate(observed.steps):
        before = global_norm(step.backward_grads)
        after = global_norm(step.grads)
        if limit < before:
            # The whole gradient is scaled by limit / norm: the norm comes out at the limit and
            # the direction is kept (clip_grad_norm_ adds 1e-6 to the norm it divides by).
            assert after == pytest.approx(limit, rel=1e-4), f"step {k}: norm {before:.4g} clipped to {after:.4g}"
            for key, grad in step.grads.items():
                torch.testing.assert_close(grad, step.backward_grads[key] * (limit / before), rtol=1e-4, atol=1e-9)
        else:
            assert after == pytest.approx(before, rel=1e-6), f"step {k}: a norm under the limit was changed"
    norms = [global_norm(s.backward_grads) for s in observed.steps]
    # Each case is the one it claims: every gradient above 0.01 and far below 1e6.
    assert all(0.01 < n < 1e6 for n in norms), norms


# Seven sentences, 1 + 2 + 3 + 4 + 2 + 3 + 5 = 20 words, each word one sub-token.
SEVEN_SENTENCES = [
    "alice/B-PER", "bob/B-PER saw/O", "the/O fox/B-ANIM ./O", "carol/B-PER was/O in/O lima/B-LOC",
    "acme/B-ORG ./O", "a/O flu/B-DIS ./O", "dave/B-PER saw/O the/O otter/B-ANIM ./O",
]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_an_epoch_with_a_partial_last_batch_trains_on_every_word(observed, tiny_encoder, tiny_tokenizer, tmp_path,
                                                                  group_by_length):
    data = write_train_split(tmp_path / "data", SEVEN_SENTENCES)
    metrics = nerlib.train(train_config(data, tiny_encoder, tmp_path / "run", epochs=2, batch_size=3,
                                        group_by_length=group_by_length))

    # By hand: 7 windows in batches of 3 are 3 + 3 + 1, so 3 optimizer steps an epoch, 6 in all,
    # and each epoch trains on all 20 words.
    assert len(observed.steps) == 6
    assert observed.train_forwards == 6
    assert len(metrics["train_loss_by_step"]) == 6
    assert metrics["train_words"] == 2 * 20
    # Each window went through the model once an epoch: [CLS] words [SEP], nothing cut or repeated.
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    windows = [(cls, *tiny_tokenizer.convert_tokens_to_ids([p.rsplit("/", 1)[0] for p in s.split()]), sep)
               for s in SEVEN_SENTENCES]
    assert len(observed.train_windows) == 14
    for epoch in range(2):
        assert sorted(observed.train_windows[7 * epoch:7 * epoch + 7]) == sorted(windows), f"epoch {epoch + 1}"


# Four sentences with unequal numbers of labelled words (2, 3, 1 and 5; "unknowns" is three
# sub-tokens but one word), so a loss averaged per micro-batch would differ from one averaged per word.
FOUR_SENTENCES = ["alice/B-PER unknowns/O", "bob/B-PER saw/O paris/B-LOC", "acme/B-ORG",
                  "the/O fox/B-ANIM was/O near/O oslo/B-LOC"]
FOUR_PIECES = [["alice", "un", "##known", "##s"], ["bob", "saw", "paris"], ["acme"],
               ["the", "fox", "was", "near", "oslo"]]
FIRST_PIECES = [[True, True, False, False], [True] * 3, [True], [True] * 5]


def test_accumulated_gradient_equals_one_big_batch_in_plain_torch(observed, tiny_encoder_no_dropout, tiny_tokenizer,
                                                                 tmp_path):
    from transformers import AutoModelForTokenClassification

    data = write_train_split(tmp_path / "data", FOUR_SENTENCES)
    # Batch 2 x accumulation 2 over 4 windows: exactly one optimizer step, over all four windows.
    nerlib.train(train_config(data, tiny_encoder_no_dropout, tmp_path / "run", batch_size=2, grad_accum=2,
                              max_grad_norm=0.0))
    assert len(observed.steps) == 1 and observed.train_forwards == 2

    # The reference: the model as it was before training, all four windows in one padded batch,
    # and the mean cross-entropy over the labelled words (the first sub-token of each word).
    five = multinerd_label_set("five")
    names = {id(p): name for name, p in observed.model.named_parameters()}
    reference = AutoModelForTokenClassification.from_pretrained(tiny_encoder_no_dropout, num_labels=five.num_labels)
    start = {names[key]: value for key, value in observed.initial.items()}
    assert start.keys() == dict(reference.named_parameters()).keys()
    reference.load_state_dict(start, strict=False)
    width = max(len(p) for p in FOUR_PIECES) + 2
    input_ids = torch.zeros((4, width), dtype=torch.long)  # [PAD] is 0
    attention_mask = torch.zeros((4, width), dtype=torch.long)
    labels = torch.full((4, width), -100)
    for row, (sentence, pieces, first) in enumerate(zip(FOUR_SENTENCES, FOUR_PIECES, FIRST_PIECES)):
        tags = iter(five.tag_id(item.rsplit("/", 1)[1]) for item in sentence.split())
        ids = tiny_tokenizer.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"])
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        for position, is_first in enumerate(first, start=1):
            if is_first:
                labels[row, position] = next(tags)
    assert (labels != -100).sum() == 11
    reference.train()
    logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).backward()  # mean over 11 words

    expected = {name: p.grad for name, p in reference.named_parameters()}
    (step,) = observed.steps
    assert {names[key] for key in step.grads} == set(expected)
    for key, grad in step.grads.items():
        torch.testing.assert_close(grad, expected[names[key]], rtol=1e-4, atol=1e-7, msg=names[key])
    assert max(g.abs().max().item() for g in expected.values()) > 1e-3  # not a comparison of zeros
