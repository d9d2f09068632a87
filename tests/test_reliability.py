"""Faults a long run must survive: kills, signals, broken checkpoints, changed settings, NaN."""

import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import nerlib
from nerlib import checkpoint as ckpt
from nerlib.config import TrainConfig
from nerlib.checkpoint import CheckpointError, OutputDirLocked, SaveError
from nerlib.errors import ConfigError, NonFiniteLoss
from nerlib.devices import Precision

from conftest import ROOT, cli_command, cli_env, run_cli

TRAIN_ARGS = ["--labels", "five", "--epochs", "2", "--lr", "5e-3", "--batch-size", "8", "--max-length", "16",
              "--save-steps", "1", "--keep-checkpoints", "3", "--no-progress", "--seed", "11"]
STEPS = 24  # 96 training sentences / batch 8 x 2 epochs


def _train_args(data, model, out, *extra):
    return ["--data", data, "--model", model, "--output-dir", str(out), *TRAIN_ARGS, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_encoder):
    """One uninterrupted run that every resumed run must equal bit for bit."""
    from conftest import write_hub_folder

    root = tmp_path_factory.mktemp("reliability")
    data = write_hub_folder(root / "data")
    out = root / "uninterrupted"
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out))
    assert result.returncode == 0, result.stderr
    return data, out


