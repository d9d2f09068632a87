"""Data-parallel training under `torchrun`: process group, rank info, batch sharding, gathers.

Every helper is a no-op in a single process, so the training loop reads the same with one rank
or many. The scheme:

- Every rank builds the same seeded list of *global* batches of `batch_size x world_size` windows,
  and takes the windows `global_batch[rank::world_size]` of each. A run on N ranks with
  `--batch-size B` therefore sees exactly the batches of a one-process run with `--batch-size N*B`,
  and the ranks of a length-grouped batch get windows of similar length (no rank waits for
  another's long windows). A global batch smaller than the world (at most one an epoch) is
  dropped, so every rank runs the same number of steps.
- The loss of a step is the summed loss over the labelled words of the whole step on all ranks,
  divided by that word count; DDP averages gradients over ranks, so each rank scales its share by
  `world_size` (see `loss_scale`).
- Evaluation windows are dealt to ranks by index; each rank predicts its own and the
  `(window index, predictions)` pairs are gathered on every rank, so every word is scored exactly
  once and every rank computes the same metrics (and agrees on the best epoch).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (CHECKPOINTS_DIR, CheckpointError, CorruptCheckpoint, Found, checkpoints_root, find_resumable,
                         local_copy_problem, manifest_digest, read_checkpoint)
from .errors import ConfigError
from .devices import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks of a run.

    Attributes:
        rank: global rank, 0 to size - 1.
        size: number of ranks (1 without torchrun).
        local_rank: rank on this machine; the CUDA device index under torchrun.
        device: the device this rank computes on.
        owns_group: True when `setup` created the process group (and `teardown` destroys it).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """The one rank that prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_rank() -> int:
    """This process's rank as torchrun announces it (`RANK`), 0 without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _distributed_device(name: str, local_rank: int) -> torch.device:
    """`cuda:LOCAL_RANK` when CUDA is asked for (or `auto` finds it), else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ConfigError(f"--device {name}: under torchrun every rank uses cuda:LOCAL_RANK; pass --device cuda "
                          f"(or auto), or --device cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible: "
                          f"--nproc-per-node must not exceed the GPUs of the machine")
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    """The process-group backend for ranks on `device`: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device_name: str = "auto") -> World:
    """Join the process group when started by torchrun; otherwise describe a single process.

    Reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (torchrun sets them, with `MASTER_ADDR` and
    `MASTER_PORT`). The backend follows the device: NCCL on CUDA, gloo on the CPU. A process group
    initialised by the caller is used as it is.

    Args:
        device_name: `--device`: auto, cpu, cuda or cuda:N (cuda:N only in a single process).

    Returns:
        The rank, world size, device, and whether this call created the process group.

    Raises:
        ConfigError: a device that cannot serve this rank.
    """
    already = dist.is_available() and dist.is_initialized()
    size = dist.get_world_size() if already else int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device_name))
    rank = dist.get_rank() if already else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = _distributed_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not already:
        # torch.distributed.nn.functional binds the world group as a default argument of its
        # functions when it is first imported; DistributedDataParallel imports it. Imported after
        # init_process_group, it would keep the group alive after destroy_process_group, and the
        # group's sockets and threads would be torn down during interpreter shutdown, racing with
        # it and with the other ranks (the SIGABRT at exit of docs/distributed.md). Imported now,
        # it binds None, and `teardown` really frees the group.
        # (Imported under another name: `import torch.distributed.nn` would make `torch` a local
        # variable of this function, unbound where `torch.cuda.set_device` runs above.)
        import torch.distributed.nn as _bind_no_group  # noqa: F401

        if device.type == "cuda":
            # device_id binds the NCCL communicator to this rank's GPU at once (no guessing later).
            dist.init_process_group(backend_for(device), device_id=device)
        else:
            dist.init_process_group(backend_for(device))
    logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank, size, local_rank, device,
                dist.get_backend())
    return World(rank=rank, size=size, local_rank=local_rank, device=device, owns_group=not already)


def teardown(world: World, finished: bool = True) -> None:
    """Leave the process group if `setup` created it; every rank calls this on every path.

    After a run that ended normally on every rank (`finished`), the ranks first meet at a barrier
    and wait for their device, so that no rank destroys its side of the group while another is
    still writing its files or has a collective in flight with it. After an error the group is
    destroyed at once: the other ranks may never reach a barrier (torchrun stops them).

    Args:
        world: what `setup` returned.
        finished: the run returned normally (False on an exception or an interruption).
    """
    if not (world.owns_group and dist.is_initialized()):
        return
    try:
        if finished:
            dist.barrier()
            if world.device.type == "cuda":
                torch.cuda.synchronize(world.device)
    except RuntimeError as exc:  # another rank left first (its own error is what torchrun reports)
        logger.warning("rank %d: not every rank reached the end of the run: %s", world.rank, exc)
    finally:
        # The DDP wrapper's reducer holds the group too, and a reference cycle can keep the wrapper
        # alive after the loop returned (drawing the plots leaves one holding the loop's frame):
        # collect it, or destroy_process_group leaves the group to be torn down at interpreter exit.
        gc.collect()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun, the model itself otherwise.

    Keep the unwrapped model for saving, evaluation and clipping: the wrapper only trains.
    """
    if not world.distributed:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def gradient_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's all-reduce on the micro-batches before the last of an accumulation group."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def seed_rank(seed: int, world: World) -> None:
    """Give each rank its own dropout stream (the weights are already equal on every rank)."""
    if world.distributed:
        torch.manual_seed(seed + world.rank)


