"""Device-dependent choices of the devices module: padding, precision by device, TF32.

No GPU is needed: the CUDA branches are driven by the facts they read (compute capability,
device name), faked where torch would ask a real GPU.
"""

import logging

import pytest
import torch

from nerlib.config import TrainConfig, add_config_arguments, config_from_args
from nerlib.errors import ConfigError
from nerlib.devices import (choose_autocast_dtype, fp32_matmul_precision, pad_multiple, peak_gpu_memory_mib,
                            resolve_precision)

BF16, FP16 = torch.bfloat16, torch.float16


def test_padding_multiple_is_8_on_cuda_and_1_on_cpus():
    assert pad_multiple(torch.device("cpu")) == 1
    assert pad_multiple(torch.device("cuda:0")) == 8


# Volta and Turing have no native bf16 (torch.cuda.is_bf16_supported() still says yes: emulated);
# Ampere (A100 8.0, RTX 30xx/A10 8.6), Ada (8.9) and Hopper (9.0) have it.
@pytest.mark.parametrize("capability, expected", [
    ((6, 1), FP16), ((7, 0), FP16), ((7, 5), FP16), ((8, 0), BF16), ((8, 6), BF16), ((8, 9), BF16), ((9, 0), BF16),
])
def test_amp_auto_on_cuda_is_bf16_from_compute_capability_8_and_fp16_before(capability, expected):
    assert choose_autocast_dtype("cuda", True, "auto", capability) is expected


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (9, 0)])
def test_amp_fp16_is_honoured_on_every_gpu(capability):
    assert choose_autocast_dtype("cuda", True, "fp16", capability) is FP16


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
def test_amp_bf16_runs_on_gpus_with_native_bf16(capability):
    assert choose_autocast_dtype("cuda", True, "bf16", capability) is BF16


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_amp_bf16_on_a_gpu_without_native_bf16_is_a_one_line_error(capability):
    with pytest.raises(ConfigError) as caught:
        choose_autocast_dtype("cuda", True, "bf16", capability, device_label="Tesla T4 (compute capability 7.5)")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--amp-dtype bf16: Tesla T4 (compute capability 7.5) has no native bf16")
    assert "--amp-dtype fp16" in message


@pytest.mark.parametrize("device_type, capability", [("cuda", (9, 0)), ("cuda", (7, 0)), ("cpu", None)])
@pytest.mark.parametrize("amp_dtype", ["auto", "bf16", "fp16"])
def test_without_amp_every_device_trains_in_fp32(device_type, capability, amp_dtype):
    assert choose_autocast_dtype(device_type, False, amp_dtype, capability, cpu_native_bf16=True) is None


def test_cpus_use_bf16_only_where_native_or_forced(caplog):
    assert choose_autocast_dtype("cpu", True, "auto", cpu_native_bf16=True) is BF16
    with caplog.at_level(logging.WARNING, logger="nerlib.devices"):
        assert choose_autocast_dtype("cpu", True, "auto", cpu_native_bf16=False) is None
        assert choose_autocast_dtype("cpu", True, "bf16", cpu_native_bf16=False) is BF16
    assert "training stays in fp32" in caplog.text and "emulated" in caplog.text
    with pytest.raises(ConfigError, match="--amp-dtype fp16 needs CUDA"):
        choose_autocast_dtype("cpu", True, "fp16")


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """cuda:0 a V100 (7.0), cuda:1 an A100 (8.0); torch's own bf16 check must not be consulted."""
    gpus = {0: ("Tesla V100-SXM2-16GB", (7, 0)), 1: ("NVIDIA A100-SXM4-40GB", (8, 0))}
    asked = []

    def index(device):
        device = torch.device(device)
        return 0 if device.index is None else device.index  # the current device is cuda:0 here

    def capability(device=None):
        asked.append(torch.device(device))
        return gpus[index(device)][1]

    def emulated(*args, **kwargs):
        raise AssertionError("torch.cuda.is_bf16_supported counts emulated bf16 and looks at the current device")

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpus[index(device)][0])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated)
    return asked


def test_resolve_precision_asks_the_runs_own_gpu(two_fake_gpus):
    assert resolve_precision(torch.device("cuda", 1), True).dtype is BF16
    assert resolve_precision(torch.device("cuda", 0), True).dtype is FP16
    assert two_fake_gpus == [torch.device("cuda", 1), torch.device("cuda", 0)]
    fp16 = resolve_precision(torch.device("cuda", 0), True, "fp16")
    assert fp16.uses_scaler and fp16.name == "fp16"
    assert not resolve_precision(torch.device("cuda", 1), True).uses_scaler
    with pytest.raises(ConfigError, match=r"^--amp-dtype bf16: Tesla V100-SXM2-16GB \(compute capability 7\.0\) "
                                          r"has no native bf16"):
        resolve_precision(torch.device("cuda", 0), True, "bf16")


@pytest.fixture
def matmul_precision_restored():
    before = torch.get_float32_matmul_precision()
    yield before
    torch.set_float32_matmul_precision(before)


def test_tf32_is_on_by_default_on_an_ampere_gpu_and_restored_after(two_fake_gpus, matmul_precision_restored, caplog):
    assert TrainConfig().tf32 is True
    with caplog.at_level(logging.INFO, logger="nerlib.devices"):
        with fp32_matmul_precision(torch.device("cuda", 1), TrainConfig().tf32) as tf32:
            assert tf32 is True
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
            assert torch.backends.cuda.matmul.allow_tf32 is True  # the legacy flag agrees (and is readable)
    assert "TF32 on for fp32 matmuls on NVIDIA A100-SXM4-40GB (compute capability 8.0)" in caplog.text
    assert torch.get_float32_matmul_precision() == matmul_precision_restored


def test_no_tf32_keeps_fp32_matmuls_in_full_fp32(two_fake_gpus, matmul_precision_restored, caplog):
    torch.set_float32_matmul_precision("high")  # even where the caller had turned TF32 on
    with caplog.at_level(logging.INFO, logger="nerlib.devices"):
        with fp32_matmul_precision(torch.device("cuda", 1), False) as tf32:
            assert tf32 is False
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cuda.matmul.allow_tf32 is False
    assert "TF32 off (--no-tf32)" in caplog.text
    assert torch.get_float32_matmul_precision() == "high"


def test_tf32_is_reported_absent_before_ampere_and_untouched_on_cpus(two_fake_gpus, matmul_precision_restored, caplog):
    with caplog.at_level(logging.INFO, logger="nerlib.devices"):
        with fp32_matmul_precision(torch.device("cuda", 0), True) as tf32:
            assert tf32 is False
    assert "Tesla V100-SXM2-16GB (compute capability 7.0) has no TF32 tensor cores" in caplog.text
    with fp32_matmul_precision(torch.device("cpu"), True) as tf32:
        assert tf32 is False
        assert torch.get_float32_matmul_precision() == matmul_precision_restored


def test_no_tf32_flag():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_args(parser.parse_args([])).tf32 is True
    assert config_from_args(parser.parse_args(["--no-tf32"])).tf32 is False


def test_peak_gpu_memory_is_read_from_the_runs_own_gpu_and_none_on_cpus(monkeypatch):
    peaks = {0: 5 * 2**20, 1: 3 * 2**29}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peaks[torch.device(device).index])
    assert peak_gpu_memory_mib(torch.device("cuda", 1)) == 1536.0
    assert peak_gpu_memory_mib(torch.device("cuda", 0)) == 5.0
    assert peak_gpu_memory_mib(torch.device("cpu")) is None