def _same_run(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs after resume"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for ea, eb in zip(ma["epochs"], mb["epochs"]):
        assert ea["batch_order"] == eb["batch_order"]
        assert ea["train_loss"] == eb["train_loss"]
        assert ea["val"] == eb["val"]
    assert ma["train_loss_by_step"] == mb["train_loss_by_step"]
    assert ma["test"] == mb["test"]


def _start_and_stop_at_step(args, step, send):
    """Start train.py, wait until checkpoint `step` exists, then deliver `send` (a signal)."""
    out = args[args.index("--output-dir") + 1]
    process = subprocess.Popen(cli_command("train.py", *args), cwd=ROOT, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = os.path.join(out, "checkpoints", f"checkpoint-{step:08d}")
    deadline = time.monotonic() + 240
    while not os.path.isdir(target):
        assert process.poll() is None, f"run ended before step {step}: {process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
        time.sleep(0.002)
    process.send_signal(send)
    stdout, stderr = process.communicate(timeout=240)
    return process.returncode, stderr


# The kill step is drawn from a seeded generator so that a failure replays: the seed and step are
# printed (pytest shows them with a failure); NERLIB_KILL_SEED=N tries another step.
KILL_SEED = int(os.environ.get("NERLIB_KILL_SEED", "2024"))


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    step = random.Random(KILL_SEED).randint(2, STEPS - 6)
    replay = f"kill seed {KILL_SEED} (NERLIB_KILL_SEED): SIGKILL once checkpoint {step} exists"
    print(replay)
    out = tmp_path / "killed"
    code, _ = _start_and_stop_at_step(_train_args(data, tiny_encoder, out), step, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the run was not killed: {replay}"
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 0, f"{replay}\n{result.stderr}"
    assert "resuming from" in result.stderr, replay
    _same_run(uninterrupted, out)


def test_sigterm_writes_a_checkpoint_and_exits_3_then_resume_is_bit_identical(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    out = tmp_path / "terminated"
    code, stderr = _start_and_stop_at_step(_train_args(data, tiny_encoder, out), 5, signal.SIGTERM)
    assert code == 3, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr and "checkpoint written to" in stderr
    assert "Traceback" not in stderr
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 0, result.stderr
    _same_run(uninterrupted, out)


def _kept_steps(uninterrupted):
    return [int(os.path.basename(p).split("-")[1]) for p in ckpt.list_checkpoints(str(uninterrupted))]


def _copy_partial_run(uninterrupted, tmp_path, keep_steps):
    """A run folder holding only the checkpoints of the given steps (as if stopped after them)."""
    out = tmp_path / "partial"
    os.makedirs(out / "checkpoints")
    for step in keep_steps:
        name = f"checkpoint-{step:08d}"
        shutil.copytree(uninterrupted / "checkpoints" / name, out / "checkpoints" / name)
    return out


def test_truncated_newest_checkpoint_falls_back_to_the_previous(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    steps = _kept_steps(uninterrupted)
    out = _copy_partial_run(uninterrupted, tmp_path, steps[:2])
    newest = out / "checkpoints" / f"checkpoint-{steps[1]:08d}" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a write cut short
    # The newest is reported and skipped; the run then continues from the one before.
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert f"checkpoint-{steps[1]:08d}" in result.stderr and "does not match" in result.stderr
    assert f"resuming from {out / 'checkpoints' / f'checkpoint-{steps[0]:08d}'}" in result.stderr
    _same_run(uninterrupted, out)


def test_checkpoint_without_marker_is_incomplete(reference, tmp_path):
    _, uninterrupted = reference
    last = ckpt.list_checkpoints(str(uninterrupted))[-1]
    copy = tmp_path / "checkpoints" / os.path.basename(last)
    shutil.copytree(last, copy)
    os.remove(copy / ckpt.MARKER)
    found = ckpt.find_resumable(str(tmp_path))
    assert found.path is None and "incomplete" in found.skipped[0]


def _reseal(folder):
    """Rewrite the COMPLETE manifest to match the files as they are now: damage the checksums cannot see."""
    manifest = json.loads((folder / ckpt.MARKER).read_text())
    for name in manifest:
        manifest[name] = {"size": os.path.getsize(folder / name), "sha256": ckpt._sha256(str(folder / name))}
    (folder / ckpt.MARKER).write_text(json.dumps(manifest))


class _OpensAFile:
    """A pickle that calls open(path, "w") when loaded: what weights-only loading must refuse."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _edit_manifest(edit):
    def damage(folder):
        manifest = json.loads((folder / ckpt.MARKER).read_text())
        edit(manifest)
        (folder / ckpt.MARKER).write_text(json.dumps(manifest))
    return damage


def _rewrite(name, content, reseal=True):
    def damage(folder):
        path = folder / name
        data = content(path.read_bytes()) if callable(content) else content
        path.write_bytes(data)
        if reseal:
            _reseal(folder)
    return damage


def _carry_code(folder):
    torch.save({"state": _OpensAFile(folder.parent.parent / "code-ran")}, folder / "optimizer.pt")
    _reseal(folder)


def _bad_generator_state(folder):
    rng = torch.load(folder / "rng.pt", weights_only=True)
    rng["torch"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(rng, folder / "rng.pt")
    _reseal(folder)


# Each way a checkpoint gets damaged: (damage, the file named, words of the reason).
DAMAGE = {
    "manifest-not-a-mapping": (_rewrite(ckpt.MARKER, b"[]", reseal=False), ckpt.MARKER, "not a mapping"),
    "manifest-not-json": (_rewrite(ckpt.MARKER, b'{"model.safe', reseal=False), ckpt.MARKER, "unreadable"),
    "entry-without-size": (_edit_manifest(lambda m: m[ckpt.MODEL_FILE].pop("size")), ckpt.MARKER, "lacks a size"),
    "entry-without-sha": (_edit_manifest(lambda m: m["rng.pt"].pop("sha256")), ckpt.MARKER, "lacks a size or a SHA"),
    "entry-not-a-mapping": (_edit_manifest(lambda m: m.update({"rng.pt": 7})), ckpt.MARKER, "lacks a size"),
    "manifest-omits-a-file": (_edit_manifest(lambda m: m.pop(ckpt.STATE_FILE)), ckpt.MARKER,
                              "does not list trainer_state.json"),
    "manifest-lists-a-missing-file": (_edit_manifest(lambda m: m.update({"gone.pt": {"size": 1, "sha256": "0"}})),
                                      "gone.pt", "cannot be read"),
    "state-truncated": (_rewrite(ckpt.STATE_FILE, lambda b: b[:len(b) // 2], reseal=False), ckpt.STATE_FILE,
                        "does not match"),
    "state-truncated-resealed": (_rewrite(ckpt.STATE_FILE, lambda b: b[:len(b) // 2]), ckpt.STATE_FILE, "unreadable"),
    "state-nested-too-deep-resealed": (_rewrite(ckpt.STATE_FILE, b"[" * 100_000 + b"]" * 100_000), ckpt.STATE_FILE,
                                       "unreadable"),
    "state-not-an-object-resealed": (_rewrite(ckpt.STATE_FILE, b"[1, 2]"), ckpt.STATE_FILE, "not a JSON object"),
    "state-of-the-wrong-type-resealed": (_rewrite(ckpt.STATE_FILE, lambda b: json.dumps(
        {**json.loads(b), "config": "lr=5e-3"}).encode()), ckpt.STATE_FILE, "config of the wrong type"),
    "state-without-its-best-epoch-resealed": (_rewrite(ckpt.STATE_FILE, lambda b: json.dumps(
        {**json.loads(b), "best_epoch": 9}).encode()), ckpt.STATE_FILE, "does not hold best epoch 9"),
    "optimizer-carries-code-resealed": (_carry_code, "optimizer.pt",
                                        "refused by weights-only loading: it would call io.open"),
    "optimizer-not-a-state-resealed": (_rewrite("optimizer.pt", lambda b: _saved(torch.zeros(2))), "optimizer.pt",
                                       "not a state dictionary"),
    "scheduler-garbage-resealed": (_rewrite("scheduler.pt", b"PK\x03\x04 not a zip"), "scheduler.pt", "unreadable"),
    "rng-unrestorable-resealed": (_bad_generator_state, "rng.pt", "cannot be restored"),
    "weights-header-damaged-resealed": (_rewrite(ckpt.MODEL_FILE, lambda b: b"\xff" * 8 + b[8:]), ckpt.MODEL_FILE,
                                        "unreadable"),
    "weights-truncated-resealed": (_rewrite(ckpt.MODEL_FILE, lambda b: b[:-64]), ckpt.MODEL_FILE, "unreadable"),
}


def _saved(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(reference, tmp_path, caplog, damage):
    _, uninterrupted = reference
    steps = _kept_steps(uninterrupted)
    out = _copy_partial_run(uninterrupted, tmp_path, steps[-2:])
    previous, newest = (out / "checkpoints" / f"checkpoint-{step:08d}" for step in steps[-2:])
    damage_it, name, why = DAMAGE[damage]
    damage_it(newest)
    with caplog.at_level("WARNING", logger="nerlib.checkpoint"):
        found = ckpt.find_resumable(str(out))
    assert found.path == str(previous)
    assert found.checkpoint.trainer_state["global_step"] == steps[-2]
    assert len(found.skipped) == 1 and found.skipped[0].startswith(f"{newest.name}/{name}: ")
    assert why in found.skipped[0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(newest) in warnings[0] and name in warnings[0] and "\n" not in warnings[0]
    assert not (out / "code-ran").exists(), "unpickling ran the checkpoint's code"


def test_every_key_of_the_loop_state_is_checked_when_a_checkpoint_is_read():
    from nerlib.loop import TrainState

    fresh = TrainState(config=TrainConfig().run_settings(), fingerprint={"labels": []}).to_dict()
    assert list(fresh) == list(ckpt.STATE_KEY_TYPES)
    assert set(ckpt.REQUIRED_STATE_KEYS) == set(fresh) - set(ckpt.OPTIONAL_STATE_KEYS)
    assert all(isinstance(value, ckpt.STATE_KEY_TYPES[key]) for key, value in fresh.items())


def test_when_no_checkpoint_is_left_the_error_is_one_line(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    step = _kept_steps(uninterrupted)[-1]
    out = _copy_partial_run(uninterrupted, tmp_path, [step])
    _carry_code(out / "checkpoints" / f"checkpoint-{step:08d}")
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert "no complete checkpoint to resume from" in errors[0]
    assert f"checkpoint-{step:08d}/optimizer.pt: refused by weights-only loading" in errors[0]
    assert not (out / "code-ran").exists()


@pytest.mark.parametrize("remove", ["rng.pt", "scheduler.pt"])
def test_missing_state_is_an_error_not_a_warning(reference, tiny_encoder, tmp_path, remove):
    data, uninterrupted = reference
    last = ckpt.list_checkpoints(str(uninterrupted))[-1]
    out = _copy_partial_run(uninterrupted, tmp_path, [int(os.path.basename(last).split("-")[1])])
    os.remove(out / "checkpoints" / os.path.basename(last) / remove)
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"missing {remove}" in result.stderr


def test_missing_key_in_trainer_state_is_an_error(reference, tmp_path, tiny_encoder):
    data, uninterrupted = reference
    last = ckpt.list_checkpoints(str(uninterrupted))[-1]
    out = _copy_partial_run(uninterrupted, tmp_path, [int(os.path.basename(last).split("-")[1])])
    folder = out / "checkpoints" / os.path.basename(last)
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    del state["batches_done"]
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))
    _reseal(folder)  # so the file is "complete" but lacks the state
    result = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume"))
    assert result.returncode == 2 and "missing batches_done" in result.stderr


def test_changed_configuration_is_refused_with_differences_unless_forced(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, _kept_steps(uninterrupted)[:1])
    args = _train_args(data, tiny_encoder, out, "--resume")
    args[args.index("--lr") + 1] = "1e-3"
    refused = run_cli("train.py", *args)
    assert refused.returncode == 2
    assert "refusing to resume" in refused.stderr and "lr: 0.005 -> 0.001" in refused.stderr
    forced = run_cli("train.py", *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: resuming although these differ: lr" in forced.stderr


def test_a_checkpoint_from_before_an_option_existed_resumes_while_the_option_keeps_its_default(
        reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, _kept_steps(uninterrupted)[-1:])
    folder = ckpt.list_checkpoints(str(out))[-1]
    state_file = os.path.join(folder, ckpt.STATE_FILE)
    with open(state_file, encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["config"]["tag_scheme"] == "auto" == TrainConfig().tag_scheme
    del state["config"]["tag_scheme"]  # as written by a nerlib that had no --tag-scheme yet
    with open(state_file, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    _reseal(pathlib.Path(folder))
    # Set otherwise, the new option is a difference like any other.
    with pytest.raises(CheckpointError, match="refusing to resume.*tag_scheme: '[a-z<>]+' -> 'bio'"):
        nerlib.train(_resume_config(data, tiny_encoder, out, tag_scheme="bio"))
    resumed = nerlib.train(_resume_config(data, tiny_encoder, out))
    assert resumed["test"] == json.loads((uninterrupted / "metrics.json").read_text())["test"]


def test_differences_name_every_changed_leaf_and_summarise_long_lists():
    saved = {"lr": 0.005, "seed": 11, "fingerprint": {"labels": ["O"] + [f"B-T{i}" for i in range(8)], "tok": "a"}}
    current = {"lr": 0.001, "seed": 11, "fingerprint": {"labels": ["O"] + [f"B-T{i}" for i in range(1, 10)]},
               "amp": True}
    assert ckpt.differences(saved, current) == [
        "amp: '<absent>' -> True",
        "fingerprint.labels: 9 -> 10 entries (added 'B-T8', 'B-T9' and removed 'B-T0')",
        "fingerprint.tok: 'a' -> '<absent>'",
        "lr: 0.005 -> 0.001",
    ]
    reordered = {"labels": ["O"] + [f"B-T{i}" for i in range(7, -1, -1)]}
    assert ckpt.differences({"labels": saved["fingerprint"]["labels"]}, reordered) == [
        "labels: 9 -> 9 entries (the same, in another order)"]


def test_changed_data_is_refused(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, _kept_steps(uninterrupted)[:1])
    changed = tmp_path / "changed-data"
    shutil.copytree(data, changed)
    with open(changed / "train" / "train_en.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"tokens": ["alice"], "ner_tags": [1], "lang": "en"}) + "\n")
    result = run_cli("train.py", *_train_args(str(changed), tiny_encoder, out, "--resume"))
    assert result.returncode == 2 and "fingerprint.data.train" in result.stderr


def _resume_config(data, model, out, **changes):
    """The reference run's settings (TRAIN_ARGS) as a TrainConfig resuming in `out`, with `changes`."""
    settings = dict(labels="five", data=data, model=model, output_dir=str(out), epochs=2, lr=5e-3, batch_size=8,
                    max_length=16, save_steps=1, keep_checkpoints=3, progress=False, seed=11, resume=True)
    return TrainConfig(**{**settings, **changes})


def test_resume_with_another_label_count_is_refused_before_loading_even_with_force(reference, tiny_encoder,
                                                                                   tmp_path):
    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, _kept_steps(uninterrupted)[-1:])
    with pytest.raises(CheckpointError, match="not even with --force: the checkpoint has 11 labels and this run 31"):
        nerlib.train(_resume_config(data, tiny_encoder, out, labels="all"))
    forced = run_cli("train.py", *_train_args(data, tiny_encoder, out, "--resume", "--force"), "--labels", "all")
    assert forced.returncode == 2 and "Traceback" not in forced.stderr, forced.stderr
    errors = [line for line in forced.stderr.splitlines() if "error" in line.lower()]
    assert errors == [forced.stderr.strip().splitlines()[-1]]
    assert "labels: 'five' -> 'all'" in errors[0] and "a different label count cannot be forced" in errors[0]


def test_a_forced_resume_trains_with_the_new_learning_rate_and_weight_decay(reference, tiny_encoder, tmp_path,
                                                                           monkeypatch):
    import nerlib.loop as loop

    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, [STEPS - 1])
    optimizers = []
    build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda *args: optimizers.append(build(*args)) or optimizers[-1])
    nerlib.train(_resume_config(data, tiny_encoder, out, lr=1e-3, weight_decay=0.25, force=True))
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    last = [record for record in steps if record.get("event") == "step" and record["step"] == STEPS]
    # Linear decay without warmup: step 24 of 24 trains at the peak rate times (24 - 23) / 24.
    assert len(last) == 1 and last[0]["lr"] == pytest.approx(1e-3 * 1 / 24, rel=1e-12)
    decays = [group["weight_decay"] for group in optimizers[0].param_groups]
    assert decays == [0.25, 0.0]  # weight matrices, then biases and LayerNorm gains


def _encoder_of_another_shape(folder) -> str:
    from transformers import BertConfig, BertModel

    from conftest import build_tiny_encoder

    build_tiny_encoder(str(folder))
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(folder))
    config.intermediate_size = 48  # the tiny encoder's is 64
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


def test_resume_with_another_model_is_refused_and_forced_only_when_the_weights_fit(
        reference, tiny_encoder_no_dropout, tmp_path):
    data, uninterrupted = reference
    last = _kept_steps(uninterrupted)[-1]
    out = _copy_partial_run(uninterrupted, tmp_path, [last])
    # The same architecture with other settings (no dropout): refused, then forced.
    with pytest.raises(CheckpointError, match=r"refusing to resume .*model: '.*' -> '.*'.*pass --force"):
        nerlib.train(_resume_config(data, tiny_encoder_no_dropout, out))
    metrics = nerlib.train(_resume_config(data, tiny_encoder_no_dropout, out, force=True))
    assert metrics["test"]["words"] == metrics["test_words_in_split"]
    # Another shape: the weights cannot be loaded, so --force cannot help; nothing is loaded or written.
    other = _encoder_of_another_shape(tmp_path / "other-shape")
    before = sorted(os.listdir(out / "checkpoints"))
    with pytest.raises(CheckpointError, match=r"not even with --force: the checkpoint's weights do not fit this "
                                              r"model \(bert\.encoder\.layer\.0\.intermediate\.dense\.weight: "
                                              r"64x32 saved, 48x32 now"):
        nerlib.train(_resume_config(data, other, out, force=True))
    assert sorted(os.listdir(out / "checkpoints")) == before


def test_state_that_does_not_fit_the_run_is_a_checkpoint_error_naming_the_file(reference, tiny_encoder):
    from transformers import AutoModelForTokenClassification

    from nerlib.loop import build_optimizer, linear_schedule

    _, uninterrupted = reference
    saved = ckpt.read_checkpoint(ckpt.list_checkpoints(str(uninterrupted))[-1])
    model = AutoModelForTokenClassification.from_pretrained(tiny_encoder, num_labels=11)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # one parameter group where the run has two
    scheduler = linear_schedule(build_optimizer(model, 1e-3, 0.0, torch.device("cpu")), 0, 10)
    with pytest.raises(CheckpointError, match=r"checkpoint-00000024/optimizer\.pt: cannot be loaded into this run "
                                              r"\(ValueError: .*parameter groups"):
        ckpt.restore(saved, model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))


