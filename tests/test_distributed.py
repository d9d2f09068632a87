"""Data-parallel training: batch sharding, sharded evaluation, and a 2-rank torchrun run against one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from conftest import ROOT, write_hub_folder
from nerlib import TrainConfig, train
from nerlib.data import Sentence, load_split
from nerlib.distributed import (
    World, all_reduce_sum, loss_scale, num_shared_batches, setup, shard_batches, teardown, wrap_model,
)
from nerlib.errors import ConfigError
from nerlib.inference import assemble_words, merge_shards, predict_windows, predict_words, shard_windows
from nerlib.features import IGNORE_INDEX, Encoded, encode, length_grouped_batches, shuffled_batches
from nerlib.labels import multinerd_label_set


# --- shard_batches -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_windows, batch_size, world_size", [
    (100, 4, 2), (101, 4, 2), (97, 3, 3), (7, 2, 4), (64, 8, 1), (9, 4, 2),
])
def test_shard_batches_are_disjoint_complete_and_the_same_length_on_every_rank(num_windows, batch_size, world_size):
    lengths = np.random.default_rng(0).integers(3, 40, size=num_windows)
    batches = length_grouped_batches(lengths, batch_size * world_size, seed=7, epoch=1, group_size=3)
    shards = [shard_batches(batches, rank, world_size) for rank in range(world_size)]

    steps = {len(s) for s in shards}
    assert steps == {num_shared_batches(num_windows, batch_size * world_size, world_size)}
    kept = [b for b in batches if len(b) >= world_size]
    for step, batch in enumerate(kept):
        shares = [shards[rank][step] for rank in range(world_size)]
        assert all(len(share) >= 1 for share in shares)  # nobody idles
        assert all(len(share) <= batch_size for share in shares)  # --batch-size is per device
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())  # disjoint and complete
    dropped = [b for b in batches if len(b) < world_size]
    assert len(dropped) <= 1 and sum(len(b) for b in dropped) < world_size  # only a short tail is lost
    used = np.concatenate([np.concatenate(s) for s in shards if s])
    assert len(used) == len(set(used.tolist())) == num_windows - sum(len(b) for b in dropped)


def test_shard_batches_drops_a_tail_smaller_than_the_world():
    batches = [np.array([5, 1, 9, 3]), np.array([8]), np.array([0, 2, 4, 6])]
    assert [s.tolist() for s in shard_batches(batches, 0, 2)] == [[5, 9], [0, 4]]
    assert [s.tolist() for s in shard_batches(batches, 1, 2)] == [[1, 3], [2, 6]]
    assert [s.tolist() for s in shard_batches(batches, 0, 1)] == [[5, 1, 9, 3], [8], [0, 2, 4, 6]]
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        shard_batches(batches, 2, 2)


def test_one_process_with_batch_2b_sees_the_union_of_two_ranks_with_batch_b():
    # The order depends on the global batch and the seed only: rank r's step k is part of the
    # single process's step k.
    single = shuffled_batches(50, 8, seed=3, epoch=2)
    ranks = [shard_batches(shuffled_batches(50, 4 * 2, seed=3, epoch=2), rank, 2) for rank in range(2)]
    for step, batch in enumerate(single):
        assert sorted(np.concatenate([ranks[0][step], ranks[1][step]]).tolist()) == sorted(batch.tolist())


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = setup("cpu")
    assert (world.rank, world.size, world.is_main, world.owns_group) == (0, 1, True, False)
    assert world.device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, world) is model
    assert all_reduce_sum(3.5, world) == 3.5
    assert loss_scale(40, world) == 1 / 40
    assert loss_scale(40, World(rank=1, size=4)) == 4 / 40


def test_a_fixed_cuda_device_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="under torchrun every rank uses cuda:LOCAL_RANK"):
        setup("cuda:1")
    assert not torch.distributed.is_initialized()


# --- sharded evaluation --------------------------------------------------------------------------

@pytest.fixture
def long_sentences():
    """Sentences long enough to be cut into several windows, 13 of them (prime to 2 and 3)."""
    words = ["alice", "saw", "paris", "and", "acme", "near", "oslo", "with", "bob", "the", "fox"]
    tags = ["B-PER", "O", "B-LOC", "O", "B-ORG", "O", "B-LOC", "O", "B-PER", "O", "B-ANIM"]
    return [Sentence(tuple(words[: 2 + i % 10]), tuple(tags[: 2 + i % 10]), "mem", i + 1) for i in range(13)]


def gold_window_predictions(encoded, windows):
    """Stand-in predictions: each window's gold labels, so a mis-assembled sentence shows."""
    return [encoded.labels[w][encoded.labels[w] != IGNORE_INDEX] for w in windows]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_gathered_shards_score_every_word_exactly_once(tiny_tokenizer, long_sentences, world_size):
    encoded = encode(long_sentences, multinerd_label_set("five"), tiny_tokenizer, max_length=6)
    assert len(encoded) > encoded.num_sentences and len(encoded) % world_size != 0
    shards = [shard_windows(encoded, rank, world_size) for rank in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(encoded)))  # disjoint, no padding
    gathered = [(s, np.concatenate(gold_window_predictions(encoded, s))) for s in shards]

    predicted = assemble_words(encoded, *merge_shards(encoded, gathered))

    assert len(predicted) == len(long_sentences)
    for ids, gold in zip(predicted, encoded.gold):
        assert ids.tolist() == gold.tolist()


