"""What CPU training changes: a cheaper dropout, an attention that uses it, and glibc's memory reuse.

The dropout is the one framework kernel the training profile showed to be slow.

torch's CPU dropout draws one Bernoulli sample per element from a serial generator: about 10 ns
an element whatever the thread count, a visible share of a CPU training step (docs/performance.md
has the profile). Here the
random numbers are drawn as 64-bit integers in bulk and each is cut into three 16-bit draws, which
costs a fraction of that. The mathematics is dropout's: every element is kept independently with
probability `1 - p` (rounded to a multiple of 1/65536) and scaled by the exact inverse of that
probability, so each element's expectation is unchanged. The draws come from torch's default
generator, so seeding, checkpointed RNG state and resuming cover them.

The attention probabilities are dropped out inside `scaled_dot_product_attention`, out of reach
of a module swap, so CPU training also gets an attention function (`cpu_attention`) that computes
the same attention explicitly with this dropout; everywhere else it hands over to transformers'
SDPA attention.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

import torch

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024   # glibc's largest allowed value on 64-bit machines
_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library where it is glibc on Linux (it has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # musl and others lack them: AttributeError
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc reuse freed tensor memory instead of returning it to the kernel at every free.

    A CPU training step allocates and frees hundreds of activation and gradient tensors of
    0.1-30 MB. By default glibc serves each one over 128 KiB with a fresh mmap and unmaps it on
    free, so every step pays page faults that zero that memory again (docs/performance.md
    has the share of a step). Raising the mmap and trim thresholds keeps such blocks in the heap for
    the next step; `release_freed_memory` hands them back when the steps are over.
    Process-wide; a no-op where the C library is not glibc.

    Returns:
        True where the thresholds were set.
    """
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success.
    done = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and done


def release_freed_memory() -> None:
    """Return the free memory glibc holds to the kernel (after the training steps of an epoch)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_DRAW_RANGE = 1 << 16   # each draw is a 16-bit integer
_DRAWS_PER_WORD = 3     # torch's 64-bit draws have 63 random bits: the low 48 give three draws


def _keep_mask(count: int, keep_below: int) -> torch.Tensor:
    """`count` independent booleans, each true with probability keep_below / 65536.

    Draw i of a word is `((word >> 16 i) & 0xFFFF) ^ 0x8000`: the same booleans from the same
    seed whatever the machine's byte order.
    """
    words = torch.empty((count + _DRAWS_PER_WORD - 1) // _DRAWS_PER_WORD, dtype=torch.int64).random_()
    half = _DRAW_RANGE // 2
    if sys.byteorder == "little":
        # The low 48 bits of each word are its first three int16s in memory, compared in place:
        # as an int16, a 16-bit draw u reads (u ^ 0x8000) - 32768.
        draws = words.view(torch.int16).view(-1, 4)[:, :_DRAWS_PER_WORD]
        return (draws < keep_below - half).view(-1)[:count]
    low = _DRAW_RANGE - 1
    draws = torch.stack([(words >> shift) & low for shift in (0, 16, 32)], dim=1) ^ half
    return (draws < keep_below).view(-1)[:count]


def dropout_cpu(hidden: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with probability `p` (rounded to a multiple of 1/65536), differentiable.

    Args:
        hidden: a CPU tensor of any shape and floating dtype.
        p: the probability of zeroing an element, in [0, 1].

    Returns:
        `hidden` with each element zeroed with probability p and the others scaled by 1/(1 - p).
    """
    keep_below = round((1.0 - p) * _DRAW_RANGE)
    if keep_below >= _DRAW_RANGE:
        return hidden
    if keep_below <= 0:
        return hidden * 0.0
    noise = _keep_mask(hidden.numel(), keep_below).to(hidden.dtype).mul_(_DRAW_RANGE / keep_below)
    return hidden * noise.view_as(hidden)


class CpuDropout(torch.nn.Dropout):
    """`nn.Dropout` that uses `dropout_cpu` when training on a CPU, and torch's dropout elsewhere."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0 and hidden.device.type == "cpu" and not self.inplace:
            return dropout_cpu(hidden, self.p)
        return super().forward(hidden)


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Make every plain `nn.Dropout` of `model` a `CpuDropout` (same p, no parameters, in place).

    Returns:
        How many dropout modules were changed.
    """
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = CpuDropout
            changed += 1
    return changed


CPU_ATTENTION = "nerlib_cpu_sdpa"  # the name it is registered under in transformers' attention interfaces


def cpu_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention for transformers' `AttentionInterface`: SDPA's mathematics with `dropout_cpu`.

    Used only when training on a CPU with attention dropout in a bidirectional encoder; anything
    else (inference, CUDA, causal attention) goes to transformers' own SDPA function.

    Args:
        query, key, value: (batch, heads, seq, head_dim).
        attention_mask: SDPA's mask, boolean (True: attend) or additive, broadcastable to
            (batch, heads, seq, seq); None when nothing is masked.
        dropout: attention-probability dropout; scaling: the score scale (default 1/sqrt(head_dim)).

    Returns:
        (attention output as (batch, seq, heads, head_dim), None: no weights are returned).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal") or getattr(module, "is_causal", False)
    if not (module.training and dropout > 0 and query.device.type == "cpu") or causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scaling)  # (batch, heads, seq, seq)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probabilities = dropout_cpu(scores.softmax(dim=-1), dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Make a model that uses transformers' SDPA attention use `cpu_attention` instead.

    The function is registered once, with SDPA's attention mask, under `CPU_ATTENTION`; only the
    in-memory model changes (a saved config does not record its attention implementation).

    Returns:
        True where the model was switched; False where it uses another attention (eager, flash, a
        model without transformers' attention interface), which is left as it is.
    """
    try:  # transformers' attention and mask registries (transformers 4.56 and later)
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(CPU_ATTENTION, cpu_attention)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    model.set_attn_implementation(CPU_ATTENTION)
    return config._attn_implementation == CPU_ATTENTION


def use_cpu_training_settings(model: torch.nn.Module) -> None:
    """What CPU training changes, against the costs the step profile showed (docs/performance.md).

    Freed memory kept for reuse (page faults from glibc unmapping freed tensors), and the cheaper
    dropout draws in the dropout modules (`CpuDropout`) and inside the attention (`cpu_attention`).
    """
    keep_freed_memory_for_reuse()
    use_cpu_dropout(model)
    use_cpu_attention(model)