def test_new_run_in_a_folder_with_checkpoints_is_refused(reference, tiny_encoder, tmp_path):
    data, uninterrupted = reference
    out = _copy_partial_run(uninterrupted, tmp_path, _kept_steps(uninterrupted)[:1])
    kept = out / "checkpoints" / f"checkpoint-{_kept_steps(uninterrupted)[0]:08d}"
    refused = run_cli("train.py", *_train_args(data, tiny_encoder, out))
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert os.path.isdir(kept), "nothing may be lost"
    config = TrainConfig(labels="five", data=data, model=tiny_encoder, output_dir=str(out), epochs=1,
                         batch_size=8, max_length=16, progress=False, overwrite=True)
    assert nerlib.train(config)["test"] is not None
    assert not os.path.isdir(kept)


def test_keep_checkpoints_keeps_the_newest_and_the_best(reference):
    _, uninterrupted = reference
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(str(uninterrupted))]
    state = json.loads((uninterrupted / "checkpoints" / names[-1] / ckpt.STATE_FILE).read_text())
    assert names[-1] == f"checkpoint-{STEPS:08d}"
    assert set(names) == set(names[-3:]) | {state["best_checkpoint"]}
    assert not [n for n in os.listdir(uninterrupted / "checkpoints") if n.startswith(".tmp")]


