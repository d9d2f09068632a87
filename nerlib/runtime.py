"""Devices, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU.

    Raises:
        ConfigError: CUDA asked for but not available, or an unknown device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class Precision:
    """How a run computes: the autocast dtype (None for fp32) and whether a GradScaler is used."""

    device: torch.device
    dtype: torch.dtype | None

    @property
    def uses_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        return self.dtype is torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.uses_scaler)


def resolve_precision(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Precision:
    """Choose the autocast dtype for `--amp` on this device.

    `auto` means bf16 where the device computes it natively (Ampere+ GPUs, CPUs with AMX or
    AVX512-BF16), fp16 on older GPUs, and fp32 on CPUs without native bf16 (where bf16 would be
    emulated and slower than fp32). An explicit `bf16` or `fp16` is honoured where it can run.
    """
    if not amp:
        return Precision(device, None)
    if device.type == "cuda":
        if amp_dtype == "fp16":
            return Precision(device, torch.float16)
        if torch.cuda.is_bf16_supported():
            return Precision(device, torch.bfloat16)
        if amp_dtype == "bf16":
            raise ConfigError(f"--amp-dtype bf16: {torch.cuda.get_device_name(device)} does not support bf16")
        return Precision(device, torch.float16)
    if amp_dtype == "fp16":
        raise ConfigError("--amp-dtype fp16 needs CUDA; on a CPU use bf16")
    if amp_dtype == "bf16" or cpu_has_native_bf16():
        if not cpu_has_native_bf16():
            logger.warning("this CPU has no native bf16 (AMX or AVX512-BF16): bf16 autocast is emulated and may be slower than fp32")
        return Precision(device, torch.bfloat16)
    logger.warning("--amp: this CPU has no native bf16 (AMX or AVX512-BF16), so training stays in fp32; "
                   "pass --amp-dtype bf16 to force bf16 autocast")
    return Precision(device, None)


def pad_multiple(device: torch.device) -> int:
    """The multiple that batches are padded to on `device`.

    8 on CUDA, so that fp16/bf16 matmuls use tensor cores; 1 on CPUs, where every padded
    position is wasted work (rounding to 8 costs about 10% more tokens on MultiNERD's short
    sentences).
    """
    return 8 if device.type == "cuda" else 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)


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
    free, so every step pays page faults that zero that memory again (6-10% of a MiniLM
    step on two cores). Raising the mmap and trim thresholds keeps such blocks in the heap for
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


def offline_hint() -> str:
    return "" if os.environ.get("HF_HUB_OFFLINE") else " (set HF_HUB_OFFLINE=1 to skip hub look-ups)"