def test_a_window_gathered_twice_is_an_error(tiny_tokenizer, long_sentences):
    encoded = encode(long_sentences, multinerd_label_set("five"), tiny_tokenizer, max_length=6)
    shards = [shard_windows(encoded, rank, 2) for rank in range(2)]
    shards[1] = np.concatenate([shards[1], shards[0][:1]])  # a "padded" last shard repeating a window
    gathered = [(s, np.concatenate(gold_window_predictions(encoded, s))) for s in shards]
    with pytest.raises(RuntimeError, match="0 words received no prediction and [1-9][0-9]* more than one"):
        assemble_words(encoded, *merge_shards(encoded, gathered))


def test_predicting_shards_equals_predicting_everything(tiny_encoder, tiny_tokenizer, long_sentences):
    from transformers import AutoModelForTokenClassification

    label_set = multinerd_label_set("five")
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_encoder, num_labels=label_set.num_labels)
    encoded = encode(long_sentences, label_set, tiny_tokenizer, max_length=6)
    gathered = []
    for rank in range(3):
        windows = shard_windows(encoded, rank, 3)
        gathered.append((windows, np.concatenate(predict_windows(model, encoded, windows, pad_id=0, batch_size=4)[0])))

    sharded = assemble_words(encoded, *merge_shards(encoded, gathered))
    whole = predict_words(model, encoded, pad_id=0, batch_size=4).label_ids
    assert [s.tolist() for s in sharded] == [w.tolist() for w in whole]


# --- the loss normalisation under DDP ------------------------------------------------------------
# AdamW is nearly blind to the scale of the gradient, so comparing weights after training would
# not catch a wrong normalisation: the gradients themselves are compared here.

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _TinyTagger(torch.nn.Module):
    """A token classifier small enough for spawned ranks to build without transformers."""

    def __init__(self, vocab: int = 30, hidden: int = 16, num_labels: int = 5):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.mix = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, num_labels)

    def forward(self, input_ids, attention_mask):
        hidden = torch.tanh(self.mix(self.embed(input_ids)))  # (batch, seq, hidden)
        context = (hidden * attention_mask[..., None]).sum(1, keepdim=True) / attention_mask.sum(1)[:, None, None]
        return types.SimpleNamespace(logits=self.head(hidden + context))  # (batch, seq, num_labels)