def test_unwritable_output_folder_is_a_clear_error(hub_folder, tiny_encoder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli("train.py", *_train_args(hub_folder, tiny_encoder, blocker / "out"))
    assert result.returncode == 2 and "output folder cannot be written" in result.stderr
    assert "Traceback" not in result.stderr


def _nan_after(model, calls):
    """Make the model's logits NaN from its `calls`-th forward on."""
    forward = model.forward
    count = {"n": 0}

    def patched(*args, **kwargs):
        count["n"] += 1
        output = forward(*args, **kwargs)
        if count["n"] >= calls:
            output.logits = output.logits * float("nan")
        return output

    model.forward = patched
    return model


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(hub_folder, tiny_encoder, tmp_path, monkeypatch):
    import nerlib.loop as loop

    original = loop.load_model_for_training
    monkeypatch.setattr(loop, "load_model_for_training", lambda *a, **k: _nan_after(original(*a, **k), 5))
    config = TrainConfig(labels="five", data=hub_folder, model=tiny_encoder, output_dir=str(tmp_path / "nan"),
                         epochs=1, batch_size=8, max_length=16, progress=False, save_steps=2)
    with pytest.raises(NonFiniteLoss, match=r"NaN loss at step 5 \(epoch 1, batch 5 of 12\).*checkpoint-00000004"):
        nerlib.train(config)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(config.output_dir)][-1] == "checkpoint-00000004"