def shard_batches(batches: Sequence[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's share of each global batch: `batch[rank::world_size]`.

    Every rank gets the same number of steps: a global batch with fewer windows than ranks (only
    the last, short batch can be) is dropped, as it would leave some rank with nothing to do.

    Args:
        batches: the global batches of an epoch, the same list on every rank.
        rank: this rank.
        world_size: number of ranks.

    Returns:
        One index array a step; the shares of all ranks are disjoint and cover every kept batch.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return [batch[rank::world_size] for batch in kept_batches(batches, world_size)]


def kept_batches(batches: Sequence[np.ndarray], world_size: int) -> list[np.ndarray]:
    """The global batches `shard_batches` deals out (those with at least one window per rank), in order."""
    return [np.asarray(batch) for batch in batches if len(batch) >= world_size]


def num_shared_batches(num_windows: int, global_batch: int, world_size: int) -> int:
    """How many steps a rank runs an epoch (what `shard_batches` keeps), for the schedule."""
    full, tail = divmod(num_windows, global_batch)
    return full + (1 if tail >= world_size else 0)


def _reduce_device(world: World) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    return world.device if world.device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(value: float, world: World) -> float:
    """The sum of `value` over all ranks (`value` itself in a single process)."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_reduce_device(world))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def all_reduce_sum_tensor(values: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `values` summed, in one collective, left on the device (no host read here)."""
    if not world.distributed:
        return values
    reduced = values.to(_reduce_device(world))
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def loss_scale(group_words: int, world: World) -> float:
    """What multiplies a rank's summed loss so the step's gradient is per labelled word of the step.

    `group_words` counts the labelled words of the whole step on all ranks. DDP averages the
    ranks' gradients (divides their sum by the world size), so each rank multiplies by the world
    size: the step then follows the gradient of (loss summed over all ranks) / group_words, the
    gradient of one process running the whole global batch.
    """
    return world.size / group_words


def broadcast_model(model: torch.nn.Module, world: World) -> None:
    """Copy rank 0's weights and buffers into every rank's model (after rank 0 reloaded the best epoch)."""
    if not world.distributed:
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world.distributed:
        dist.barrier()


def any_true(flag: bool, world: World) -> bool:
    """True on every rank when it is true on any (a signal seen by one rank stops all at one step)."""
    if not world.distributed:
        return flag
    return all_reduce_sum(1.0 if flag else 0.0, world) > 0


def broadcast_from_main(value, world: World):
    """Rank 0's `value` on every rank (a picklable object); `value` itself in a single process."""
    if not world.distributed:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value, world: World) -> list:
    """Every rank's `value`, in rank order, on every rank; `[value]` in a single process."""
    if not world.distributed:
        return [value]
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def agree_on_checkpoint(output_dir: str, world: World) -> Found:
    """The checkpoint to resume from: rank 0's choice, which every rank must hold itself.

    Rank 0 picks the newest complete checkpoint of its `output_dir`; every other rank looks for
    the same folder in its own `output_dir` (the same path, on its own machine when the ranks
    share no file system) and checks that it is complete and byte-identical (its manifest digest).
    Either every rank resumes from the same state, or every rank raises the same error: no rank
    starts fresh while others resume, to diverge and then wait for each other forever.

    Returns:
        Rank 0's `Found` (path None: nothing to resume), with this rank's own path.

    Raises:
        CheckpointError: on every rank, naming the ranks that lack the chosen checkpoint.
    """
    if not world.distributed:
        return find_resumable(output_dir)
    choice = None
    if world.is_main:
        try:
            mine = find_resumable(output_dir)
            # Only the name travels: every rank reads the states from its own copy.
            choice = (mine.path, mine.skipped, manifest_digest(mine.path) if mine.path else None, None)
        except CheckpointError as exc:  # the other ranks wait for rank 0's choice: they must hear of it
            choice = (None, (), None, str(exc))
    path, skipped, digest, error = broadcast_from_main(choice, world)
    if error:
        raise CheckpointError(error)
    if path is None:
        return Found(None, skipped)
    name = os.path.basename(path)
    local = os.path.join(checkpoints_root(output_dir), name)
    found, problem = (mine, None) if world.is_main else _read_local_copy(local, digest, skipped)
    problems = all_gather(problem, world)
    lacking = [f"rank {rank} ({why})" for rank, why in enumerate(problems) if why]
    if lacking:
        raise CheckpointError(
            f"{name}: rank 0 resumes from this checkpoint, which {', '.join(lacking)} lack(s) in their "
            f"--output-dir; keep --output-dir on a file system that every machine shares, or copy "
            f"{CHECKPOINTS_DIR}/{name} into it on the machines of those ranks")
    return found


def _read_local_copy(local: str, digest: str, skipped: tuple[str, ...]) -> tuple[Found | None, str | None]:
    """This rank's copy of rank 0's checkpoint, read whole, or why it cannot stand in (never raises:
    every rank must reach the gather that follows, or the ranks that can resume would wait forever)."""
    problem = local_copy_problem(local, digest)
    if problem:
        return None, problem
    try:
        return Found(local, skipped, read_checkpoint(local)), None
    except (CorruptCheckpoint, CheckpointError) as exc:
        return None, str(exc)


def gather_to_main(value, world: World) -> list | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the others); `[value]` in a single process."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
