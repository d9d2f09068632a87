"""Atomic checkpoints of the whole training state, and finding the one to resume from.

A checkpoint is a folder `checkpoints/checkpoint-00000123` (the optimizer step) holding the model
weights as safetensors, the optimizer, scheduler and scaler states, every RNG state, and
`trainer_state.json` (epoch, position in the epoch's batch order, best F1, history, the
configuration and the data fingerprint). It is written into a temporary folder, each file flushed
and fsynced, then renamed into place; `COMPLETE` is written last and lists every file with its
size and SHA-256, so a folder without it is incomplete and a file that does not match it is
corrupt. Non-tensor state is loaded with `torch.load(weights_only=True)`.

Reading a checkpoint never ends in a traceback: anything wrong with its files is a
`CorruptCheckpoint` (the resume skips to the previous one) or a `CheckpointError`, both naming the
folder and the file. Writing one that fails (a full disk) removes the temporary folder and raises
`SaveError`. A run holds `lock_output_dir` on its output folder, so two runs never write into one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors

from .cache import tokenizer_fingerprint
from .errors import NerlibError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: runs there are not locked
    fcntl = None

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "checkpoint-"
MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
TENSOR_STATES = ("optimizer", "scheduler", "scaler", "rng")
REQUIRED_FILES = (MODEL_FILE, STATE_FILE) + tuple(f"{name}.pt" for name in TENSOR_STATES)
# Every key of the loop's state (loop._fresh_state) and the types it must hold: a state that lacks
# one cannot be resumed, and one of another type cannot have been written by save_checkpoint.
NUMBER = (int, float)
STATE_KEY_TYPES = {"epoch": int, "batches_done": int, "global_step": int, "best_f1": NUMBER, "best_epoch": int,
                   "best_checkpoint": (str, type(None)), "history": list, "epoch_loss": NUMBER,
                   "epoch_loss_words": int, "epoch_words": int, "epoch_seconds": NUMBER, "train_words": int,
                   "train_seconds": NUMBER, "skipped_steps": int, "loss_by_step": list, "config": dict,
                   "fingerprint": dict}
OPTIONAL_STATE_KEYS = ("epoch_loss_words",)  # absent from earlier versions' checkpoints; the loop fills it in
REQUIRED_STATE_KEYS = tuple(key for key in STATE_KEY_TYPES if key not in OPTIONAL_STATE_KEYS)
LOCK_FILE = ".nerlib.lock"
TEMPORARY_PREFIX = ".tmp-"  # then what is written, and the writer's PID last: `.tmp-checkpoint-00000012-4242`


class CheckpointError(NerlibError):
    """A checkpoint cannot be used to resume: missing state, or nothing complete to resume from."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint that cannot be read: no COMPLETE marker, a damaged manifest, a file that does not
    match it (a truncated write, a bad disk), or a file that does not parse. Resuming skips it."""

    def __init__(self, path: str, name: str | None, why: str) -> None:
        self.path, self.name, self.why = path, name, why
        super().__init__(f"{os.path.join(path, name) if name else path}: {why}")

    @property
    def where(self) -> str:
        """`checkpoint-00000012/optimizer.pt`: the checkpoint and the file at fault."""
        folder = os.path.basename(self.path)
        return f"{folder}/{self.name}" if self.name else folder


class SaveError(NerlibError):
    """A checkpoint or the model could not be written (a full disk, a lost mount); nothing half-written is left."""


class OutputDirLocked(NerlibError):
    """Another process is training into the same output folder."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk and checked, not yet loaded into a model.

    Attributes:
        path: its folder.
        trainer_state: the loop state (`trainer_state.json`), with every key of REQUIRED_STATE_KEYS.
        states: the optimizer, scheduler, scaler and RNG states as `torch.load` returned them.
        weight_shapes: the shape of every tensor in `model.safetensors`, from its header.
    """

    path: str
    trainer_state: dict
    states: dict
    weight_shapes: dict


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from and what was skipped on the way to it."""

    path: str | None
    skipped: tuple[str, ...]
    checkpoint: Checkpoint | None = None


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