def test_fp16_scaler_skips_are_counted_and_endless_skipping_stops(hub_folder, tiny_encoder, tmp_path, monkeypatch):
    import nerlib.loop as loop

    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch without torch.amp.GradScaler")
    # fp16 autocast with loss scaling on the CPU, and a model that always overflows.
    monkeypatch.setattr(loop, "resolve_precision", lambda device, amp, dtype: Precision(device, torch.float16))
    original = loop.load_model_for_training
    monkeypatch.setattr(loop, "load_model_for_training", lambda *a, **k: _nan_after(original(*a, **k), 1))
    config = TrainConfig(labels="five", data=hub_folder, model=tiny_encoder, output_dir=str(tmp_path / "fp16"),
                         epochs=1, batch_size=2, max_length=16, progress=False, amp=True)
    with pytest.raises(NonFiniteLoss, match=r"skipped 25 steps in a row up to step 25"):
        nerlib.train(config)


def test_overwrite_and_resume_exclude_each_other():
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(resume=True, overwrite=True)


def test_checkpoint_state_loads_with_weights_only(reference):
    _, uninterrupted = reference
    last = ckpt.list_checkpoints(str(uninterrupted))[-1]
    for name in ckpt.TENSOR_STATES:
        torch.load(os.path.join(last, f"{name}.pt"), weights_only=True)  # raises on pickled objects
    assert ckpt.verify(last)[ckpt.MODEL_FILE]["size"] > 0