def _gradient_problem():
    """A tiny tagger and one accumulation group of two global batches (8 and 7 windows)."""
    rng = np.random.default_rng(4)
    input_ids, labels = [], []
    for _ in range(15):
        length = int(rng.integers(3, 12))
        input_ids.append(rng.integers(1, 30, size=length))
        # Unequal labelled words per window, as with sub-tokens: the normalisation must count words.
        labels.append(np.where(rng.random(length) < 0.6, rng.integers(0, 5, size=length), IGNORE_INDEX))
    encoded = Encoded(input_ids, labels, np.arange(15), np.zeros(15, dtype=np.int64), np.ones(15, dtype=np.int64),
                      [np.zeros(1, dtype=np.int64)] * 15)
    torch.manual_seed(0)
    return _TinyTagger(), encoded, shuffled_batches(len(encoded), 8, seed=1, epoch=1)


def _group_gradients(model, train_model, encoded, group, world) -> dict[str, torch.Tensor]:
    """The loop's arithmetic for one accumulation group: backward of summed loss x loss_scale."""
    import torch.nn.functional as F

    from nerlib.distributed import gradient_sync
    from nerlib.features import collate

    shares = shard_batches(group, world.rank, world.size)
    words = encoded.words_per_window()
    group_words = int(all_reduce_sum(int(sum(words[b].sum() for b in shares)), world))
    for micro, indices in enumerate(shares):
        batch = collate([encoded.input_ids[i] for i in indices], [encoded.labels[i] for i in indices], pad_id=0)
        with gradient_sync(train_model, sync=micro == len(shares) - 1):
            logits = train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="sum")
            (loss_sum * loss_scale(group_words, world)).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _gradient_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = setup("cpu")
    try:
        assert world.size == world_size and world.owns_group and torch.distributed.get_backend() == "gloo"
        model, encoded, group = _gradient_problem()
        gradients = _group_gradients(model, wrap_model(model, world), encoded, group, world)
        torch.save(gradients, f"{out}.{rank}")
    finally:
        teardown(world)