def write_failure(exc: BaseException) -> str | None:
    """Why the file system refused a write (a full disk, an I/O error, no permission), or None for other errors.

    Python raises OSError; safetensors and tokenizers write from Rust and raise their own
    exception types, whose message ends in Rust's `(os error N)`.
    """
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    found = _RUST_OS_ERROR.search(str(exc)) if isinstance(exc, Exception) else None
    return found.group(1).strip() if found else None


# "Error while serializing: I/O error: No space left on device (os error 28)" -> the part from the OS.
_RUST_OS_ERROR = re.compile(r"([^:\n]*\(os error \d+\))")


@contextlib.contextmanager
def written_or_removed(temporary: str, describe: Callable[[str], str]) -> Iterator[None]:
    """Create the folder `temporary` for the block to write into; if the block fails, remove it.

    Args:
        temporary: a folder that does not hold anything worth keeping (removed first if it exists).
        describe: makes the one-line message from the reason a write failed.

    Raises:
        SaveError: the file system refused a write (see `write_failure`); any other error is re-raised as it is.
    """
    try:
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        yield
    except BaseException as exc:  # a second Ctrl-C too: no half-written folder is left behind
        shutil.rmtree(temporary, ignore_errors=True)
        reason = write_failure(exc)
        if reason is None:
            raise
        raise SaveError(describe(reason)) from None


def _torch_save(value, path: str) -> None:
    # Through a Python file, not the path: torch's zip writer reports a failed write (a full disk)
    # only as RuntimeError("unexpected pos"), and closing the file then raises the OSError itself.
    with open(path, "wb") as handle:
        torch.save(value, handle)


def _write_json(value, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)


