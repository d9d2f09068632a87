"""What a training run sets up around the loop: its data splits and label set, its output folder
(checked, locked, cleared of what killed runs left), the optimizer and schedule, and the resume
from the folder's newest complete checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import torch

from . import distributed
from .checkpoint import (CheckpointError, SaveError, differences, list_checkpoints, lock_output_dir,
                         remove_stale_temporaries, restore, weight_misfits)
from .config import TrainConfig
from .data import Split, SplitNotFound, all_tags, load_split, single_split_source
from .errors import ConfigError, DataError, NerlibError
from .labels import LabelSet, auto_label_set, multinerd_label_set
from .tracking import check_report_to

logger = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays weight matrices and embeddings only, never biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in one pass on both CPU and CUDA.
    fused = device.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the peak rate over `warmup_steps`, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_label_set(spec: str, splits: list[Split]) -> LabelSet:
    """`auto` reads the labels from the data; anything else names MultiNERD classes."""
    if spec == "auto":
        return auto_label_set(all_tags(splits))
    return multinerd_label_set(spec)


def read_splits(config: TrainConfig) -> tuple[Split, Split | None, Split | None]:
    sources = config.split_sources()
    options = config.read_options()
    if sources["train"] is None:
        raise DataError("no training data: --val/--test name files, but neither --train nor --data is given")
    if sources["train"] == config.data and single_split_source(config.data):
        raise DataError(f"{config.data}: is one file (one split); name the files with --train FILE (and --val FILE, "
                        f"--test FILE), or give --data a folder")
    train_split = load_split(sources["train"], "train", config.lang, options).head(config.max_train_samples)
    optional = []
    for name in ("val", "test"):
        if sources[name] is None:
            logger.warning("no %s split (no --%s FILE); going on without it", name, name)
            optional.append(None)
            continue
        try:
            optional.append(load_split(sources[name], name, config.lang, options).head(config.max_eval_samples))
        except SplitNotFound as exc:
            logger.warning("%s; going on without it", exc)
            optional.append(None)
    return train_split, optional[0], optional[1]


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".nerlib-write-test-{os.getpid()}")  # its own: two runs may probe at once
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"{folder}: output folder cannot be written ({exc.strerror})") from None


def main_writes(world: distributed.World, what: str, write) -> None:
    """Call `write()` on rank 0 only; if it fails there, every rank stops (none waits in a collective for it)."""
    failure = None
    if world.is_main:
        try:
            write()
        except NerlibError as exc:
            failure = exc
    if distributed.any_true(failure is not None, world):
        raise failure or SaveError(f"rank 0 could not {what} (its error says why)")


@contextlib.contextmanager
def claim_output_dir(config: TrainConfig, world: distributed.World):
    """Hold the output folder's lock for the whole run, and check the folder, before anything is written.

    Only rank 0 writes into the folder, so only rank 0 takes the lock: the ranks of one torchrun
    job share the folder and must not lock each other out.
    """
    held = []

    def claim() -> None:
        _check_writable(config.output_dir)
        held.append(lock_output_dir(config.output_dir))
        _prepare_output_dir(config)
        check_report_to(config.report_to)  # rank 0 writes the run log into the folder

    try:
        main_writes(world, "claim the output folder", claim)
        yield
    finally:
        for lock in held:
            lock.release()


def _prepare_output_dir(config: TrainConfig) -> None:
    """Check the folder does not hold another run's checkpoints by accident; clear what killed runs left."""
    remove_stale_temporaries(config.output_dir)
    existing = list_checkpoints(config.output_dir)
    if existing and not (config.resume or config.overwrite):
        raise ConfigError(
            f"{config.output_dir}: holds checkpoints of another run ({len(existing)}); pass --resume to continue "
            f"it or --overwrite to delete them and start over"
        )
    if config.overwrite:
        shutil.rmtree(os.path.join(config.output_dir, "checkpoints"), ignore_errors=True)


def resume(config: TrainConfig, model, optimizer, scheduler, scaler, data_fingerprint: dict,
           world: distributed.World) -> dict | None:
    """Restore the newest complete checkpoint; returns its loop state (`loop.TrainState` as a dict), None
    when there is nothing to resume.

    Under torchrun every rank resumes from rank 0's choice or all refuse together
    (`distributed.agree_on_checkpoint`); the configuration is compared before anything is restored.
    """
    found = distributed.agree_on_checkpoint(config.output_dir, world)
    if found.path is None:
        if found.skipped:
            raise CheckpointError(f"{config.output_dir}: no complete checkpoint to resume from "
                                  f"({'; '.join(found.skipped)}); pass --overwrite to start over")
        logger.info("--resume: no checkpoint in %s yet, starting a new run", config.output_dir)
        return None
    saved = found.checkpoint.trainer_state
    # Compare first, load second: weights of another label set or model must not even be tried.
    changed = differences(TrainConfig.saved_run_settings(saved["config"]), config.run_settings())
    changed += differences({"fingerprint": saved["fingerprint"]}, {"fingerprint": data_fingerprint})
    if changed:
        listing = "; ".join(changed)
        unforcible = _unforcible(found.checkpoint, data_fingerprint["labels"], model)
        if unforcible:
            raise CheckpointError(f"{found.path}: cannot resume with a different configuration or data ({listing}), "
                                  f"not even with --force: {unforcible}")
        if not config.force:
            raise CheckpointError(f"{found.path}: refusing to resume with a different configuration or data "
                                  f"({listing}); pass --force to resume anyway")
        logger.warning("--force: resuming although these differ: %s", listing)
    wanted = [{"initial_lr": group["initial_lr"], "weight_decay": group["weight_decay"]}
              for group in optimizer.param_groups]
    state = restore(found.checkpoint, model, optimizer, scheduler, scaler, rank=world.rank)
    if changed:
        keep_this_runs_rates(optimizer, scheduler, wanted)
    logger.info("resuming from %s (epoch %d, %d batches into it, step %d)", found.path, state["epoch"],
                state["batches_done"], state["global_step"])
    return state


def keep_this_runs_rates(optimizer: torch.optim.Optimizer, scheduler, wanted: list[dict]) -> None:
    """After a forced resume, train with this run's peak learning rate and weight decay.

    The restored optimizer and scheduler states carry the checkpoint's (a changed --lr would
    otherwise be accepted and silently ignored); the schedule goes on from the restored step.
    """
    for group, values in zip(optimizer.param_groups, wanted):
        group.update(values)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports; LambdaLR keeps it there


def _unforcible(checkpoint, labels: list[str], model) -> str | None:
    """Why the checkpoint cannot be loaded into this run at all, whatever --force says; None if it can."""
    saved_labels = checkpoint.trainer_state["fingerprint"].get("labels")
    if isinstance(saved_labels, list) and len(saved_labels) != len(labels):
        return (f"the checkpoint has {len(saved_labels)} labels and this run {len(labels)}, and a different label "
                f"count cannot be forced; start a new run with --overwrite, or resume with the old --labels")
    misfits = weight_misfits(checkpoint, model)
    if misfits:
        return (f"the checkpoint's weights do not fit this model ({'; '.join(misfits[:3])}"
                f"{'; ...' if len(misfits) > 3 else ''})")
    return None