def test_two_ranks_compute_the_gradient_of_one_process_over_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "gradients")
    mp.spawn(_gradient_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    model, encoded, group = _gradient_problem()
    expected = _group_gradients(model, model, encoded, group, World())

    for rank in range(2):
        gradients = torch.load(f"{out}.{rank}")
        assert gradients.keys() == expected.keys()
        for name, gradient in gradients.items():
            # The same numbers summed in another order: fp32 rounding only.
            torch.testing.assert_close(gradient, expected[name], atol=1e-6, rtol=1e-4, msg=name)
    assert any(g.abs().max() > 1e-3 for g in expected.values())  # not a comparison of zeros


# --- leaving the process group ------------------------------------------------------------------
# gloo's threads (gloo_tcp_loop, pt_gloo_runloop) live as long as the group does. A group still
# alive after teardown is torn down during interpreter shutdown instead, which aborted ranks at exit
# (docs/distributed.md).

def _native_threads() -> list[str]:
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as handle:
            names.append(handle.read().strip())
    return names


def _teardown_worker(rank: int, world_size: int, port: int, out: str, finished: bool) -> None:
    import gc
    import time

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    gc.disable()  # only teardown's own collection may free the cycle below
    world = setup("cpu")
    model, encoded, group = _gradient_problem()
    train_model = wrap_model(model, world)  # DDP: imports torch.distributed.nn and holds the group in its reducer
    _group_gradients(model, train_model, encoded, group, world)
    # A reference cycle holding the wrapper, like the one matplotlib's savefig leaves around the loop's frame.
    cycle = [train_model]
    cycle.append(cycle)
    del train_model, cycle
    before = _native_threads()
    rank0_left = f"{out}.rank0-left"
    if finished and rank == 0:
        time.sleep(1.0)  # rank 0 is late: it writes the files
    if not finished and rank == 1:
        # On an error path rank 1 arrives only after rank 0 has left (or never, if rank 0 waits for it).
        deadline = time.monotonic() + 120
        while not os.path.exists(rank0_left) and time.monotonic() < deadline:
            time.sleep(0.05)
    entered = time.time()
    teardown(world, finished)
    left = time.time()
    if rank == 0:
        open(rank0_left, "w").close()
    with open(f"{out}.{rank}", "w", encoding="utf-8") as handle:
        json.dump({"before": before, "after": _native_threads(), "entered": entered, "left": left,
                   "rank0_had_left": os.path.exists(rank0_left)}, handle)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through /proc")
@pytest.mark.parametrize("finished", [True, False])
def test_teardown_frees_the_group_and_waits_for_every_rank_only_after_a_finished_run(tmp_path, finished):
    import torch.multiprocessing as mp

    out = str(tmp_path / "teardown")
    mp.spawn(_teardown_worker, args=(2, _free_port(), out, finished), nprocs=2, join=True)
    ranks = []
    for rank in range(2):
        with open(f"{out}.{rank}", encoding="utf-8") as handle:
            ranks.append(json.load(handle))

    for rank in ranks:
        assert any(name.startswith("gloo") for name in rank["before"])  # the check below sees gloo's threads
        assert [name for name in rank["after"] if "gloo" in name] == []
    if finished:
        # Rank 1 waited for rank 0, 1 s late, at the barrier.
        assert ranks[1]["left"] >= ranks[0]["entered"]
    else:
        # No barrier after an error: rank 0 left without waiting for rank 1.
        assert ranks[1]["rank0_had_left"] and ranks[0]["left"] <= ranks[1]["entered"]


# --- two ranks under torchrun against one process -------------------------------------------------

BATCH_PER_RANK = 4
TRAIN_OPTIONS = dict(labels="five", epochs=3, lr=5e-3, grad_accum=2, max_length=10, eval_batch_size=5,
                     num_threads=1, device="cpu", seed=5)


def _load_weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# Dropout is off in these comparisons (tiny_encoder_no_dropout): each rank draws its own masks for
# its half of a batch, which no single process drawing one mask for the whole batch can reproduce;
# the comparison is about the gradient arithmetic (sharding, loss normalisation, DDP averaging).
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path, tiny_encoder_no_dropout, tiny_tokenizer):
    data = write_hub_folder(tmp_path / "data", sizes=(92, 24, 21), seed=3)
    windows = {split: len(encode(load_split(data, split, "en").sentences, multinerd_label_set("five"), tiny_tokenizer,
                                 TRAIN_OPTIONS["max_length"])) for split in ("train", "test")}
    # Preconditions: an exact comparison needs the last global batch to reach both ranks (none is
    # dropped); the test split's 21 sentences cut into an odd number of windows (some sentences
    # span two), so the evaluation shards cannot be even.
    assert windows["train"] % (2 * BATCH_PER_RANK) != 1
    assert windows["test"] % 2 == 1

    two = str(tmp_path / "two-ranks")
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in TRAIN_OPTIONS.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), f"--model={tiny_encoder_no_dropout}", f"--data={data}",
               f"--output-dir={two}", f"--batch-size={BATCH_PER_RANK}", "--no-progress", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("overall") == 1  # only rank 0 prints the table
    assert "global batch 16 windows per step: 4 per device x world size 2 x accumulation 2" in result.stderr

    one = str(tmp_path / "one-rank")
    single = train(TrainConfig(model=tiny_encoder_no_dropout, data=data, output_dir=one,
                               batch_size=2 * BATCH_PER_RANK, progress=False, **TRAIN_OPTIONS))
    with open(os.path.join(two, "metrics.json"), encoding="utf-8") as handle:
        double = json.load(handle)

    assert (double["world_size"], single["world_size"]) == (2, 1)
    assert double["best_epoch"] == single["best_epoch"]
    assert double["train_words"] == single["train_words"]  # the same words trained on
    for a, b in zip(double["epochs"], single["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"] == b["val"]  # the same predictions give the very same metrics
    # Every test word scored once: the gathered shards give the counts of the whole split.
    assert double["test"]["words"] == double["test_words_in_split"] == single["test"]["words"]
    assert double["test"] == single["test"]
    assert single["test"]["f1"] > 0.3  # the models compared have learnt something

    # fp32; the ranks' gradients are summed in another order than one process's, so the weights
    # agree to rounding (about 1e-7 here); atol 1e-5 leaves room and still catches a factor-2 error.
    two_weights, one_weights = _load_weights(two), _load_weights(one)
    assert two_weights.keys() == one_weights.keys()
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], atol=1e-5, rtol=0, msg=name)


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(ROOT, "train.py"), *args]


