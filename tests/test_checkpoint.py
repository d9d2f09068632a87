"""CUDA RNG state in checkpoints: only the run's own GPU, restored into the GPU the run resumes on.

No GPU is needed: torch.cuda's RNG functions are replaced by fakes that keep one generator state
per device index and refuse the all-GPU variants.
"""

import os

import pytest
import torch

from nerlib import checkpoint as ckpt


class FakeCudaGenerators:
    """Three visible GPUs, each with its own generator state (a distinct byte pattern)."""

    def __init__(self, count: int = 3):
        self.states = {index: torch.full((16,), 10 + index, dtype=torch.uint8) for index in range(count)}
        self.read, self.written = [], []

    def index(self, device) -> int:
        device = torch.device(device)
        return 0 if device.index is None else device.index  # the current device is cuda:0

    def get_rng_state(self, device="cuda"):
        self.read.append(torch.device(device))
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.written.append(torch.device(device))
        self.states[self.index(device)] = state.clone()


@pytest.fixture
def cuda_rng(monkeypatch):
    fake = FakeCudaGenerators()

    def refuse(*args, **kwargs):
        raise AssertionError("every visible GPU's RNG state: not the run's own")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    return fake


def test_only_the_runs_own_gpu_state_is_saved(cuda_rng, tmp_path):
    state = ckpt.rng_state(torch.device("cuda", 1))
    assert cuda_rng.read == [torch.device("cuda", 1)]
    assert torch.equal(state["cuda"], torch.full((16,), 11, dtype=torch.uint8))
    # It survives the weights-only round trip a checkpoint makes.
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    assert torch.equal(loaded["cuda"], state["cuda"])


def test_a_cpu_run_saves_no_cuda_state_even_where_gpus_are_visible(cuda_rng):
    assert "cuda" not in ckpt.rng_state(torch.device("cpu")) and "cuda" not in ckpt.rng_state()
    assert cuda_rng.read == []


def test_the_state_goes_into_the_gpu_the_run_resumes_on(cuda_rng):
    saved = ckpt.rng_state(torch.device("cuda", 2))
    cuda_rng.states[2] = torch.zeros(16, dtype=torch.uint8)  # the generator moved on after the save
    ckpt.set_rng_state(saved, torch.device("cuda", 0))  # resumed on another GPU (or with fewer visible)
    assert cuda_rng.written == [torch.device("cuda", 0)]
    assert torch.equal(cuda_rng.states[0], torch.full((16,), 12, dtype=torch.uint8))
    assert torch.equal(cuda_rng.states[2], torch.zeros(16, dtype=torch.uint8))  # no other GPU is touched


def test_the_cpu_generators_are_restored_too(cuda_rng):
    saved = ckpt.rng_state(torch.device("cuda", 0))
    expected = torch.rand(4)
    ckpt.set_rng_state(saved, torch.device("cuda", 0))
    assert torch.equal(torch.rand(4), expected)


def test_a_cuda_state_is_ignored_by_a_run_resumed_on_the_cpu(cuda_rng):
    saved = ckpt.rng_state(torch.device("cuda", 1))
    ckpt.set_rng_state(saved, torch.device("cpu"))
    assert cuda_rng.written == []


def old_format(count: int) -> dict:
    """rng.pt as earlier versions wrote it: every visible GPU's state in a list (get_rng_state_all)."""
    state = ckpt.rng_state()
    state["cuda"] = [torch.full((16,), 50 + index, dtype=torch.uint8) for index in range(count)]
    return state


def test_an_earlier_checkpoint_with_every_gpus_state_restores_the_runs_entry(cuda_rng):
    ckpt.set_rng_state(old_format(2), torch.device("cuda", 1))
    assert cuda_rng.written == [torch.device("cuda", 1)]
    assert torch.equal(cuda_rng.states[1], torch.full((16,), 51, dtype=torch.uint8))
    ckpt.set_rng_state(old_format(2), torch.device("cuda"))  # no index: the current device, cuda:0
    assert torch.equal(cuda_rng.states[0], torch.full((16,), 50, dtype=torch.uint8))


def test_an_earlier_checkpoint_without_the_runs_gpu_is_refused_in_one_line(cuda_rng):
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.set_rng_state(old_format(2), torch.device("cuda", 2), source="run/checkpoints/checkpoint-00000007/rng.pt")
    message = str(caught.value)
    assert "\n" not in message and cuda_rng.written == []
    assert message.startswith("run/checkpoints/checkpoint-00000007/rng.pt: holds the CUDA RNG states of 2 GPU(s)")
    assert "none for cuda:2" in message


def test_save_checkpoint_never_asks_for_every_gpus_state(cuda_rng, tmp_path):
    model = torch.nn.Linear(3, 2)  # on the CPU: no CUDA state belongs in its checkpoint
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = {"epoch": 1, "batches_done": 0, "global_step": 1, "best_f1": -1.0, "best_epoch": 0, "history": [],
             "config": {}, "fingerprint": {}}
    path = ckpt.save_checkpoint(str(tmp_path), 1, model, optimizer, scheduler, scaler, state)
    assert "cuda" not in torch.load(os.path.join(path, "rng.pt"), weights_only=True)
    assert cuda_rng.read == []
