"""The training loop: AdamW, linear warmup and decay, mixed precision, accumulation, evaluation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .cache import cached_encode, resolve_cache_dir
from .config import TrainConfig
from .data import Split, SplitNotFound, all_tags, load_split, single_split_source
from .checkpoint import (
    TEMPORARY_PREFIX, CheckpointError, SaveError, checkpoint_path, differences, fingerprint,
    list_checkpoints, lock_output_dir, move_files_into, prune, remove_stale_temporaries, restore, rng_state,
    save_checkpoint, weight_misfits, written_or_removed,
)
from .errors import ConfigError, DataError, NerlibError, NonFiniteLoss, TrainingInterrupted
from .features import IGNORE_INDEX, Encoded, collate, length_grouped_batches, padding_efficiency, shuffled_batches
from .kernels import use_cpu_training_settings
from .labels import LabelSet, auto_label_set, multinerd_label_set
from .modeling import NERLIB_CONFIG_FILE, load_model_for_training, load_tokenizer
from .reports import build_error_report, surface_forms, write_reports
from .runtime import (Precision, configure_threads, fp32_matmul_precision, pad_multiple, peak_gpu_memory_mib,
                      release_freed_memory, resolve_precision, seed_everything)
from .scoring import score_by_language, score_predictions
from .tracking import check_report_to, open_run_log

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


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


@dataclass
class Prepared:
    """One split read, mapped to the label set and encoded into windows."""

    split: Split
    encoded: Encoded


def prepare(split: Split, label_set: LabelSet, tokenizer, max_length: int, cache_dir: str | None = None) -> Prepared:
    """Encode a split into windows, through the on-disk cache in `cache_dir` (None: no cache)."""
    return Prepared(split, cached_encode(split, label_set, tokenizer, max_length, cache_dir))


def effective_max_length(requested: int, tokenizer, model) -> int:
    """The window size: what was asked, capped by the model's position embeddings."""
    limits = [requested]
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        limits.append(int(tokenizer_limit))
    return min(limits)


def evaluate_prepared(model, prepared: Prepared, label_set: LabelSet, pad_id: int, batch_size: int,
                      device: torch.device, precision: Precision, strict: bool = False,
                      world: distributed.World | None = None) -> tuple[dict, list[np.ndarray]]:
    """Predict every word of a prepared split and score it; returns (metrics, predicted ids).

    Under torchrun (`world`) the ranks share the windows and every rank gets all predictions.
    """
    predicted = distributed.predict_sharded(model, prepared.encoded, pad_id, batch_size, device, precision.autocast(),
                                            world)
    # seqeval's scores, vectorised for BIO label sets (seqeval itself walks every word in Python).
    metrics = score_predictions(prepared.encoded.gold, predicted, label_set.labels, strict=strict)
    if metrics["words"] != prepared.split.num_words:  # pragma: no cover - guarded by construction
        raise RuntimeError(f"scored {metrics['words']} words of {prepared.split.num_words}")
    per_lang = score_by_language(prepared.encoded.gold, predicted, label_set.labels,
                                 [s.lang for s in prepared.split.sentences], strict=strict)
    if per_lang:
        metrics["per_lang"] = per_lang
    return metrics, predicted


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".nerlib-write-test-{os.getpid()}")  # its own: two runs may probe at once
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"{folder}: output folder cannot be written ({exc.strerror})") from None


def _read_splits(config: TrainConfig) -> tuple[Split, Split | None, Split | None]:
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