def test_resume_under_torchrun_after_sigterm_is_bit_identical(tmp_path, tiny_encoder):
    """Each rank keeps its own dropout stream; the checkpoint holds every rank's RNG state."""
    import signal
    import time

    from safetensors.torch import load_file

    data = write_hub_folder(tmp_path / "data", sizes=(64, 12, 12), seed=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}

    def args(out, *extra):
        return [f"--model={tiny_encoder}", f"--data={data}", f"--output-dir={out}", "--batch-size=4", "--epochs=2",
                "--lr=5e-3", "--max-length=16", "--save-steps=1", "--num-threads=1", "--device=cpu", "--no-progress",
                *extra]

    whole = tmp_path / "whole"
    result = subprocess.run(_torchrun(*args(whole)), env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]

    stopped = tmp_path / "stopped"
    process = subprocess.Popen(_torchrun(*args(stopped)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    target = stopped / "checkpoints" / "checkpoint-00000003"
    deadline = time.monotonic() + 240
    while not target.is_dir():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, stderr = process.communicate(timeout=240)
    assert process.returncode != 0 and "checkpoint written to" in stderr, stderr[-3000:]

    result = subprocess.run(_torchrun(*args(stopped, "--resume")), env=env, capture_output=True, text=True,
                            timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, stopped))
    assert ma["test"] == mb["test"] and ma["train_loss_by_step"] == mb["train_loss_by_step"]


# --- process-group set-up: NCCL on each rank's own GPU, gloo on CPUs --------------------------------

def test_the_backend_follows_the_device():
    from nerlib.distributed import backend_for

    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


@pytest.fixture
def fake_process_group(monkeypatch):
    """Rank 3 of 4, local rank 1, on a machine with two (fake) GPUs; the calls made are recorded."""
    calls = []
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **options: calls.append(("init_process_group", backend, options)))
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: calls[-1][1])
    return calls


@pytest.mark.parametrize("device_name", ["auto", "cuda"])
def test_ranks_on_gpus_join_with_nccl_bound_to_their_local_gpu(fake_process_group, device_name):
    world = setup(device_name)
    gpu = torch.device("cuda", 1)
    assert fake_process_group == [("set_device", gpu), ("init_process_group", "nccl", {"device_id": gpu})]
    assert (world.rank, world.size, world.local_rank, world.device, world.owns_group) == (3, 4, 1, gpu, True)


def test_ranks_on_cpus_join_with_gloo(fake_process_group):
    world = setup("cpu")
    assert fake_process_group == [("init_process_group", "gloo", {})]
    assert world.device == torch.device("cpu") and world.rank == 3


def test_more_ranks_on_a_machine_than_gpus_is_refused(fake_process_group, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match=r"^LOCAL_RANK 2 but only 2 CUDA device\(s\) are visible"):
        setup("cuda")
    assert fake_process_group == []


# --- resuming without a shared file system: rank 0 chooses, every rank must hold the same ----------

