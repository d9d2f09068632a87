"""Device-dependent choices of the runtime."""

import torch

from nerlib.runtime import pad_multiple


def test_padding_multiple_is_8_on_cuda_and_1_on_cpus():
    assert pad_multiple(torch.device("cpu")) == 1
    assert pad_multiple(torch.device("cuda:0")) == 8