# --- a full disk ------------------------------------------------------------------------------------

def _small_run(data, model, out, **changes) -> TrainConfig:
    settings = dict(labels="five", data=data, model=model, output_dir=str(out), epochs=1, batch_size=8, max_length=16,
                    progress=False, save_steps=1, keep_checkpoints=5)
    return TrainConfig(**{**settings, **changes})


# What safetensors raises on a full disk (seen on a full tmpfs). It writes a temporary file and
# renames it over its target, so it cannot be pointed at /dev/full (that would replace the device).
SAFETENSORS_FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


def _half_written_then_full(path):
    from safetensors import SafetensorError

    with open(path, "wb") as handle:
        handle.write(b"\0" * 100)
    raise SafetensorError(SAFETENSORS_FULL_DISK)


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, "optimizer.pt", "rng.pt", ckpt.STATE_FILE, ckpt.MARKER])
def test_full_disk_while_writing_a_checkpoint_removes_it_and_keeps_the_last_good_one(hub_folder, tiny_encoder,
                                                                                    tmp_path, monkeypatch, name):
    # The file `name` of the third checkpoint cannot be written: the files nerlib writes itself go
    # to /dev/full, where every write fails with the kernel's ENOSPC, as on a full disk.
    def full(path) -> bool:
        return os.path.basename(path) == name and f"{ckpt.PREFIX}00000003-" in path

    real_open, real_save = open, ckpt.save_safetensors
    monkeypatch.setattr(ckpt, "open", lambda path, mode="r", *args, **kwargs: real_open(
        "/dev/full" if full(path) and "w" in mode else path, mode, *args, **kwargs), raising=False)
    monkeypatch.setattr(ckpt, "save_safetensors", lambda model, path: _half_written_then_full(path) if full(path)
                        else real_save(model, path))
    out = str(tmp_path / "out")
    with pytest.raises(SaveError) as caught:
        nerlib.train(_small_run(hub_folder, tiny_encoder, out))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{ckpt.checkpoint_path(out, 3)}: cannot write the checkpoint ({name}: "
                              f"No space left on device")
    assert message.endswith(f"the last complete checkpoint is {ckpt.checkpoint_path(out, 2)}")
    assert sorted(os.listdir(ckpt.checkpoints_root(out))) == ["checkpoint-00000001", "checkpoint-00000002"]
    found = ckpt.find_resumable(out)
    assert found.path == ckpt.checkpoint_path(out, 2) and not found.skipped


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "nerlib_config.json"])
def test_full_disk_while_saving_the_model_keeps_the_model_saved_before(hub_folder, tiny_encoder, tmp_path,
                                                                      monkeypatch, name):
    import nerlib.loop as loop

    shutil.rmtree(os.path.join(hub_folder, "val"))  # without validation every epoch is the best, and saved
    saves = []
    original = loop.load_model_for_training

    def model_on_a_full_disk(*args, **kwargs):
        model = original(*args, **kwargs)
        save_pretrained = model.save_pretrained

        def save(folder, *save_args, **save_kwargs):
            saves.append(folder)
            if len(saves) < 2:
                return save_pretrained(folder, *save_args, **save_kwargs)
            # The second epoch's model: the weights fail as safetensors fails; the tokenizer
            # (written from Rust) and nerlib's JSON write through a link to /dev/full.
            if name == "model.safetensors":
                _half_written_then_full(os.path.join(folder, name))
            os.symlink("/dev/full", os.path.join(folder, name))
            return save_pretrained(folder, *save_args, **save_kwargs)

        model.save_pretrained = save
        return model

    monkeypatch.setattr(loop, "load_model_for_training", model_on_a_full_disk)
    out = tmp_path / "out"
    with pytest.raises(SaveError) as caught:
        nerlib.train(_small_run(hub_folder, tiny_encoder, out, epochs=2, save_steps=None))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{out}: cannot save the model (No space left on device")
    assert message.endswith(f"the last complete checkpoint is {ckpt.checkpoint_path(str(out), 12)}")
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    # The first epoch's model is still there, whole: the weights its checkpoint holds.
    saved = load_file(str(out / "model.safetensors"))
    epoch_one = load_file(os.path.join(ckpt.checkpoint_path(str(out), 12), ckpt.MODEL_FILE))
    assert saved.keys() == epoch_one.keys()
    assert all(torch.equal(saved[k], epoch_one[k]) for k in saved)
    assert json.loads((out / "nerlib_config.json").read_text())["label_set"] == "five"
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_full_disk_while_writing_the_metrics_is_one_line(hub_folder, tiny_encoder, tmp_path, monkeypatch):
    import nerlib.loop as loop

    real_open = open
    monkeypatch.setattr(loop, "open", lambda path, mode="r", *args, **kwargs: real_open(
        "/dev/full" if os.path.basename(path) == loop.METRICS_FILE and "w" in mode else path, mode, *args, **kwargs),
        raising=False)
    out = tmp_path / "out"
    with pytest.raises(SaveError) as caught:
        nerlib.train(_small_run(hub_folder, tiny_encoder, out, save_steps=None))
    assert str(caught.value) == (f"{out / loop.METRICS_FILE}: cannot write (No space left on device); the model is "
                                 f"saved in {out}")


def _namespace_with_a_tmpfs():
    """`unshare` arguments for a private mount namespace (its mounts vanish with it), or None."""
    if not shutil.which("unshare") or not os.path.exists("/dev/full"):
        return None
    prefix = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run(prefix + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_full_disk_for_real_on_a_tiny_tmpfs(hub_folder, tiny_encoder, tmp_path):
    prefix = _namespace_with_a_tmpfs()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    out, after = tmp_path / "out", tmp_path / "after"
    out.mkdir()
    after.mkdir()
    train = cli_command("train.py", "--data", hub_folder, "--model", tiny_encoder, "--output-dir", out, "--labels",
                        "five", "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--save-steps", "1",
                        "--keep-checkpoints", "1", "--no-progress")
    # 360 KiB: the first checkpoint (about 320 KiB) fits, the second's weights (88 KiB) do not.
    script = (f'mount -t tmpfs -o size=360k tmpfs "$1" && {" ".join(map(shlex.quote, train))}; code=$?; '
              f'cp -a "$1"/. "$2"/; exit $code')
    result = subprocess.run(prefix + ["sh", "-c", script, "sh", str(out), str(after)], cwd=ROOT, env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {ckpt.checkpoint_path(str(out), 2)}: cannot write the checkpoint (")
    assert "(model.safetensors: No space left on device (os error 28))" in last
    assert last.endswith(f"the last complete checkpoint is {ckpt.checkpoint_path(str(out), 1)}")
    assert os.listdir(after / "checkpoints") == ["checkpoint-00000001"]  # the partial one is gone
    assert ckpt.find_resumable(str(after)).path == ckpt.checkpoint_path(str(after), 1)


# --- two runs into one output folder -------------------------------------------------------------------

def test_a_second_run_into_the_same_output_dir_is_refused_and_the_first_finishes_intact(reference, tiny_encoder,
                                                                                       tmp_path):
    data, uninterrupted = reference
    out = tmp_path / "shared"
    args = _train_args(data, tiny_encoder, out)
    first = subprocess.Popen(cli_command("train.py", *args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = out / ckpt.LOCK_FILE
    deadline = time.monotonic() + 240
    while not (lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]):
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for the first run to take the lock"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # hold it inside its run, whatever the machine's speed
    try:
        second = run_cli("train.py", *args)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"train.py: error: {out}: another training run (PID {first.pid}) is using this output folder; wait for it "
        f"to end or choose another --output-dir")
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr
    _same_run(uninterrupted, out)
    assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp")]


HOLD_THE_LOCK = "import sys, time; from nerlib.checkpoint import lock_output_dir; lock_output_dir(sys.argv[1]); " \
                "print('locked', flush=True); time.sleep(600)"


def test_the_lock_names_its_holder_and_is_released_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputDirLocked, match=rf"another training run \(PID {holder.pid}\) is using this"):
            ckpt.lock_output_dir(str(tmp_path))
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the kernel drops the lock
        holder.wait()
    lock = ckpt.lock_output_dir(str(tmp_path))
    assert (tmp_path / ckpt.LOCK_FILE).read_text().split()[0] == str(os.getpid())
    lock.release()


def test_pruning_removes_only_the_temporary_folders_of_dead_processes(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    root = tmp_path / "checkpoints"
    live = root / f".tmp-checkpoint-00000007-{os.getppid()}"  # pytest's parent: alive, and not this process
    dead = root / f".tmp-checkpoint-00000006-{ended.pid}"
    for folder in (live, dead, root / "checkpoint-00000005"):
        os.makedirs(folder)
    ckpt.prune(str(tmp_path), keep=1, protect=None)
    assert sorted(os.listdir(root)) == sorted(["checkpoint-00000005", live.name])
