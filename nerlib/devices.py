"""Where and how a run computes: the device, mixed precision, TF32, threads and seeding."""

from __future__ import annotations

import contextlib
import logging
import random
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


# NVIDIA GPUs compute bf16 natively from compute capability 8.0 (Ampere) on; TF32 tensor cores too.
NATIVE_BF16_CAPABILITY = (8, 0)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of `device` itself (not of the current device), None on a CPU."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def _gpu_description(device: torch.device, capability: tuple[int, int]) -> str:
    return f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})"


def choose_autocast_dtype(device_type: str, amp: bool, amp_dtype: str = "auto",
                          capability: tuple[int, int] | None = None, cpu_native_bf16: bool = False,
                          device_label: str = "this GPU") -> torch.dtype | None:
    """The autocast dtype for `--amp` from what is known of the device: a pure function.

    `torch.cuda.is_bf16_supported()` is not asked: it counts emulated bf16 (a V100 or T4 would
    pick slow emulated bf16 over fp16) and looks at the current device, not the run's.

    Args:
        device_type: "cuda" or "cpu".
        amp: `--amp`; False means fp32.
        amp_dtype: `--amp-dtype`: auto, bf16 or fp16.
        capability: the CUDA device's compute capability, e.g. (8, 0); ignored on a CPU.
        cpu_native_bf16: the CPU computes bf16 in hardware (AMX or AVX512-BF16).
        device_label: names the GPU in the error message.

    Returns:
        torch.bfloat16, torch.float16, or None for fp32.

    Raises:
        ConfigError: bf16 asked for on a GPU without native bf16, or fp16 on a CPU.
    """
    if not amp:
        return None
    if device_type == "cuda":
        native_bf16 = capability is not None and tuple(capability) >= NATIVE_BF16_CAPABILITY
        if amp_dtype == "fp16":
            return torch.float16
        if amp_dtype == "bf16" and not native_bf16:
            raise ConfigError(f"--amp-dtype bf16: {device_label} has no native bf16 (it needs compute capability 8.0, "
                              f"Ampere or later); use --amp-dtype fp16")
        return torch.bfloat16 if native_bf16 else torch.float16
    if amp_dtype == "fp16":
        raise ConfigError("--amp-dtype fp16 needs CUDA; on a CPU use bf16")
    if amp_dtype == "bf16" or cpu_native_bf16:
        if not cpu_native_bf16:
            logger.warning("this CPU has no native bf16 (AMX or AVX512-BF16): bf16 autocast is emulated and may be slower than fp32")
        return torch.bfloat16
    logger.warning("--amp: this CPU has no native bf16 (AMX or AVX512-BF16), so training stays in fp32; "
                   "pass --amp-dtype bf16 to force bf16 autocast")
    return None


def resolve_precision(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Precision:
    """Choose the autocast dtype for `--amp` on this device.

    `auto` means bf16 where the device computes it natively (GPUs of compute capability 8.0 and
    later, CPUs with AMX or AVX512-BF16), fp16 on older GPUs, and fp32 on CPUs without native bf16
    (where bf16 would be emulated and slower than fp32). An explicit `bf16` or `fp16` is honoured
    where it can run. The GPU asked is the run's own device (see `choose_autocast_dtype`).
    """
    capability = device_capability(device) if amp else None
    label = _gpu_description(device, capability) if capability else "this GPU"
    native_cpu = amp and device.type == "cpu" and cpu_has_native_bf16()
    return Precision(device, choose_autocast_dtype(device.type, amp, amp_dtype, capability, native_cpu, label))


@contextlib.contextmanager
def fp32_matmul_precision(device: torch.device, tf32: bool):
    """Let fp32 matmuls use TF32 tensor cores on a CUDA run (`tf32`), or keep them in full fp32.

    TF32 keeps fp32's range with a 10-bit mantissa in the matmul inputs and accumulates in fp32;
    on Ampere and later it multiplies fp32 matmul throughput several times, which plain fp32
    training otherwise leaves unused. `torch.set_float32_matmul_precision` is the setting used:
    in torch 2.9+ it also sets the newer `torch.backends.cuda.matmul.fp32_precision`, and unlike
    setting only the newer one it leaves `torch.backends.cuda.matmul.allow_tf32` readable (torch
    raises on reading it after the two APIs were mixed). The setting is process-wide, so the
    previous one is restored on leaving. Nothing changes on a CPU.

    Yields:
        True when fp32 matmuls run in TF32 on this device, else False.
    """
    if device.type != "cuda":
        yield False
        return
    capability = device_capability(device)
    applies = tuple(capability) >= NATIVE_BF16_CAPABILITY
    gpu = _gpu_description(device, capability)
    if not tf32:
        logger.info("TF32 off (--no-tf32): fp32 matmuls in full fp32 on %s", gpu)
    elif applies:
        logger.info("TF32 on for fp32 matmuls on %s (--no-tf32 turns it off)", gpu)
    else:
        logger.info("TF32: %s has no TF32 tensor cores (compute capability 8.0 and later have them)", gpu)
    try:
        previous = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed torch's old and new TF32 settings: nothing to restore to
        previous = None
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield tf32 and applies
    finally:
        if previous is not None:
            torch.set_float32_matmul_precision(previous)


def peak_gpu_memory_mib(device: torch.device) -> float | None:
    """The most memory tensors held on a CUDA `device` since the process began or its peak was reset; None on a CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def pad_multiple(device: torch.device) -> int:
    """The multiple that batches are padded to on `device`.

    8 on CUDA, so that fp16/bf16 matmuls use tensor cores; 1 on CPUs, where every padded
    position is wasted work (rounding to 8 adds tokens on MultiNERD's short
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
