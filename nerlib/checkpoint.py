"""Atomic checkpoints of the whole training state, and finding the one to resume from.

A checkpoint is a folder `checkpoints/checkpoint-00000123` (the optimizer step) holding the model
weights as safetensors, the optimizer, scheduler and scaler states, every RNG state, and
`trainer_state.json` (epoch, position in the epoch's batch order, best F1, history, the
configuration and the data fingerprint). It is written into a temporary folder, each file flushed
and fsynced, then renamed into place; `COMPLETE` is written last and lists every file with its
size and SHA-256, so a folder without it is incomplete and a file that does not match it is
corrupt. Non-tensor state is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from .errors import NerlibError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "checkpoint-"
MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
TENSOR_STATES = ("optimizer", "scheduler", "scaler", "rng")
REQUIRED_FILES = (MODEL_FILE, STATE_FILE) + tuple(f"{name}.pt" for name in TENSOR_STATES)
REQUIRED_STATE_KEYS = ("epoch", "batches_done", "global_step", "best_f1", "best_epoch", "history", "config",
                       "fingerprint")


class CheckpointError(NerlibError):
    """A checkpoint cannot be used to resume: missing state, or nothing complete to resume from."""


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its COMPLETE manifest (a truncated write, a bad disk)."""


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from and what was skipped on the way to it."""

    path: str | None
    skipped: tuple[str, ...]


def checkpoints_root(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINTS_DIR)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some file systems cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG the run draws from, in types `torch.load(weights_only=True)` accepts.

    On a CUDA `device`, its own generator only (`cuda`): not every visible GPU's, which a resume
    with fewer visible GPUs could not restore and one on another GPU would restore wrongly.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None, source: str = "rng.pt") -> None:
    """Restore what `rng_state` saved; the CUDA generator into the run's own `device`.

    A CUDA state saved on one GPU continues on whichever GPU the resumed run uses. Checkpoints of
    earlier nerlib versions hold a list with every visible GPU's state: the entry of the run's
    device index is restored.

    Raises:
        CheckpointError: such a list has no entry for the run's device index.
    """
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return  # a CUDA state saved before a move to the CPU has nothing to go into
    cuda = state.get("cuda")
    if cuda is None:
        logger.warning("%s: no CUDA RNG state (saved without CUDA); dropout on %s continues from its seed",
                       source, device)
        return
    if isinstance(cuda, (list, tuple)):  # every visible GPU's state, as earlier versions saved it
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            raise CheckpointError(f"{source}: holds the CUDA RNG states of {len(cuda)} GPU(s) (an earlier nerlib), "
                                  f"none for cuda:{index}; resume on one of cuda:0-{len(cuda) - 1}, or pass "
                                  f"--overwrite to start over")
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_path(output_dir: str, step: int) -> str:
    """The folder of the checkpoint of optimizer step `step`."""
    return os.path.join(checkpoints_root(output_dir), f"{PREFIX}{step:08d}")


def save_checkpoint(output_dir: str, step: int, model, optimizer, scheduler, scaler, trainer_state: dict,
                    rank_rngs: list[dict] | None = None) -> str:
    """Write a complete checkpoint atomically; returns its folder.

    Args:
        output_dir: the run's output folder (checkpoints go under `checkpoints/`).
        step: the optimizer step, which names the folder.
        model: the unwrapped model whose weights are saved.
        optimizer, scheduler, scaler: their `state_dict()`s are saved.
        trainer_state: JSON-serialisable loop state (see REQUIRED_STATE_KEYS).
        rank_rngs: under torchrun, the RNG state of every rank (each draws its own dropout).
    """
    from safetensors.torch import save_model

    root = checkpoints_root(output_dir)
    os.makedirs(root, exist_ok=True)
    final = checkpoint_path(output_dir, step)
    temporary = os.path.join(root, f".tmp-{PREFIX}{step:08d}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    save_model(model, os.path.join(temporary, MODEL_FILE))
    torch.save(optimizer.state_dict(), os.path.join(temporary, "optimizer.pt"))
    torch.save(scheduler.state_dict(), os.path.join(temporary, "scheduler.pt"))
    torch.save(scaler.state_dict(), os.path.join(temporary, "scaler.pt"))
    rng = rng_state(next(model.parameters()).device)
    if rank_rngs is not None:
        rng["ranks"] = rank_rngs
    torch.save(rng, os.path.join(temporary, "rng.pt"))
    with open(os.path.join(temporary, STATE_FILE), "w", encoding="utf-8") as handle:
        json.dump(trainer_state, handle, indent=2)
    manifest = {}
    for name in REQUIRED_FILES:
        path = os.path.join(temporary, name)
        _fsync_file(path)
        manifest[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    marker = os.path.join(temporary, MARKER)
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(temporary)
    if os.path.exists(final):  # a step saved twice (epoch end after --save-steps): replace it
        shutil.rmtree(final)
    os.rename(temporary, final)
    _fsync_dir(root)
    return final


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint folders with a COMPLETE marker, oldest first (temporary folders excluded)."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
    return [os.path.join(root, n) for n in names]


def verify(path: str) -> dict:
    """The manifest of a checkpoint whose files all match it.

    Raises:
        CorruptCheckpoint: no COMPLETE marker, or a file whose size or hash differs.
        CheckpointError: the marker is there but a file the resume needs is missing.
    """
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        raise CorruptCheckpoint("incomplete (no COMPLETE marker)")
    try:
        with open(marker, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"unreadable COMPLETE marker ({exc})") from None
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}, which the resume needs")
    for name, expected in manifest.items():
        file_path = os.path.join(path, name)
        if os.path.getsize(file_path) != expected["size"] or _sha256(file_path) != expected["sha256"]:
            raise CorruptCheckpoint(f"{name} does not match its recorded size and checksum")
    return manifest


def find_resumable(output_dir: str) -> Found:
    """The newest checkpoint that verifies; incomplete or corrupt newer ones are reported and skipped."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify(path)
        except CorruptCheckpoint as exc:
            logger.warning("%s: %s; trying the previous checkpoint", path, exc)
            skipped.append(f"{os.path.basename(path)}: {exc}")
            continue
        return Found(path, tuple(skipped))
    return Found(None, tuple(skipped))


