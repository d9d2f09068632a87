"""The CPU dropout kernel, the attention that uses it, and the allocator setting used by CPU training."""

import os
import sys

import pytest
import torch

from nerlib import cpu_training
from nerlib.cpu_training import (CPU_ATTENTION, CpuDropout, dropout_cpu, keep_freed_memory_for_reuse,
                                 release_freed_memory, use_cpu_attention, use_cpu_dropout, use_cpu_training_settings)

KEEP_BELOW = round(0.9 * 65536)  # p = 0.1 rounded to a multiple of 1/65536
SCALE = 65536 / KEEP_BELOW


def test_dropout_keeps_the_right_share_and_scales_by_the_exact_inverse():
    torch.manual_seed(0)
    out = dropout_cpu(torch.ones(300_000), 0.1)
    kept = out != 0
    # Binomial(300000, 0.9): 5 standard deviations are 0.0027.
    assert abs(kept.float().mean().item() - 0.9) < 0.0027
    assert torch.equal(out[kept], torch.full_like(out[kept], SCALE))
    assert abs(out.mean().item() - 1.0) < 0.003


def test_dropout_draws_are_independent_across_positions():
    # Neighbouring elements share a 64-bit word: their masks must still be independent.
    torch.manual_seed(1)
    kept = (dropout_cpu(torch.ones(600_000), 0.5) != 0).float().view(-1, 3)
    both = (kept[:, 0] * kept[:, 1]).mean().item()
    assert abs(both - 0.25) < 0.005
    assert abs(kept[:, 2].mean().item() - 0.5) < 0.005


def test_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    hidden = torch.randn(4, 7, 16, requires_grad=True)
    out = dropout_cpu(hidden, 0.1)
    out.backward(torch.ones_like(out))
    mask = (out != 0).float()
    assert torch.equal(hidden.grad, mask * SCALE)
    assert torch.equal(out, hidden.detach() * mask * SCALE)


def test_dropout_is_reproducible_from_the_seed_and_differs_between_seeds():
    hidden = torch.randn(1000)
    torch.manual_seed(3)
    first = dropout_cpu(hidden, 0.1)
    torch.manual_seed(3)
    again = dropout_cpu(hidden, 0.1)
    torch.manual_seed(4)
    other = dropout_cpu(hidden, 0.1)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_both_byte_orders_give_the_same_mask(monkeypatch):
    hidden = torch.ones(1001)  # not a multiple of three draws
    torch.manual_seed(5)
    native = dropout_cpu(hidden, 0.3)
    monkeypatch.setattr(cpu_training.sys, "byteorder", "big" if sys.byteorder == "little" else "little")
    torch.manual_seed(5)
    assert torch.equal(dropout_cpu(hidden, 0.3), native)


def test_edge_probabilities_and_dtypes():
    hidden = torch.randn(50)
    assert dropout_cpu(hidden, 0.0) is hidden
    assert torch.equal(dropout_cpu(hidden, 1.0), torch.zeros(50))
    half = dropout_cpu(torch.ones(64, dtype=torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16 and set(half.unique().tolist()) <= {0.0, 2.0}


def test_cpu_dropout_swaps_plain_dropouts_and_changes_nothing_in_eval(tiny_encoder):
    from nerlib.labels import multinerd_label_set
    from nerlib.modeling import load_model_for_training

    model = load_model_for_training(tiny_encoder, multinerd_label_set("five")).eval()
    plain = sum(type(m) is torch.nn.Dropout for m in model.modules())
    input_ids = torch.tensor([[2, 5, 6, 7, 3]])
    before = model(input_ids=input_ids).logits
    assert use_cpu_dropout(model) == plain > 0
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(isinstance(m, CpuDropout) for m in model.modules()) == plain
    assert torch.equal(model(input_ids=input_ids).logits, before)
    model.train()
    torch.manual_seed(6)
    noisy = model(input_ids=input_ids).logits
    assert not torch.equal(noisy, before)  # dropout is active in training


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_for_reuse_until_released():
    def resident_mib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    assert keep_freed_memory_for_reuse() is True
    blocks = [torch.ones(1 << 20) for _ in range(48)]  # 192 MiB in 4 MiB blocks
    before_free = resident_mib()
    del blocks
    kept = resident_mib()
    assert kept > before_free - 64  # freed, yet still held for the next step's tensors
    release_freed_memory()
    assert resident_mib() < kept - 128


def _tiny_bert(attention_dropout: float, attn_implementation: str = "sdpa"):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(7)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, num_labels=5, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=attention_dropout, attn_implementation=attn_implementation)
    return BertForTokenClassification(config)


PADDED = {"input_ids": torch.tensor([[2, 5, 6, 7, 3, 0], [2, 9, 3, 0, 0, 0]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])}


def test_cpu_attention_computes_sdpa_attention_with_its_mask():
    # p = 1e-7 rounds to "keep everything" in dropout_cpu, yet takes the explicit training path.
    model = _tiny_bert(1e-7).train()
    expected = model(**PADDED).logits
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert use_cpu_attention(model) is True
    assert model.config._attn_implementation == CPU_ATTENTION
    calls = []
    original = cpu_training.dropout_cpu
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_training, "dropout_cpu", lambda hidden, p: calls.append(p) or original(hidden, p))
        logits = model(**PADDED).logits
    assert calls == [1e-7, 1e-7]  # one explicit attention a layer
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    for grad, expected_grad in zip((p.grad for p in model.parameters()), expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_cpu_attention_drops_probabilities_in_training_only():
    model = _tiny_bert(0.5)
    reference = model.eval()(**PADDED).logits
    assert use_cpu_attention(model) is True
    assert torch.equal(model(**PADDED).logits, reference)  # inference: transformers' SDPA, untouched
    model.train()
    torch.manual_seed(8)
    first = model(**PADDED).logits
    torch.manual_seed(8)
    again = model(**PADDED).logits
    torch.manual_seed(9)
    other = model(**PADDED).logits
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.allclose(first, reference)


def test_cpu_attention_leaves_other_attention_implementations_alone(tmp_path):
    model = _tiny_bert(0.1, attn_implementation="eager")
    assert use_cpu_attention(model) is False
    assert model.config._attn_implementation == "eager"
    model = _tiny_bert(0.1)
    use_cpu_training_settings(model)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    model.save_pretrained(str(tmp_path))  # the saved config loads anywhere: no nerlib attention in it
    with open(tmp_path / "config.json", encoding="utf-8") as handle:
        assert CPU_ATTENTION not in handle.read()