def save_model(model, tokenizer, output_dir: str, config: TrainConfig, label_set: LabelSet) -> None:
    """The model with `id2label`, its tokenizer, and nerlib's configuration beside them.

    Everything is written into a temporary folder first and moved into `output_dir` once complete,
    so a failed write leaves the model saved before (an earlier epoch's) as it was.

    Raises:
        SaveError: a file could not be written (a full disk); the temporary folder is removed.
    """
    info = {
        "label_set": label_set.name,
        "labels": list(label_set.labels),
        "remap_multinerd": label_set.remap_multinerd,
        "config": config.to_dict(),
    }
    temporary = os.path.join(output_dir, f"{TEMPORARY_PREFIX}model-{os.getpid()}")

    def failed(reason: str) -> str:
        last = list_checkpoints(output_dir)
        return (f"{output_dir}: cannot save the model ({reason}); removed the partial {temporary}; the model saved "
                f"before, if any, is as it was" + (f"; the last complete checkpoint is {last[-1]}" if last else ""))

    with written_or_removed(temporary, failed):
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        with open(os.path.join(temporary, NERLIB_CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
            handle.write("\n")
        move_files_into(temporary, output_dir)


# fp16 loss scaling halves the scale at every skipped step; this many in a row means the run is
# not recovering (the scale has fallen by 2**25) and continuing would waste the machine.
MAX_CONSECUTIVE_SKIPPED = 25


def _check_finite_weights(model: torch.nn.Module, step: int, output_dir: str) -> None:
    """Refuse to go on (and so to save) once a weight is NaN or infinite.

    The loss check sees such weights only at the next step's forward pass (and never those of rows
    no batch uses); this runs before every checkpoint and at the end of every epoch, so a model that
    diverged is never written. One pass over the weights: cheap beside an epoch.

    Raises:
        NonFiniteLoss: naming the step and the first parameter that is not finite.
    """
    named = list(model.named_parameters())
    # One host read for all weights; the name is looked up only when something is wrong.
    finite = torch.stack([torch.isfinite(parameter).all() for _, parameter in named]).tolist()
    for (name, _), ok in zip(named, finite):
        if not ok:
            last = list_checkpoints(output_dir)
            raise NonFiniteLoss(
                f"NaN or infinite weights ({name}) after step {step}; they were not saved"
                + (f"; the last good checkpoint is {last[-1]}" if last else "")
                + "; try a lower --lr or --weight-decay"
            )


class _StopRequest:
    """Signal handler that asks the loop to stop after the current step; a second signal stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning("%s received: finishing the current step, then writing a checkpoint (send again to stop now)",
                       signal.Signals(signum).name)


@contextlib.contextmanager
def _graceful_stop():
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main_writes(world: distributed.World, what: str, write) -> None:
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
def _claim_output_dir(config: TrainConfig, world: distributed.World):
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
        _main_writes(world, "claim the output folder", claim)
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


def _batch_order_digest(batches: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(np.asarray(batch, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _fresh_state(config: TrainConfig, data_fingerprint: dict) -> dict:
    return {
        "epoch": 1,               # the epoch in progress (or the next one, after an epoch-end checkpoint)
        "batches_done": 0,        # micro-batches of that epoch's batch order already trained on
        "global_step": 0,         # optimizer steps
        "best_f1": -1.0,
        "best_epoch": 0,
        "best_checkpoint": None,
        "history": [],
        "epoch_loss": 0.0,        # summed loss of the epoch's steps that updated the weights
        "epoch_loss_words": 0,    # labelled words of those steps (fp16 steps the scaler skipped are left out)
        "epoch_words": 0,
        "epoch_seconds": 0.0,
        "train_words": 0,
        "train_seconds": 0.0,
        "skipped_steps": 0,
        "loss_by_step": [],
        "config": config.run_settings(),
        "fingerprint": data_fingerprint,
    }


def _resume(config: TrainConfig, model, optimizer, scheduler, scaler, data_fingerprint: dict,
            world: distributed.World) -> dict | None:
    """Restore the newest complete checkpoint; None when there is nothing to resume.

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
        _keep_this_runs_rates(optimizer, scheduler, wanted)
    state.setdefault("epoch_loss_words", state["epoch_words"])  # checkpoints of earlier versions
    logger.info("resuming from %s (epoch %d, %d batches into it, step %d)", found.path, state["epoch"],
                state["batches_done"], state["global_step"])
    return state


def _keep_this_runs_rates(optimizer: torch.optim.Optimizer, scheduler, wanted: list[dict]) -> None:
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


def train(config: TrainConfig) -> dict:
    """Fine-tune `config.model` for NER on `config.data` and save the best epoch's model.

    The validation split is scored after every epoch; the epoch with the best validation F1 is
    kept in `config.output_dir` and scored on the test split at the end. A checkpoint is written
    atomically at the end of every epoch (and every `save_steps` steps); `resume` continues from
    the newest complete one, bit for bit on a CPU in fp32.

    Args:
        config: every option of the run.

    Returns:
        The contents of `metrics.json`: per-epoch validation metrics, final `test` metrics
        (None without a test split), words scored, wall time, training words/s and the loss of
        every optimizer step; plus `reports`, the model card and plots written beside it.

    Started by `torchrun`, every rank calls this: it joins the process group (NCCL on CUDA, gloo
    on the CPU), trains its share of each batch with DDP, and leaves the group at the end if it
    created it. Only rank 0 writes files; every rank returns the same metrics.

    Raises:
        NerlibError: bad data, flags, model or output folder (one-line messages);
            TrainingInterrupted after SIGTERM/SIGINT (a checkpoint was written);
            NonFiniteLoss on a NaN/inf loss or endless fp16 overflow.
    """
    # The fast tokenizer's threads and a later fork (a DataLoader worker, a subprocess) deadlock;
    # train.py sets this too, but a script calling nerlib.train() goes through here only.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    world = distributed.setup(config.device)
    finished = False
    try:
        with _claim_output_dir(config, world), fp32_matmul_precision(world.device, config.tf32) as tf32:
            metrics = _train(config, world, tf32)
        finished = True
        return metrics
    finally:
        distributed.teardown(world, finished)


def _train(config: TrainConfig, world: distributed.World, tf32: bool) -> dict:
    started = time.perf_counter()
    configure_threads(config.num_threads)
    device = world.device
    precision = resolve_precision(device, config.amp, config.amp_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # metrics.json reports this run's peak
    output_dir = config.output_dir

    train_split, val_split, test_split = _read_splits(config)
    label_set = resolve_label_set(config.labels, [s for s in (train_split, val_split, test_split) if s])
    logger.info("label set %s", label_set.describe())

    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    model = load_model_for_training(config.model, label_set, config.trust_remote_code).to(device)
    if device.type == "cpu":
        use_cpu_training_settings(model)
    distributed.seed_rank(config.seed, world)
    max_length = effective_max_length(config.max_length, tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    cache_dir = resolve_cache_dir(config.cache, config.cache_dir)
    train_data = prepare(train_split, label_set, tokenizer, max_length, cache_dir)
    val_data = prepare(val_split, label_set, tokenizer, max_length, cache_dir) if val_split else None
    test_data = prepare(test_split, label_set, tokenizer, max_length, cache_dir) if test_split else None
    for prepared in (train_data, val_data, test_data):
        if prepared:
            logger.info("%s: %d sentences, %d words, %d windows (%s)", prepared.split.name,
                        len(prepared.split.sentences), prepared.split.num_words, len(prepared.encoded),
                        prepared.split.source)

    encoded = train_data.encoded
    lengths = encoded.lengths
    words_per_window = encoded.words_per_window()
    # Batches are global (batch_size windows on each of world.size ranks); each rank trains its share.
    global_batch = config.batch_size * world.size
    batches_per_epoch = distributed.num_shared_batches(len(encoded), global_batch, world.size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, device)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    scaler = precision.grad_scaler()
    pad_to = pad_multiple(device)

    data_fingerprint = fingerprint((train_split, val_split, test_split), tokenizer, label_set.labels)
    data_fingerprint["world_size"] = world.size  # batch order and RNG streams depend on it
    state = _resume(config, model, optimizer, scheduler, scaler, data_fingerprint, world) if config.resume else None
    state = state or _fresh_state(config, data_fingerprint)
    # Wrapped after the resume: DDP starts by copying rank 0's weights to every rank.
    # `model` stays the unwrapped model (saved, evaluated, clipped); `train_model` runs the training steps.
    train_model = distributed.wrap_model(model, world)
    logger.info("training on %s (%s): %d epochs x %d steps, batch %d x accumulation %d, lr %g, warmup %d steps",
                device, precision.name, config.epochs, steps_per_epoch, config.batch_size, config.grad_accum,
                config.lr, warmup_steps)
    if world.distributed:
        logger.info("global batch %d windows per step: %d per device x world size %d x accumulation %d",
                    global_batch * config.grad_accum, config.batch_size, world.size, config.grad_accum)

    def checkpoint() -> str:
        _check_finite_weights(model, state["global_step"], output_dir)
        # Every rank's RNG state travels to rank 0, which alone writes the checkpoint.
        rank_rngs = distributed.gather_to_main(rng_state(device), world)
        path = checkpoint_path(output_dir, state["global_step"])

        def write() -> None:
            save_checkpoint(output_dir, state["global_step"], model, optimizer, scheduler, scaler, state,
                            rank_rngs if world.distributed else None)
            prune(output_dir, config.keep_checkpoints, state["best_checkpoint"])

        _main_writes(world, f"write {path}", write)
        return path

    done_batches = (state["epoch"] - 1) * batches_per_epoch + state["batches_done"]
    bar = tqdm(total=batches_per_epoch * config.epochs, initial=done_batches, desc="train", unit="batch",
               disable=not (config.progress and world.is_main), dynamic_ncols=True)
    consecutive_skipped = 0
    model.train()
    run_log = open_run_log(output_dir, config.report_to, world.is_main, state["global_step"] if config.resume else None)
    with _graceful_stop() as stop, run_log:
        while state["epoch"] <= config.epochs:
            epoch = state["epoch"]
            if config.group_by_length:
                batches = length_grouped_batches(lengths, global_batch, config.seed, epoch)
            else:
                batches = shuffled_batches(len(encoded), global_batch, config.seed, epoch)
            order_digest = _batch_order_digest(batches)
            # The labelled words of each global batch (all ranks' shares): every rank counts a
            # step's words itself, with no collective.
            global_words = [int(words_per_window[b].sum()) for b in distributed.kept_batches(batches, world.size)]
            batches = distributed.shard_batches(batches, world.rank, world.size)
            epoch_padding = padding_efficiency(lengths, batches, pad_to)
            segment_started = time.perf_counter()
            for group_start in range(state["batches_done"], len(batches), config.grad_accum):
                group = batches[group_start:group_start + config.grad_accum]
                # Normalise by the labelled words of the whole accumulation group, so every word
                # weighs the same however the group's batches are cut.
                # Under torchrun: the words of the group on all ranks (distributed.loss_scale says why).
                group_words = sum(global_words[group_start:group_start + len(group)])
                group_loss = torch.zeros((), device=device)  # summed on the device: no host read a micro-batch
                for micro, batch_indices in enumerate(group):
                    batch = collate([encoded.input_ids[i] for i in batch_indices],
                                    [encoded.labels[i] for i in batch_indices], pad_id, pad_to)
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with distributed.gradient_sync(train_model, sync=micro == len(group) - 1):
                        with precision.autocast():
                            logits = train_model(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits
                        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                                   ignore_index=IGNORE_INDEX, reduction="sum")
                        scaler.scale(loss_sum * distributed.loss_scale(group_words, world)).backward()
                    group_loss += loss_sum.detach()
                overflow = torch.zeros((), device=device)
                if config.max_grad_norm > 0 or precision.uses_scaler:
                    scaler.unscale_(optimizer)
                    # Under fp16 the norm is taken even without clipping: a non-finite norm is what
                    # makes the scaler skip the update, known here without reading its scale.
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
                    if precision.uses_scaler:
                        overflow = (~torch.isfinite(grad_norm)).float()
                # One collective and one host read a step: the step's loss on all ranks (every
                # rank sees the same value, so all stop together on a non-finite loss), whether
                # the gradients overflowed, and whether any rank was asked to stop.
                # (torch.full fills on the device; a tensor made from a Python number would be a
                # blocking copy from the host.)
                stop_vote = torch.full((), float(stop.signal is not None), device=device)
                step_values = torch.stack([group_loss, overflow, stop_vote])
                group_loss, overflow, stop_votes = distributed.all_reduce_sum_tensor(step_values, world).tolist()
                step = state["global_step"] + 1
                if not math.isfinite(group_loss) and not precision.uses_scaler:
                    last = list_checkpoints(output_dir)
                    raise NonFiniteLoss(
                        f"{'NaN' if math.isnan(group_loss) else 'infinite'} loss at step {step} (epoch {epoch}, "
                        f"batch {group_start + 1} of {len(batches)}); the weights were not updated"
                        + (f"; the last good checkpoint is {last[-1]}" if last else "")
                        + "; try a lower --lr, or check the data of that batch"
                    )
                step_lr = scheduler.get_last_lr()[0]  # the rate this step uses; the scheduler moves on below
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                skipped = overflow > 0
                if skipped:
                    # The scaler found inf/NaN gradients, skipped this update and lowered the scale;
                    # the step is counted, its loss kept out of the averages.
                    state["skipped_steps"] += 1
                    consecutive_skipped += 1
                    if consecutive_skipped >= MAX_CONSECUTIVE_SKIPPED:
                        raise NonFiniteLoss(
                            f"fp16 loss scaling skipped {consecutive_skipped} steps in a row up to step {step} "
                            f"(scale now {scaler.get_scale():g}): the gradients overflow at any scale; "
                            f"use --amp-dtype bf16, a lower --lr, or no --amp"
                        )
                else:
                    consecutive_skipped = 0
                    state["epoch_loss"] += group_loss
                    state["epoch_loss_words"] += group_words
                    state["loss_by_step"].append([step, group_loss / group_words])
                state["global_step"] = step
                state["batches_done"] = group_start + len(group)
                state["epoch_words"] += group_words
                bar.update(len(group))
                seconds = state["train_seconds"] + state["epoch_seconds"] + time.perf_counter() - segment_started
                postfix = {"loss": f"{group_loss / group_words:.4f}", "lr": f"{scheduler.get_last_lr()[0]:.2e}",
                           "words/s": f"{(state['train_words'] + state['epoch_words']) / seconds:.0f}"}
                if state["skipped_steps"]:
                    postfix["skipped"] = state["skipped_steps"]
                bar.set_postfix(postfix, refresh=False)
                if not skipped:  # a skipped step's loss (often inf or NaN) stays out of the log too
                    run_log.step(step, epoch, group_loss / group_words, step_lr,
                                 (state["train_words"] + state["epoch_words"]) / seconds)
                save_now = config.save_steps and step % config.save_steps == 0
                stopping = stop_votes > 0  # all ranks stop at one step
                if (save_now or stopping) and state["batches_done"] < len(batches):
                    state["epoch_seconds"] += time.perf_counter() - segment_started
                    segment_started = time.perf_counter()
                    path = checkpoint()
                    if stopping:
                        bar.close()
                        raise TrainingInterrupted(_interrupted_message(stop.signal or signal.SIGTERM, step, path))
            state["epoch_seconds"] += time.perf_counter() - segment_started
            _check_finite_weights(model, state["global_step"], output_dir)  # before evaluating and saving
            if device.type == "cpu":
                release_freed_memory()  # what the steps kept for reuse, before validation and saving
            # None when the scaler skipped every step of the epoch: metrics.json holds no NaN.
            train_loss = state["epoch_loss"] / state["epoch_loss_words"] if state["epoch_loss_words"] else None
            record = {"epoch": epoch, "train_loss": train_loss,
                      "train_words_per_s": state["epoch_words"] / max(state["epoch_seconds"], 1e-9),
                      "batch_order": order_digest, "padding_efficiency": epoch_padding}
            if state["skipped_steps"]:
                record["skipped_steps_so_far"] = state["skipped_steps"]
            loss_text = "every step skipped" if train_loss is None else f"{train_loss:.4f}"
            if val_data is not None:
                record["val"], _ = evaluate_prepared(model, val_data, label_set, pad_id, config.eval_batch_size,
                                                     device, precision, world=world)
                f1 = record["val"]["f1"]
                logger.info("epoch %d: loss %s, val f1 %.4f (precision %.4f, recall %.4f, %d words)", epoch,
                            loss_text, f1, record["val"]["precision"], record["val"]["recall"],
                            record["val"]["words"])
            else:
                f1 = float(epoch)  # no validation split: the last epoch is the best
                logger.info("epoch %d: loss %s", epoch, loss_text)
            run_log.epoch(epoch, state["global_step"], record["train_loss"], record.get("val"))
            state["history"].append(record)
            state["train_words"] += state["epoch_words"]
            state["train_seconds"] += state["epoch_seconds"]
            state.update(epoch=epoch + 1, batches_done=0, epoch_loss=0.0, epoch_loss_words=0, epoch_words=0,
                         epoch_seconds=0.0)
            improved = f1 > state["best_f1"]
            if improved:
                state["best_f1"], state["best_epoch"] = f1, epoch
                _main_writes(world, "save the model",
                             lambda: save_model(model, tokenizer, output_dir, config, label_set))
                state["best_checkpoint"] = f"checkpoint-{state['global_step']:08d}"
            path = checkpoint()
            if distributed.any_true(stop.signal is not None, world) and epoch < config.epochs:
                bar.close()
                raise TrainingInterrupted(_interrupted_message(stop.signal or signal.SIGTERM, state["global_step"],
                                                               path))
    bar.close()

    best_epoch = state["best_epoch"]
    if best_epoch != config.epochs:
        logger.info("reloading epoch %d, the best by validation f1", best_epoch)
        distributed.barrier(world)
        if world.is_main:
            model = load_model_for_training(output_dir, label_set, config.trust_remote_code).to(device)
        distributed.broadcast_model(model, world)
    test_metrics, test_predicted, test_seconds = None, None, 0.0
    if test_data is not None:
        test_started = time.perf_counter()
        test_metrics, test_predicted = evaluate_prepared(model, test_data, label_set, pad_id, config.eval_batch_size, device,
                                            precision, world=world)
        test_seconds = time.perf_counter() - test_started
        logger.info("test: f1 %.4f, scored %d of %d words", test_metrics["f1"], test_metrics["words"],
                    test_split.num_words)
    history = state["history"]
    metrics = {
        "label_set": label_set.name,
        "labels": list(label_set.labels),
        "precision_mode": precision.name,
        "tf32": tf32,
        "peak_gpu_memory_mib": peak_gpu_memory_mib(device),
        "device": str(device),
        "world_size": world.size,
        "best_epoch": best_epoch,
        "epochs": history,
        "val": history[best_epoch - 1].get("val"),
        "test": test_metrics,
        "test_words_in_split": test_split.num_words if test_split else 0,
        "train_words": state["train_words"],
        "train_seconds": state["train_seconds"],
        "train_words_per_s": state["train_words"] / state["train_seconds"] if state["train_seconds"] else 0.0,
        "test_seconds": test_seconds,
        "test_words_per_s": test_metrics["words"] / test_seconds if test_metrics else 0.0,
        "train_loss_by_step": state["loss_by_step"],
        "skipped_steps": state["skipped_steps"],
        "wall_time_s": time.perf_counter() - started,
        "output_dir": output_dir,
    }
    if world.is_main:
        metrics_path = os.path.join(output_dir, METRICS_FILE)
        try:
            with open(metrics_path, "w", encoding="utf-8") as handle:
                json.dump(metrics, handle, indent=2)
                handle.write("\n")
        except OSError as exc:
            raise SaveError(f"{metrics_path}: cannot write ({exc.strerror}); the model is saved in {output_dir}") \
                from None
        error_report = None
        if test_data is not None:
            error_report = build_error_report(
                test_split.sentences, test_data.encoded.gold, test_predicted, label_set,
                np.bincount(test_data.encoded.sentence_index, minlength=len(test_split.sentences)),
                surface_forms(train_split.sentences, train_data.encoded.gold, label_set), output_dir, config.model,
                config.data)
        metrics["reports"] = write_reports(output_dir, config.to_dict(), label_set, metrics,
                                           test_data.encoded.gold if test_data else None, test_predicted, error_report)
    return metrics


def _interrupted_message(signum: int, step: int, path: str) -> str:
    return (f"{signal.Signals(signum).name} after step {step}; checkpoint written to {path}; "
            f"resume with the same command plus --resume")