def read_trainer_state(path: str) -> dict:
    """The loop state of a checkpoint that verifies, without restoring anything.

    Raises:
        CorruptCheckpoint: see `verify`.
        CheckpointError: a file or a state key the resume needs is missing.
    """
    verify(path)
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as handle:
        trainer_state = json.load(handle)
    missing = [key for key in REQUIRED_STATE_KEYS if key not in trainer_state]
    if missing:
        raise CheckpointError(f"{path}: {STATE_FILE} is missing {', '.join(missing)}, which the resume needs")
    return trainer_state


def load_checkpoint(path: str, model, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    """Restore model, optimizer, scheduler, scaler and RNG states in place; returns the loop state.

    Under torchrun each rank restores its own RNG state (`rank`); a CUDA generator state goes
    into the device the model is on.

    Raises:
        CheckpointError: a state the resume needs is missing from the checkpoint.
    """
    from safetensors.torch import load_model

    trainer_state = read_trainer_state(path)
    states = {name: torch.load(os.path.join(path, f"{name}.pt"), weights_only=True, map_location="cpu")
              for name in TENSOR_STATES}
    if not {"python", "numpy", "torch"} <= set(states["rng"]):
        raise CheckpointError(f"{path}: rng.pt is missing RNG states ({', '.join(sorted(states['rng']))} present)")
    if scaler.is_enabled() and not states["scaler"]:
        raise CheckpointError(f"{path}: the run uses fp16 loss scaling but the checkpoint has no scaler state")
    device = next(model.parameters()).device
    load_model(model, os.path.join(path, MODEL_FILE), device=str(device))
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    if states["scaler"]:
        scaler.load_state_dict(states["scaler"])
    rng = states["rng"]
    if "ranks" in rng:
        if rank >= len(rng["ranks"]):
            raise CheckpointError(f"{path}: holds RNG states of {len(rng['ranks'])} ranks, none for rank {rank}")
        rng = rng["ranks"][rank]
    set_rng_state(rng, device, os.path.join(path, "rng.pt"))
    return trainer_state


def manifest_digest(path: str) -> str:
    """SHA-256 of a checkpoint's COMPLETE manifest: equal digests mean the same files, byte for byte."""
    return _sha256(os.path.join(path, MARKER))


def local_copy_problem(path: str, digest: str) -> str | None:
    """Why this machine's `path` cannot stand in for the checkpoint whose manifest has `digest`; None if it can."""
    if not os.path.isdir(path):
        return "missing"
    try:
        verify(path)
    except (CorruptCheckpoint, CheckpointError) as exc:
        return str(exc)
    if manifest_digest(path) != digest:
        return "a different checkpoint of the same step"
    return None


def prune(output_dir: str, keep: int, protect: str | None) -> None:
    """Delete all but the newest `keep` checkpoints, never the protected (best) one, and stale temporaries."""
    root = checkpoints_root(output_dir)
    complete = list_checkpoints(output_dir)
    doomed = complete[:-keep] if keep > 0 else complete
    for path in doomed:
        if protect and os.path.basename(path) == os.path.basename(protect):
            continue
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if name.startswith(".tmp-") and not name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def fingerprint(splits, tokenizer, labels) -> dict:
    """What must not change between a run and its resume: data files, tokenizer and labels."""
    data = {}
    for split in splits:
        if split is None:
            continue
        source = split.source
        if os.path.isfile(source):
            data[split.name] = {"file": os.path.basename(source), "sha256": _sha256(source),
                                "sentences": len(split.sentences)}
        else:
            data[split.name] = {"file": source, "sentences": len(split.sentences)}
    from .cache import tokenizer_fingerprint

    return {
        "data": data,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "labels": list(labels),
    }


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every leaf that differs between two nested dicts."""
    result = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            result.extend(differences(a, b, prefix=name + "."))
        elif a != b:
            result.append(f"{name}: {a!r} -> {b!r}")
    return result
