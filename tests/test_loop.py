"""The training step: fp32 master weights, host reads a step, fp16 steps the scaler skips, resume order.

fp16 autocast with loss scaling runs on the CPU (torch supports it there), so the fp16 paths of
the loop are exercised without a GPU.
"""

import json
import os
import shutil
import sys

import pytest
import torch

import nerlib
import nerlib.checkpoint
import nerlib.loop as loop
from nerlib.checkpoint import CheckpointError
from nerlib.config import TrainConfig
from nerlib.labels import multinerd_label_set
from nerlib.modeling import load_model_for_training
from nerlib.devices import Precision

from conftest import build_tiny_encoder, write_hub_folder

NERLIB_DIR = os.path.dirname(os.path.abspath(nerlib.__file__))
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def half_saved_encoder(request, tmp_path_factory):
    """The tiny encoder saved in half precision, as many hub checkpoints are."""
    from transformers import BertModel

    folder = build_tiny_encoder(str(tmp_path_factory.mktemp("half-encoder")))
    BertModel.from_pretrained(folder).to(request.param).save_pretrained(folder)
    return folder, request.param


def test_a_half_precision_checkpoint_loads_with_fp32_weights_for_training(half_saved_encoder):
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    folder, saved_dtype = half_saved_encoder
    # The trap: transformers 5 loads such a folder in its saved dtype by default.
    assert {p.dtype for p in AutoModelForTokenClassification.from_pretrained(folder, num_labels=3).parameters()} == {
        saved_dtype}
    model = load_model_for_training(folder, multinerd_label_set("five"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The saved values, widened exactly.
    saved = load_file(os.path.join(folder, "model.safetensors"))
    assert saved["embeddings.word_embeddings.weight"].dtype == saved_dtype
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"].float())


def fp16_on_the_cpu(monkeypatch):
    """The loop's precision forced to fp16 autocast with a GradScaler, on the CPU."""
    monkeypatch.setattr(loop, "resolve_precision", lambda device, amp, dtype: Precision(device, torch.float16))


def test_fp16_autocast_with_clipping_trains_a_half_saved_model(half_saved_encoder, hub_folder, tmp_path, monkeypatch):
    # Before the fix: "Attempting to unscale FP16 gradients" from the scaler (fp16), or updates
    # rounded into bf16 weights.
    from safetensors.torch import load_file

    folder, _ = half_saved_encoder
    fp16_on_the_cpu(monkeypatch)
    config = TrainConfig(labels="five", data=hub_folder, model=folder, output_dir=str(tmp_path / "out"), epochs=1,
                         batch_size=8, lr=5e-3, max_length=16, max_train_samples=32, max_eval_samples=8,
                         progress=False, amp=True, max_grad_norm=1.0)
    metrics = nerlib.train(config)
    assert metrics["precision_mode"] == "fp16" and metrics["skipped_steps"] < 4
    trained = load_file(os.path.join(config.output_dir, "model.safetensors"))
    initial = load_file(os.path.join(folder, "model.safetensors"))
    assert trained["bert.embeddings.word_embeddings.weight"].dtype == torch.float32
    assert not torch.equal(trained["bert.encoder.layer.0.attention.self.query.weight"],
                           initial["encoder.layer.0.attention.self.query.weight"].float())


@pytest.fixture
def train_only_folder(tmp_path):
    """Training sentences and no val or test split: the run has no evaluation, only steps."""
    root = write_hub_folder(tmp_path / "train-only", sizes=(48, 1, 1), seed=2)
    shutil.rmtree(os.path.join(root, "val"))
    shutil.rmtree(os.path.join(root, "test"))
    return root


HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


def count_host_reads(monkeypatch) -> list:
    """Record every read of a tensor's value onto the host made by nerlib, or by torch on its behalf.

    A read counts when the first caller outside torch is a nerlib module (so a `get_scale()` called
    by the loop counts, and the model's own forward does not).
    """
    reads = []

    def counted(name, original):
        def read(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(NERLIB_DIR):
                reads.append(f"{name} at {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} "
                             f"in {frame.f_code.co_name}")
            return original(tensor, *args, **kwargs)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    return reads


@pytest.mark.parametrize("precision, grad_accum", [("fp32", 3), ("fp16", 1)])
def test_at_most_one_host_read_per_optimizer_step(precision, grad_accum, train_only_folder, tiny_encoder, tmp_path,
                                                  monkeypatch):
    if precision == "fp16":
        fp16_on_the_cpu(monkeypatch)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    config = TrainConfig(labels="five", data=train_only_folder, model=tiny_encoder, output_dir=str(tmp_path / "out"),
                         epochs=2, batch_size=4, grad_accum=grad_accum, max_length=16, progress=False,
                         amp=precision == "fp16")
    reads = count_host_reads(monkeypatch)
    metrics = nerlib.train(config)
    steps = len(metrics["train_loss_by_step"]) + metrics["skipped_steps"]
    assert steps == 2 * -(-12 // grad_accum)  # 48 sentences / batch 4 = 12 batches an epoch, 2 epochs
    # Not a step's: writing a checkpoint (here at the end of each epoch) reads the scaler's scale,
    # and the weights are checked for NaN before each checkpoint and at each epoch's end.
    in_steps = [read for read in reads if " at checkpoint.py:" not in read and not read.endswith(" in _check_finite_weights")]
    assert 0 < len(in_steps) <= steps, in_steps
    # Set for a script that calls nerlib.train() without going through train.py.
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert metrics["tf32"] is False and metrics["peak_gpu_memory_mib"] is None  # CUDA-only figures, on a CPU


def overflow_at(model, nan_loss_forward: int, inf_gradient_backward: int):
    """A NaN loss at one forward, and at one backward an infinite gradient under a finite loss."""
    forward = model.forward
    calls = {"forward": 0, "backward": 0}

    def patched(*args, **kwargs):
        calls["forward"] += 1
        output = forward(*args, **kwargs)
        if calls["forward"] == nan_loss_forward:
            output.logits = output.logits * float("nan")
        return output

    def hook(gradient):
        calls["backward"] += 1
        return gradient * float("inf") if calls["backward"] == inf_gradient_backward else gradient

    model.forward = patched
    model.classifier.weight.register_hook(hook)
    return model


def test_skipped_fp16_steps_are_counted_and_kept_out_of_the_loss(train_only_folder, tiny_encoder, tmp_path,
                                                                 monkeypatch):
    fp16_on_the_cpu(monkeypatch)
    original = loop.load_model_for_training
    monkeypatch.setattr(loop, "load_model_for_training", lambda *a, **k: overflow_at(original(*a, **k), 2, 4))
    config = TrainConfig(labels="five", data=train_only_folder, model=tiny_encoder, output_dir=str(tmp_path / "out"),
                         epochs=1, batch_size=8, lr=5e-3, max_length=16, progress=False, amp=True)
    metrics = nerlib.train(config)

    assert metrics["skipped_steps"] == 2
    recorded = dict(metrics["train_loss_by_step"])
    assert sorted(recorded) == [1, 3, 5, 6]  # 48 sentences / batch 8; steps 2 and 4 were skipped
    epoch_loss = metrics["epochs"][0]["train_loss"]
    # A word-weighted mean of the recorded steps' losses lies between the smallest and the largest.
    assert min(recorded.values()) <= epoch_loss <= max(recorded.values())

    def no_constants(name):
        raise AssertionError(f"metrics.json holds {name}")

    with open(os.path.join(config.output_dir, "metrics.json"), encoding="utf-8") as handle:
        json.load(handle, parse_constant=no_constants)
    with open(os.path.join(config.output_dir, "train_log.jsonl"), encoding="utf-8") as handle:
        logged = [json.loads(line, parse_constant=no_constants) for line in handle]
    assert [record["step"] for record in logged if record["event"] == "step"] == [1, 3, 5, 6]


def test_a_changed_configuration_is_refused_before_any_state_is_restored(train_only_folder, tiny_encoder, tmp_path,
                                                                         monkeypatch):
    config = TrainConfig(labels="five", data=train_only_folder, model=tiny_encoder, output_dir=str(tmp_path / "out"),
                         epochs=1, batch_size=8, max_length=16, progress=False, max_train_samples=16)
    nerlib.train(config)

    def restored(*args, **kwargs):
        raise AssertionError("a state was restored before the configuration was compared")

    # Reading the checkpoint (to check it is whole) may come first; putting its states into the run may not.
    monkeypatch.setattr(nerlib.checkpoint, "set_rng_state", restored)
    # Reading and checking every file is allowed (and done first); loading weights into the model is not.
    monkeypatch.setattr(nerlib.checkpoint, "load_safetensors", restored)
    changed = TrainConfig(**{**config.to_dict(), "lr": 1e-3, "resume": True})
    with pytest.raises(CheckpointError, match=r"refusing to resume .*lr: 2e-05 -> 0\.001"):
        nerlib.train(changed)


def test_metrics_report_the_time_of_each_phase(hub_folder, tiny_encoder, tmp_path):
    """startup, training, validation and test: each measured once, inside the run's wall time."""
    config = TrainConfig(labels="five", data=hub_folder, model=tiny_encoder, output_dir=str(tmp_path / "out"),
                         epochs=2, batch_size=8, lr=5e-3, max_length=32, max_train_samples=24, max_eval_samples=8,
                         progress=False)
    metrics = nerlib.train(config)
    wall, cpu = metrics["phase_seconds"], metrics["phase_cpu_seconds"]
    assert set(wall) == set(cpu) == {"startup", "training", "validation", "test"}
    assert all(seconds > 0 for seconds in [*wall.values(), *cpu.values()])
    # Training is the optimizer steps, as train_seconds counts them; test is the test pass alone.
    assert wall["training"] == pytest.approx(metrics["train_seconds"], rel=1e-9)
    assert wall["test"] == metrics["test_seconds"]
    assert sum(wall.values()) < metrics["wall_time_s"]