def _tiny_checkpoint(output_dir, step: int, seed: int, whole_state: bool = True) -> str:
    from nerlib.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    state = {"epoch": 1, "batches_done": 1, "global_step": step, "best_f1": -1.0, "best_epoch": 0,
             "best_checkpoint": None, "history": [], "epoch_loss": 0.0, "epoch_loss_words": 0, "epoch_words": 0,
             "epoch_seconds": 0.0, "train_words": 0, "train_seconds": 0.0, "skipped_steps": 0, "loss_by_step": [],
             "config": {}, "fingerprint": {}}
    if not whole_state:
        del state["loss_by_step"]  # a complete checkpoint (its manifest matches) that cannot be resumed
    return save_checkpoint(str(output_dir), step, model, optimizer, scheduler,
                           torch.amp.GradScaler("cpu", enabled=False), state)


AGREE_SCENARIOS = ("missing", "different", "corrupt", "same", "none-on-rank-0", "unusable-on-rank-0", "train",
                   "collectives")


def _agree_worker(rank: int, world_size: int, port: int, base: str, train_options: dict) -> None:
    from nerlib.checkpoint import CheckpointError
    from nerlib.distributed import agree_on_checkpoint

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    world = setup("cpu")
    results, finished = {}, False
    try:
        for name in AGREE_SCENARIOS:
            # Each rank's own output folder: ranks on machines that share no file system.
            folder = os.path.join(base, name, f"rank{rank}")
            try:
                if name == "train":
                    train(TrainConfig(output_dir=folder, resume=True, **train_options))
                    results[name] = {"trained": True}
                elif name == "collectives":
                    # Fresh runs of 32 and 64 sentences, counting the all-reduces nerlib starts (DDP's
                    # own gradient all-reduce runs inside its C++ reducer and is not among them): the
                    # difference is what the extra steps cost, whatever a run does once or an epoch.
                    original = torch.distributed.all_reduce
                    for sentences in (32, 64):
                        reduced = []

                        def counted(tensor, *args, **kwargs):
                            reduced.append(tensor.numel())
                            return original(tensor, *args, **kwargs)

                        torch.distributed.all_reduce = counted
                        try:
                            metrics = train(TrainConfig(output_dir=os.path.join(folder, str(sentences)),
                                                        max_train_samples=sentences, **train_options))
                        finally:
                            torch.distributed.all_reduce = original
                        results[f"{name}-{sentences}"] = {"all_reduce": len(reduced),
                                                          "steps": len(metrics["train_loss_by_step"])}
                    results[name] = {}
                else:
                    results[name] = {"path": agree_on_checkpoint(folder, world).path}
            except CheckpointError as exc:
                results[name] = {"error": str(exc)}
        finished = True
    finally:
        teardown(world, finished)
    with open(os.path.join(base, f"results.{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle)


def test_without_a_shared_file_system_every_rank_resumes_from_rank_0s_checkpoint_or_all_refuse(
        tmp_path, tiny_encoder):
    import time

    import torch.multiprocessing as mp

    chosen = _tiny_checkpoint(tmp_path / "source", 3, seed=0)
    other = _tiny_checkpoint(tmp_path / "other-run", 3, seed=1)  # another run's checkpoint of the same step
    name = os.path.basename(chosen)

    def place(scenario, rank, source):
        target = tmp_path / scenario / f"rank{rank}" / "checkpoints" / name
        shutil.copytree(source, target)
        return target

    for scenario in AGREE_SCENARIOS:
        for rank in range(2):
            os.makedirs(tmp_path / scenario / f"rank{rank}", exist_ok=True)
    for scenario in ("missing", "different", "corrupt", "same", "train"):
        place(scenario, 0, chosen)
    place("different", 1, other)
    truncated = place("corrupt", 1, chosen) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:50])
    place("same", 1, chosen)
    place("none-on-rank-0", 1, chosen)
    unusable = _tiny_checkpoint(tmp_path / "unusable-on-rank-0" / "rank0", 3, seed=0, whole_state=False)
    shutil.copytree(unusable, tmp_path / "unusable-on-rank-0" / "rank1" / "checkpoints" / name)

    # Training data only: the runs have no evaluation to spend time on.
    data = write_hub_folder(tmp_path / "data", sizes=(64, 1, 1), seed=5)
    shutil.rmtree(os.path.join(data, "val"))
    shutil.rmtree(os.path.join(data, "test"))
    options = dict(labels="five", data=data, model=tiny_encoder, epochs=1, batch_size=4, max_length=16,
                   device="cpu", num_threads=1, progress=False)
    context = mp.start_processes(_agree_worker, args=(2, _free_port(), str(tmp_path), options), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 600  # minutes on a loaded machine; a hang never ends
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hung")
    results = [json.loads((tmp_path / f"results.{rank}.json").read_text()) for rank in range(2)]

    for scenario, why in (("missing", "missing"), ("different", "a different checkpoint of the same step"),
                          ("corrupt", "model.safetensors: does not match its recorded size and checksum"),
                          ("train", "missing")):
        errors = [result[scenario].get("error") for result in results]
        assert errors[0] == errors[1], scenario  # both ranks refuse, with the same line
        assert errors[0] is not None and "\n" not in errors[0], (scenario, results)
        assert errors[0].startswith(f"{name}: rank 0 resumes from this checkpoint, which rank 1 (")
        assert f"{why}) lack(s) in their --output-dir" in errors[0], errors[0]
    # Rank 0 cannot use its own choice: every rank hears why (and none waits for rank 0 forever).
    errors = [result["unusable-on-rank-0"].get("error") for result in results]
    assert errors[0] == errors[1] and errors[0].endswith(
        f"{name}: trainer_state.json is missing loss_by_step, which the resume needs"), errors
    for rank in range(2):
        assert results[rank]["same"]["path"] == str(tmp_path / "same" / f"rank{rank}" / "checkpoints" / name)
        assert results[rank]["none-on-rank-0"]["path"] is None  # rank 0 has none: every rank starts afresh
        # One collective a step (the step's loss, overflow and stop votes): 32 more sentences are
        # 4 more steps of 4 windows on each of 2 ranks, and cost 4 more all-reduces.
        fewer, more = results[rank]["collectives-32"], results[rank]["collectives-64"]
        assert (fewer["steps"], more["steps"]) == (4, 8)
        assert more["all_reduce"] - fewer["all_reduce"] == 4, (fewer, more)


def test_each_rank_predicts_only_its_share_of_the_windows(tmp_path, tiny_encoder, tiny_tokenizer):
    """Counted where the model runs, not compared with one process: a bug both share cannot cancel out."""
    from collections import Counter

    data = write_hub_folder(tmp_path / "data", sizes=(16, 9, 11), seed=7)
    five = multinerd_label_set("five")
    expected = {split: [tuple(ids.tolist()) for ids in encode(load_split(data, split, "en").sentences, five,
                                                               tiny_tokenizer, max_length=10).input_ids]
                for split in ("val", "test")}
    assert len(expected["val"]) % 2 == 1 and len(expected["test"]) % 2 == 1  # shares cannot be even

    prefix = str(tmp_path / "windows")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "tests", "eval_window_counter.py"), prefix, f"--model={tiny_encoder}",
               f"--data={data}", f"--output-dir={tmp_path / 'run'}", "--labels=five", "--epochs=1", "--batch-size=4",
               "--max-length=10", "--eval-batch-size=3", "--num-threads=1", "--device=cpu", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]

    predicted = []
    for rank in range(2):
        with open(f"{prefix}.{rank}.json", encoding="utf-8") as handle:
            predicted.append([tuple(window) for window in json.load(handle)])
    # The validation split once (one epoch) and the test split once: together the two ranks ran
    # every window exactly once, so neither ran the other's.
    everything = expected["val"] + expected["test"]
    assert len(predicted[0]) + len(predicted[1]) == len(everything)
    assert Counter(predicted[0]) + Counter(predicted[1]) == Counter(everything)
    # Each split's windows are dealt out evenly: a rank gets half of each, rounded either way.
    low = sum(len(w) // 2 for w in expected.values())
    assert all(low <= len(share) <= low + 2 for share in predicted), [len(share) for share in predicted]
