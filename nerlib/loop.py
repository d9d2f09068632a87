"""The training loop: AdamW, linear warmup and decay, mixed precision, accumulation, evaluation.

`train` reads as its phases: `setup` (data, model, optimizer, resume), then for every epoch
`train_epoch` (one `train_step` per optimizer step) and `end_epoch` (validation, best model,
checkpoint), then `finish` (reload the best epoch, test, metrics and reports). The run's progress
is one `TrainState`, which is what a checkpoint saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .cache import resolve_cache_dir
from .checkpoint import SaveError, checkpoint_path, fingerprint, list_checkpoints, prune, rng_state, save_checkpoint
from .config import TrainConfig
from .cpu_training import release_freed_memory, use_cpu_training_settings
from .data import Split
from .devices import (Precision, configure_threads, fp32_matmul_precision, pad_multiple, peak_gpu_memory_mib,
                      resolve_precision, seed_everything)
from .errors import NonFiniteLoss, TrainingInterrupted
from .evaluation import evaluate_prepared
from .features import IGNORE_INDEX, collate, length_grouped_batches, padding_efficiency, shuffled_batches
from .inference import Prepared, prepare
from .labels import LabelSet
from .modeling import effective_max_length, load_model_for_training, load_tokenizer, pad_token_id, save_model
from .reports import build_error_report, surface_forms, write_reports
from .run_setup import (build_optimizer, claim_output_dir, linear_schedule, main_writes, read_splits,
                        resolve_label_set, resume)
from .tracking import RunLog, open_run_log

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PHASES = ("startup", "training", "validation", "test")


@dataclass
class TrainState:
    """The run's progress: what a checkpoint saves (`trainer_state.json`) and a resume restores.

    The fields and their order are the checkpoint's keys (`checkpoint.STATE_KEY_TYPES`).
    """

    epoch: int = 1               # the epoch in progress (or the next one, after an epoch-end checkpoint)
    batches_done: int = 0        # micro-batches of that epoch's batch order already trained on
    global_step: int = 0         # optimizer steps
    best_f1: float = -1.0        # the best validation F1 so far (-1: none yet, or no validation split)
    best_epoch: int = 0
    best_checkpoint: str | None = None
    history: list = field(default_factory=list)  # one record an epoch
    epoch_loss: float = 0.0      # summed loss of the epoch's steps that updated the weights
    epoch_loss_words: int = 0    # labelled words of those steps (fp16 steps the scaler skipped are left out)
    epoch_words: int = 0
    epoch_seconds: float = 0.0
    train_words: int = 0
    train_seconds: float = 0.0
    skipped_steps: int = 0
    loss_by_step: list = field(default_factory=list)  # [step, loss] of every step that updated the weights
    config: dict = field(default_factory=dict)        # TrainConfig.run_settings(): a resume must match them
    fingerprint: dict = field(default_factory=dict)   # data, tokenizer and labels: a resume must match them

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        """The state a checkpoint saved (checked by `checkpoint.read_checkpoint`)."""
        values = dict(values)
        values.setdefault("epoch_loss_words", values["epoch_words"])  # checkpoints of earlier versions
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


@dataclass
class _Run:
    """What the phases of one run share: set up once, then read by every step and epoch."""

    config: TrainConfig
    world: distributed.World
    device: torch.device
    precision: Precision
    tf32: bool
    label_set: LabelSet
    tokenizer: object
    model: torch.nn.Module        # unwrapped: saved, evaluated, clipped
    train_model: torch.nn.Module  # DDP-wrapped under torchrun: runs the training steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    splits: tuple[Split, Split | None, Split | None]
    data: tuple[Prepared, Prepared | None, Prepared | None]
    pad_id: int
    pad_to: int
    global_batch: int               # windows a step on all ranks (before accumulation)
    batches_per_epoch: int
    state: TrainState
    started: float
    phase_seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))      # wall clock
    phase_cpu_seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))  # this process's CPU
    consecutive_skipped: int = 0
    bar: tqdm | None = None
    run_log: RunLog | None = None


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
        with claim_output_dir(config, world), fp32_matmul_precision(world.device, config.tf32) as tf32:
            run = setup(config, world, tf32)
            with _graceful_stop() as stop, run.run_log:
                while run.state.epoch <= config.epochs:
                    order_digest, padding = train_epoch(run, stop)
                    end_epoch(run, stop, order_digest, padding)
            run.bar.close()
            metrics = finish(run)
        finished = True
        return metrics
    finally:
        distributed.teardown(world, finished)


def setup(config: TrainConfig, world: distributed.World, tf32: bool) -> _Run:
    """Read and encode the data, load the model, build optimizer and schedule, resume if asked."""
    started, cpu_started = time.perf_counter(), time.process_time()
    configure_threads(config.num_threads)
    device = world.device
    precision = resolve_precision(device, config.amp, config.amp_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # metrics.json reports this run's peak

    splits = read_splits(config)
    label_set = resolve_label_set(config.labels, [s for s in splits if s])
    logger.info("label set %s", label_set.describe())

    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    model = load_model_for_training(config.model, label_set, config.trust_remote_code).to(device)
    if device.type == "cpu":
        use_cpu_training_settings(model)
    distributed.seed_rank(config.seed, world)
    max_length = effective_max_length(config.max_length, tokenizer, model)

    cache_dir = resolve_cache_dir(config.cache, config.cache_dir)
    data = tuple(prepare(split, label_set, tokenizer, max_length, cache_dir) if split else None for split in splits)
    for prepared in data:
        if prepared:
            logger.info("%s: %d sentences, %d words, %d windows (%s)", prepared.split.name,
                        len(prepared.split.sentences), prepared.split.num_words, len(prepared.encoded),
                        prepared.split.source)

    # Batches are global (batch_size windows on each of world.size ranks); each rank trains its share.
    global_batch = config.batch_size * world.size
    batches_per_epoch = distributed.num_shared_batches(len(data[0].encoded), global_batch, world.size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, device)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    scaler = precision.grad_scaler()

    data_fingerprint = fingerprint(splits, tokenizer, label_set.labels)
    data_fingerprint["world_size"] = world.size  # batch order and RNG streams depend on it
    saved = resume(config, model, optimizer, scheduler, scaler, data_fingerprint, world) if config.resume else None
    state = TrainState.from_dict(saved) if saved else TrainState(config=config.run_settings(),
                                                                 fingerprint=data_fingerprint)
    # Wrapped after the resume: DDP starts by copying rank 0's weights to every rank.
    train_model = distributed.wrap_model(model, world)
    logger.info("training on %s (%s): %d epochs x %d steps, batch %d x accumulation %d, lr %g, warmup %d steps",
                device, precision.name, config.epochs, steps_per_epoch, config.batch_size, config.grad_accum,
                config.lr, warmup_steps)
    if world.distributed:
        logger.info("global batch %d windows per step: %d per device x world size %d x accumulation %d",
                    global_batch * config.grad_accum, config.batch_size, world.size, config.grad_accum)

    run = _Run(config, world, device, precision, tf32, label_set, tokenizer, model, train_model, optimizer, scheduler,
               scaler, splits, data, pad_token_id(tokenizer), pad_multiple(device), global_batch, batches_per_epoch,
               state, started)
    done_batches = (state.epoch - 1) * batches_per_epoch + state.batches_done
    run.bar = tqdm(total=batches_per_epoch * config.epochs, initial=done_batches, desc="train", unit="batch",
                   disable=not (config.progress and world.is_main), dynamic_ncols=True)
    model.train()
    run.run_log = open_run_log(config.output_dir, config.report_to, world.is_main,
                               state.global_step if config.resume else None)
    run.phase_seconds["startup"] = time.perf_counter() - started
    run.phase_cpu_seconds["startup"] = time.process_time() - cpu_started
    return run


def train_epoch(run: _Run, stop: "_StopRequest") -> tuple[str, float]:
    """Train the steps of the epoch in progress, from where a resumed run left it.

    Returns:
        The digest of the epoch's batch order and its padding efficiency (for the epoch's record).

    Raises:
        TrainingInterrupted: a stop was asked for; a checkpoint was written first.
    """
    config, world, state = run.config, run.world, run.state
    encoded = run.data[0].encoded
    if config.group_by_length:
        batches = length_grouped_batches(encoded.lengths, run.global_batch, config.seed, state.epoch)
    else:
        batches = shuffled_batches(len(encoded), run.global_batch, config.seed, state.epoch)
    order_digest = _batch_order_digest(batches)
    # The labelled words of each global batch (all ranks' shares): every rank counts a step's words
    # itself, with no collective.
    words_per_window = encoded.words_per_window()
    global_words = [int(words_per_window[b].sum()) for b in distributed.kept_batches(batches, world.size)]
    batches = distributed.shard_batches(batches, world.rank, world.size)
    padding = padding_efficiency(encoded.lengths, batches, run.pad_to)
    segment_started, cpu_started = time.perf_counter(), time.process_time()
    for group_start in range(state.batches_done, len(batches), config.grad_accum):
        group = batches[group_start:group_start + config.grad_accum]
        # Normalise by the labelled words of the whole accumulation group, so every word weighs the
        # same however the group's batches are cut. Under torchrun: the words of the group on all
        # ranks (distributed.loss_scale says why).
        group_words = sum(global_words[group_start:group_start + len(group)])
        stopping = train_step(run, group, group_words, stop, group_start, len(batches), segment_started)
        save_now = config.save_steps and state.global_step % config.save_steps == 0
        if (save_now or stopping) and state.batches_done < len(batches):
            _end_segment(run, segment_started, cpu_started)
            segment_started, cpu_started = time.perf_counter(), time.process_time()
            path = _checkpoint(run)
            if stopping:
                run.bar.close()
                raise TrainingInterrupted(_interrupted_message(stop.signal or signal.SIGTERM, state.global_step, path))
    _end_segment(run, segment_started, cpu_started)
    return order_digest, padding


def _end_segment(run: _Run, started: float, cpu_started: float) -> None:
    """Count the steps trained since `started` into the epoch's and the training phase's clocks."""
    seconds = time.perf_counter() - started
    run.state.epoch_seconds += seconds
    run.phase_seconds["training"] += seconds
    run.phase_cpu_seconds["training"] += time.process_time() - cpu_started


def train_step(run: _Run, group: list[np.ndarray], group_words: int, stop: "_StopRequest", group_start: int,
               num_batches: int, segment_started: float) -> bool:
    """One optimizer step over the micro-batches of `group`; returns whether every rank is to stop now.

    Raises:
        NonFiniteLoss: a NaN or infinite loss (fp32, bf16), or fp16 loss scaling that keeps overflowing.
    """
    config, world, state, device, precision = run.config, run.world, run.state, run.device, run.precision
    encoded = run.data[0].encoded
    group_loss = torch.zeros((), device=device)  # summed on the device: no host read a micro-batch
    for micro, batch_indices in enumerate(group):
        batch = collate([encoded.input_ids[i] for i in batch_indices], [encoded.labels[i] for i in batch_indices],
                        run.pad_id, run.pad_to)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with distributed.gradient_sync(run.train_model, sync=micro == len(group) - 1):
            with precision.autocast():
                logits = run.train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
            run.scaler.scale(loss_sum * distributed.loss_scale(group_words, world)).backward()
        group_loss += loss_sum.detach()
    overflow = torch.zeros((), device=device)
    if config.max_grad_norm > 0 or precision.uses_scaler:
        run.scaler.unscale_(run.optimizer)
        # Under fp16 the norm is taken even without clipping: a non-finite norm is what makes the
        # scaler skip the update, known here without reading its scale.
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.max_grad_norm or math.inf)
        if precision.uses_scaler:
            overflow = (~torch.isfinite(grad_norm)).float()
    # One collective and one host read a step: the step's loss on all ranks (every rank sees the
    # same value, so all stop together on a non-finite loss), whether the gradients overflowed, and
    # whether any rank was asked to stop. (torch.full fills on the device; a tensor made from a
    # Python number would be a blocking copy from the host.)
    stop_vote = torch.full((), float(stop.signal is not None), device=device)
    step_values = torch.stack([group_loss, overflow, stop_vote])
    group_loss, overflow, stop_votes = distributed.all_reduce_sum_tensor(step_values, world).tolist()
    step = state.global_step + 1
    if not math.isfinite(group_loss) and not precision.uses_scaler:
        last = list_checkpoints(config.output_dir)
        raise NonFiniteLoss(
            f"{'NaN' if math.isnan(group_loss) else 'infinite'} loss at step {step} (epoch {state.epoch}, "
            f"batch {group_start + 1} of {num_batches}); the weights were not updated"
            + (f"; the last good checkpoint is {last[-1]}" if last else "")
            + "; try a lower --lr, or check the data of that batch"
        )
    step_lr = run.scheduler.get_last_lr()[0]  # the rate this step uses; the scheduler moves on below
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    skipped = overflow > 0
    if skipped:
        # The scaler found inf/NaN gradients, skipped this update and lowered the scale; the step
        # is counted, its loss kept out of the averages.
        state.skipped_steps += 1
        run.consecutive_skipped += 1
        if run.consecutive_skipped >= MAX_CONSECUTIVE_SKIPPED:
            raise NonFiniteLoss(
                f"fp16 loss scaling skipped {run.consecutive_skipped} steps in a row up to step {step} "
                f"(scale now {run.scaler.get_scale():g}): the gradients overflow at any scale; "
                f"use --amp-dtype bf16, a lower --lr, or no --amp"
            )
    else:
        run.consecutive_skipped = 0
        state.epoch_loss += group_loss
        state.epoch_loss_words += group_words
        state.loss_by_step.append([step, group_loss / group_words])
    state.global_step = step
    state.batches_done = group_start + len(group)
    state.epoch_words += group_words
    run.bar.update(len(group))
    seconds = state.train_seconds + state.epoch_seconds + time.perf_counter() - segment_started
    words_per_s = (state.train_words + state.epoch_words) / seconds
    postfix = {"loss": f"{group_loss / group_words:.4f}", "lr": f"{run.scheduler.get_last_lr()[0]:.2e}",
               "words/s": f"{words_per_s:.0f}"}
    if state.skipped_steps:
        postfix["skipped"] = state.skipped_steps
    run.bar.set_postfix(postfix, refresh=False)
    if not skipped:  # a skipped step's loss (often inf or NaN) stays out of the log too
        run.run_log.step(step, state.epoch, group_loss / group_words, step_lr, words_per_s)
    return stop_votes > 0  # all ranks stop at one step


def end_epoch(run: _Run, stop: "_StopRequest", order_digest: str, padding: float) -> None:
    """Validate, record the epoch, save the model when it is the best so far, and write a checkpoint.

    Without a validation split every epoch counts as the best, so the last one is kept.

    Raises:
        TrainingInterrupted: a stop was asked for during the epoch (after its checkpoint).
    """
    config, world, state = run.config, run.world, run.state
    epoch = state.epoch
    _check_finite_weights(run.model, state.global_step, config.output_dir)  # before evaluating and saving
    if run.device.type == "cpu":
        release_freed_memory()  # what the steps kept for reuse, before validation and saving
    # None when the scaler skipped every step of the epoch: metrics.json holds no NaN.
    train_loss = state.epoch_loss / state.epoch_loss_words if state.epoch_loss_words else None
    record = {"epoch": epoch, "train_loss": train_loss,
              "train_words_per_s": state.epoch_words / max(state.epoch_seconds, 1e-9),
              "batch_order": order_digest, "padding_efficiency": padding}
    if state.skipped_steps:
        record["skipped_steps_so_far"] = state.skipped_steps
    loss_text = "every step skipped" if train_loss is None else f"{train_loss:.4f}"
    val_data = run.data[1]
    improved = True  # without a validation split the last epoch is the best
    if val_data is not None:
        validation_started, cpu_started = time.perf_counter(), time.process_time()
        record["val"], _ = evaluate_prepared(run.model, val_data, run.label_set, run.pad_id, config.eval_batch_size,
                                             run.device, run.precision, world=world)
        run.phase_seconds["validation"] += time.perf_counter() - validation_started
        run.phase_cpu_seconds["validation"] += time.process_time() - cpu_started
        f1 = record["val"]["f1"]
        logger.info("epoch %d: loss %s, val f1 %.4f (precision %.4f, recall %.4f, %d words)", epoch, loss_text, f1,
                    record["val"]["precision"], record["val"]["recall"], record["val"]["words"])
        improved = f1 > state.best_f1
        if improved:
            state.best_f1 = f1
    else:
        logger.info("epoch %d: loss %s", epoch, loss_text)
    run.run_log.epoch(epoch, state.global_step, record["train_loss"], record.get("val"))
    state.history.append(record)
    state.train_words += state.epoch_words
    state.train_seconds += state.epoch_seconds
    state.epoch, state.batches_done, state.epoch_loss, state.epoch_loss_words = epoch + 1, 0, 0.0, 0
    state.epoch_words, state.epoch_seconds = 0, 0.0
    if improved:
        state.best_epoch = epoch
        main_writes(world, "save the model",
                    lambda: save_model(run.model, run.tokenizer, config.output_dir, config, run.label_set))
        state.best_checkpoint = f"checkpoint-{state.global_step:08d}"
    path = _checkpoint(run)
    if distributed.any_true(stop.signal is not None, world) and epoch < config.epochs:
        run.bar.close()
        raise TrainingInterrupted(_interrupted_message(stop.signal or signal.SIGTERM, state.global_step, path))


def finish(run: _Run) -> dict:
    """Reload the best epoch, score the test split, and write metrics.json and the reports.

    Returns:
        The metrics (see `train`).
    """
    config, world, state, device = run.config, run.world, run.state, run.device
    train_split, _, test_split = run.splits
    train_data, _, test_data = run.data
    output_dir = config.output_dir
    model = run.model
    if state.best_epoch != config.epochs:
        logger.info("reloading epoch %d, the best by validation f1", state.best_epoch)
        distributed.barrier(world)
        if world.is_main:
            model = load_model_for_training(output_dir, run.label_set, config.trust_remote_code).to(device)
        distributed.broadcast_model(model, world)
    test_metrics, test_predicted, test_seconds = None, None, 0.0
    if test_data is not None:
        test_started, cpu_started = time.perf_counter(), time.process_time()
        test_metrics, test_predicted = evaluate_prepared(model, test_data, run.label_set, run.pad_id,
                                                         config.eval_batch_size, device, run.precision, world=world)
        test_seconds = time.perf_counter() - test_started
        run.phase_cpu_seconds["test"] = time.process_time() - cpu_started
        logger.info("test: f1 %.4f, scored %d of %d words", test_metrics["f1"], test_metrics["words"],
                    test_split.num_words)
    run.phase_seconds["test"] = test_seconds
    metrics = {
        "label_set": run.label_set.name,
        "labels": list(run.label_set.labels),
        "precision_mode": run.precision.name,
        "tf32": run.tf32,
        "peak_gpu_memory_mib": peak_gpu_memory_mib(device),
        "device": str(device),
        "world_size": world.size,
        "best_epoch": state.best_epoch,
        "epochs": state.history,
        "val": state.history[state.best_epoch - 1].get("val"),
        "test": test_metrics,
        "test_words_in_split": test_split.num_words if test_split else 0,
        "train_words": state.train_words,
        "train_seconds": state.train_seconds,
        "train_words_per_s": state.train_words / state.train_seconds if state.train_seconds else 0.0,
        "test_seconds": test_seconds,
        "test_words_per_s": test_metrics["words"] / test_seconds if test_metrics else 0.0,
        "train_loss_by_step": state.loss_by_step,
        "skipped_steps": state.skipped_steps,
        # Where the run's time went: wall clock and this process's CPU time of each phase. Training
        # is the optimizer steps only (not validation, saving or checkpoints), over this process's
        # epochs (a resumed run's earlier epochs count in `train_seconds` only).
        "phase_seconds": dict(run.phase_seconds),
        "phase_cpu_seconds": dict(run.phase_cpu_seconds),
        "wall_time_s": time.perf_counter() - run.started,
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
                test_split.sentences, test_data.encoded.gold, test_predicted, run.label_set,
                np.bincount(test_data.encoded.sentence_index, minlength=len(test_split.sentences)),
                surface_forms(train_split.sentences, train_data.encoded.gold, run.label_set), output_dir,
                config.model, config.split_sources()["test"])
        metrics["reports"] = write_reports(output_dir, config, run.label_set, metrics,
                                           test_data.encoded.gold if test_data else None, test_predicted, error_report)
    return metrics


def _checkpoint(run: _Run) -> str:
    """Write a checkpoint of the run as it stands (rank 0 writes; every rank's RNG state goes in)."""
    state = run.state
    _check_finite_weights(run.model, state.global_step, run.config.output_dir)
    # Every rank's RNG state travels to rank 0, which alone writes the checkpoint.
    rank_rngs = distributed.gather_to_main(rng_state(run.device), run.world)
    path = checkpoint_path(run.config.output_dir, state.global_step)

    def write() -> None:
        save_checkpoint(run.config.output_dir, state.global_step, run.model, run.optimizer, run.scheduler, run.scaler,
                        state.to_dict(), rank_rngs if run.world.distributed else None)
        prune(run.config.output_dir, run.config.keep_checkpoints, state.best_checkpoint)

    main_writes(run.world, f"write {path}", write)
    return path


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


def _batch_order_digest(batches: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(np.asarray(batch, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _interrupted_message(signum: int, step: int, path: str) -> str:
    return (f"{signal.Signals(signum).name} after step {step}; checkpoint written to {path}; "
            f"resume with the same command plus --resume")