def _replace_folder(source: str, target: str) -> None:
    """Rename `source` to `target`; a `target` already there is moved aside first and deleted last,
    so some complete copy is in place at every moment."""
    aside = None
    if os.path.exists(target):  # a step saved twice (epoch end after --save-steps)
        aside = os.path.join(os.path.dirname(target), f"{TEMPORARY_PREFIX}old-{os.path.basename(target)}-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
    os.rename(source, target)
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


def move_files_into(source: str, target: str) -> None:
    """Fsync every file of the folder `source`, rename each into `target` (replacing files of the same
    name), then remove `source`.

    Each rename is atomic; a reader of `target` sees every file either as it was or as written.
    """
    names = sorted(os.listdir(source))
    for name in names:
        if os.path.isfile(os.path.join(source, name)):
            _fsync_file(os.path.join(source, name))
    for name in names:
        os.replace(os.path.join(source, name), os.path.join(target, name))
    os.rmdir(source)
    _fsync_dir(target)


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

    Raises:
        SaveError: a file could not be written (a full disk): the temporary folder is removed and
            the checkpoints written before are untouched.
    """
    root = checkpoints_root(output_dir)
    final = checkpoint_path(output_dir, step)
    temporary = os.path.join(root, f"{TEMPORARY_PREFIX}{PREFIX}{step:08d}-{os.getpid()}")
    rng = rng_state(next(model.parameters()).device)
    if rank_rngs is not None:
        rng["ranks"] = rank_rngs
    writers: dict[str, Callable[[str], None]] = {
        MODEL_FILE: lambda path: save_safetensors(model, path),
        "optimizer.pt": lambda path: _torch_save(optimizer.state_dict(), path),
        "scheduler.pt": lambda path: _torch_save(scheduler.state_dict(), path),
        "scaler.pt": lambda path: _torch_save(scaler.state_dict(), path),
        "rng.pt": lambda path: _torch_save(rng, path),
        STATE_FILE: lambda path: _write_json(trainer_state, path),
    }
    writing = None  # the file being written, named in the message if the write fails

    def failed(reason: str) -> str:
        last = list_checkpoints(output_dir)
        return (f"{final}: cannot write the checkpoint ({writing + ': ' if writing else ''}{reason}); "
                f"removed the partial {temporary}; "
                + (f"the last complete checkpoint is {last[-1]}" if last else "there is no complete checkpoint yet"))

    with written_or_removed(temporary, failed):
        manifest = {}
        for name, write in writers.items():
            writing = name
            path = os.path.join(temporary, name)
            write(path)
            _fsync_file(path)
            manifest[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
        writing = MARKER  # written last: the manifest of the files above
        _write_json(manifest, os.path.join(temporary, MARKER))
        _fsync_file(os.path.join(temporary, MARKER))
        writing = None
        _fsync_dir(temporary)
        _replace_folder(temporary, final)
        _fsync_dir(root)
    return final


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint folders, oldest first (temporary folders excluded; only complete ones are renamed into place)."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
    return [os.path.join(root, n) for n in names]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _read_json(path: str, name: str):
    try:
        with open(os.path.join(path, name), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CorruptCheckpoint(path, name, f"unreadable ({_first_line(exc)})") from None


def verify(path: str) -> dict:
    """The manifest of a checkpoint whose files all match it.

    Raises:
        CorruptCheckpoint: no COMPLETE marker, a manifest that is not JSON or lacks a size or
            checksum, or a file whose size or hash differs.
        CheckpointError: the marker is there but a file the resume needs is missing.
    """
    if not os.path.isfile(os.path.join(path, MARKER)):
        raise CorruptCheckpoint(path, None, "incomplete (no COMPLETE marker)")
    manifest = _read_json(path, MARKER)
    if not isinstance(manifest, dict):
        raise CorruptCheckpoint(path, MARKER, "not a mapping of file names to sizes and checksums")
    for name, entry in manifest.items():
        if name in ("", ".", "..") or os.path.basename(name) != name or "\0" in name:
            raise CorruptCheckpoint(path, MARKER, f"lists {name!r}, which is not a file of the checkpoint")
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str)):
            raise CorruptCheckpoint(path, MARKER, f"the entry of {name} lacks a size or a SHA-256")
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}, which the resume needs")
    unlisted = [name for name in REQUIRED_FILES if name not in manifest]
    if unlisted:
        raise CorruptCheckpoint(path, MARKER, f"does not list {', '.join(unlisted)}")
    for name, expected in manifest.items():
        file_path = os.path.join(path, name)
        try:
            matches = os.path.getsize(file_path) == expected["size"] and _sha256(file_path) == expected["sha256"]
        except OSError as exc:
            raise CorruptCheckpoint(path, name, f"cannot be read ({exc.strerror})") from None
        if not matches:
            raise CorruptCheckpoint(path, name, "does not match its recorded size and checksum")
    return manifest


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _read_tensor_state(path: str, name: str) -> dict:
    try:
        value = torch.load(os.path.join(path, name), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        called = _UNSUPPORTED_GLOBAL.search(str(exc))
        if called or "Weights only load failed" in str(exc):
            # Loading it anyway would run whatever the pickle names: never, for any checkpoint.
            what = (f"it would call {called.group(1)}" if called
                    else "it holds objects other than tensors and containers")
            raise CorruptCheckpoint(path, name, f"refused by weights-only loading: {what}") from None
        raise CorruptCheckpoint(path, name, f"unreadable ({_first_line(exc)})") from None
    except Exception as exc:  # torch.load raises what its zip and pickle readers raise
        raise CorruptCheckpoint(path, name, f"unreadable ({_first_line(exc)})") from None
    if not isinstance(value, dict):
        raise CorruptCheckpoint(path, name, f"holds a {type(value).__name__}, not a state dictionary")
    return value


def _check_rng(path: str, rng: dict) -> None:
    """Restore `rng` into throwaway generators: a state that would not restore is found before anything is loaded."""
    try:
        random.Random().setstate(_as_tuple(rng["python"]))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.Generator().set_state(rng["torch"])
    except Exception as exc:
        raise CorruptCheckpoint(path, "rng.pt", f"holds an RNG state that cannot be restored ({_first_line(exc)})") \
            from None


def _read_weight_shapes(path: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(os.path.join(path, MODEL_FILE), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error for a damaged header
        raise CorruptCheckpoint(path, MODEL_FILE, f"unreadable ({_first_line(exc)})") from None
    # save_model stores a tensor shared under several names once, and names the others in the metadata.
    for alias, kept in metadata.items():
        if kept in shapes and alias not in shapes:
            shapes[alias] = shapes[kept]
    return shapes


def read_checkpoint(path: str) -> Checkpoint:
    """Read and check every file of a checkpoint, without loading anything into a model.

    Raises:
        CorruptCheckpoint: a file that does not match the manifest, or does not parse as what it should hold.
        CheckpointError: a complete checkpoint without a state the resume needs.
    """
    verify(path)
    trainer_state = _read_json(path, STATE_FILE)
    if not isinstance(trainer_state, dict):
        raise CorruptCheckpoint(path, STATE_FILE, "not a JSON object")
    missing = [key for key in REQUIRED_STATE_KEYS if key not in trainer_state]
    if missing:
        raise CheckpointError(f"{path}: {STATE_FILE} is missing {', '.join(missing)}, which the resume needs")
    wrong = [key for key, kind in STATE_KEY_TYPES.items() if key in trainer_state
             and not isinstance(trainer_state[key], kind)]
    if wrong:
        raise CorruptCheckpoint(path, STATE_FILE, f"{', '.join(wrong)} of the wrong type")
    history = trainer_state["history"]
    if not all(isinstance(record, dict) for record in history) or not 0 <= trainer_state["best_epoch"] <= len(history):
        raise CorruptCheckpoint(path, STATE_FILE, f"its history of {len(history)} epochs does not hold best epoch "
                                              f"{trainer_state['best_epoch']}")
    states = {name: _read_tensor_state(path, f"{name}.pt") for name in TENSOR_STATES}
    rng = states["rng"]
    if not {"python", "numpy", "torch"} <= set(rng):
        raise CheckpointError(f"{path}: rng.pt is missing RNG states ({', '.join(sorted(map(str, rng)))} present)")
    ranks = rng.get("ranks", [])
    if not (isinstance(ranks, list) and all(isinstance(r, dict) for r in ranks)):
        raise CorruptCheckpoint(path, "rng.pt", "its per-rank states are not a list of states")
    for state in (rng, *ranks):
        _check_rng(path, state)
    return Checkpoint(path, trainer_state, states, _read_weight_shapes(path))


def find_resumable(output_dir: str) -> Found:
    """The newest checkpoint that reads back whole; incomplete or corrupt newer ones are reported and skipped."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            checkpoint = read_checkpoint(path)
        except CorruptCheckpoint as exc:
            logger.warning("corrupt checkpoint %s (%s); trying the previous one", path,
                           f"{exc.name}: {exc.why}" if exc.name else exc.why)
            skipped.append(f"{exc.where}: {exc.why}")
            continue
        return Found(path, tuple(skipped), checkpoint)
    return Found(None, tuple(skipped))


def weight_misfits(checkpoint: Checkpoint, model) -> list[str]:
    """How the checkpoint's weights differ in name or shape from `model`'s (empty: they load)."""
    current = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = checkpoint.weight_shapes

    def shape(dims) -> str:
        return "x".join(map(str, dims)) or "scalar"

    misfits = [f"{name}: {shape(saved[name])} saved, {shape(current[name])} now"
               for name in current if name in saved and saved[name] != current[name]]
    misfits += [f"{name} is not in this model" for name in saved if name not in current]
    misfits += [f"{name} is not in the checkpoint" for name in current if name not in saved]
    return misfits


@contextlib.contextmanager
def _loading(path: str, name: str) -> Iterator[None]:
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{os.path.join(path, name)}: cannot be loaded into this run ({_first_line(exc)})") \
            from None


def restore(checkpoint: Checkpoint, model, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    """Load a checkpoint read by `read_checkpoint` into the run; returns the loop state.

    Restores model, optimizer, scheduler, scaler and RNG states in place. Under torchrun each rank
    restores its own RNG state (`rank`).

    Raises:
        CheckpointError: a state the resume needs is missing, or does not fit this run (the
            message names the checkpoint and the file).
    """
    path, states = checkpoint.path, checkpoint.states
    if scaler.is_enabled() and not states["scaler"]:
        raise CheckpointError(f"{path}: the run uses fp16 loss scaling but the checkpoint has no scaler state")
    rng = states["rng"]
    if "ranks" in rng:
        if rank >= len(rng["ranks"]):
            raise CheckpointError(f"{path}: holds RNG states of {len(rng['ranks'])} ranks, none for rank {rank}")
        rng = rng["ranks"][rank]
    misfits = weight_misfits(checkpoint, model)
    if misfits:
        raise CheckpointError(f"{os.path.join(path, MODEL_FILE)}: does not fit this model ({'; '.join(misfits[:3])}"
                              f"{'; ...' if len(misfits) > 3 else ''})")
    device = next(model.parameters()).device
    with _loading(path, MODEL_FILE):
        load_safetensors(model, os.path.join(path, MODEL_FILE), device=str(device))
    with _loading(path, "optimizer.pt"):
        optimizer.load_state_dict(states["optimizer"])
    with _loading(path, "scheduler.pt"):
        scheduler.load_state_dict(states["scheduler"])
    if states["scaler"]:
        with _loading(path, "scaler.pt"):
            scaler.load_state_dict(states["scaler"])
    with _loading(path, "rng.pt"):
        set_rng_state(rng, device, os.path.join(path, "rng.pt"))
    return checkpoint.trainer_state


def load_checkpoint(path: str, model, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    """Read, check and restore a checkpoint (`read_checkpoint`, then `restore`); returns the loop state.

    Raises:
        CorruptCheckpoint: a damaged file; CheckpointError: missing or unfitting state.
    """
    return restore(read_checkpoint(path), model, optimizer, scheduler, scaler, rank)


def _writer_pid(name: str) -> int | None:
    match = re.fullmatch(re.escape(TEMPORARY_PREFIX) + r".*-(\d+)", name)
    return int(match.group(1)) if match else None


def _is_running(pid: int) -> bool:
    if os.name != "posix":  # pragma: no cover - without signal 0, assume it is: never delete a live writer's folder
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary folders in `folder` of writers that are no longer running (a run killed mid-write).

    The writer's PID ends each temporary folder's name; a folder of a process still running, this
    one included, is never touched.
    """
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        pid = _writer_pid(name)
        if pid is None or pid == os.getpid() or _is_running(pid):
            continue
        logger.info("removing %s, left by process %d, which is no longer running", os.path.join(folder, name), pid)
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


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
    complete = list_checkpoints(output_dir)
    doomed = complete[:-keep] if keep > 0 else complete
    for path in doomed:
        if protect and os.path.basename(path) == os.path.basename(protect):
            continue
        shutil.rmtree(path, ignore_errors=True)
    remove_stale_temporaries(checkpoints_root(output_dir))


class OutputLock:
    """An exclusive lock on a run's output folder, held until `release` or the end of the process."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Give the folder free; the lock file stays (deleting it would race a process opening it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no PID in the file while nobody holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_output_dir(output_dir: str) -> OutputLock:
    """Lock `output_dir` for this process, or refuse at once if another process holds it.

    The lock is `flock` on `.nerlib.lock` inside the folder, so the kernel releases it when the
    process ends, killed or not. The file holds the holder's PID and host, for the message of the
    process that is refused.

    Raises:
        OutputDirLocked: another process holds the lock.
        SaveError: the lock file cannot be created.
    """
    path = os.path.join(output_dir, LOCK_FILE)
    if fcntl is None:  # pragma: no cover
        return OutputLock(path, None)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SaveError(f"{path}: cannot create the output folder's lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 200).decode("utf-8", "replace").split()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SaveError(f"{path}: cannot lock the output folder ({exc.strerror})") from None
        who = f"PID {holder[0]}" if holder else "PID not yet written"
        if len(holder) > 1 and holder[1] != socket.gethostname():
            who += f" on {holder[1]}"
        raise OutputDirLocked(f"{output_dir}: another training run ({who}) is using this output folder; wait for "
                              f"it to end or choose another --output-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return OutputLock(path, fd)


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
        elif isinstance(a, list) and isinstance(b, list) and len(a) + len(b) > 8 and a != b:
            result.append(f"{name}: {_list_change(a, b)}")  # label lists: what changed, not both in full
        elif a != b:
            result.append(f"{name}: {a!r} -> {b!r}")
    return result


def _list_change(saved: list, current: list, shown: int = 6) -> str:
    """`11 -> 31 entries (added 'B-BIO', ... and removed ...)` for two long lists."""
    def listed(values: list) -> str:
        return ", ".join(map(repr, values[:shown])) + (", ..." if len(values) > shown else "")

    added = [value for value in current if value not in saved]
    removed = [value for value in saved if value not in current]
    changes = ([f"added {listed(added)}"] if added else []) + ([f"removed {listed(removed)}"] if removed else [])
    return f"{len(saved)} -> {len(current)} entries ({' and '.join(changes) or 'the same, in another order'})"
