"""The training loop: AdamW, linear warmup and decay, mixed precision, accumulation, evaluation."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Split, SplitNotFound, all_tags, load_split
from .errors import ConfigError, DataError
from .evaluation import compute_metrics, predict_encoded
from .features import IGNORE_INDEX, Encoded, collate, encode, length_grouped_batches, shuffled_batches
from .labels import LabelSet, auto_label_set, multinerd_label_set
from .modeling import NERLIB_CONFIG_FILE, load_model_for_training, load_tokenizer
from .reports import write_reports
from .runtime import Precision, configure_threads, resolve_device, resolve_precision, seed_everything

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


def prepare(split: Split, label_set: LabelSet, tokenizer, max_length: int) -> Prepared:
    return Prepared(split, encode(split.sentences, label_set, tokenizer, max_length))


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
                      device: torch.device, precision: Precision, strict: bool = False) -> tuple[dict, list[np.ndarray]]:
    """Predict every word of a prepared split and score it; returns (metrics, predicted ids)."""
    predicted = predict_encoded(model, prepared.encoded, pad_id, batch_size, device, precision.autocast())
    labels = label_set.labels
    gold_tags = [[labels[i] for i in ids] for ids in prepared.encoded.gold]
    pred_tags = [[labels[i] for i in ids] for ids in predicted]
    metrics = compute_metrics(gold_tags, pred_tags, strict=strict)
    if metrics["words"] != prepared.split.num_words:  # pragma: no cover - guarded by construction
        raise RuntimeError(f"scored {metrics['words']} words of {prepared.split.num_words}")
    return metrics, predicted


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".nerlib-write-test")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"{folder}: output folder cannot be written ({exc.strerror})") from None


def _read_splits(config: TrainConfig) -> tuple[Split, Split | None, Split | None]:
    train_split = load_split(config.data, "train", config.lang).head(config.max_train_samples)
    optional = []
    for name in ("val", "test"):
        try:
            optional.append(load_split(config.data, name, config.lang).head(config.max_eval_samples))
        except SplitNotFound as exc:
            logger.warning("%s; going on without it", exc)
            optional.append(None)
    return train_split, optional[0], optional[1]


def save_model(model, tokenizer, output_dir: str, config: TrainConfig, label_set: LabelSet) -> None:
    """The model with `id2label`, its tokenizer, and nerlib's configuration beside them."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    info = {
        "label_set": label_set.name,
        "labels": list(label_set.labels),
        "remap_multinerd": label_set.remap_multinerd,
        "config": config.to_dict(),
    }
    with open(os.path.join(output_dir, NERLIB_CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
        handle.write("\n")


def train(config: TrainConfig) -> dict:
    """Fine-tune `config.model` for NER on `config.data` and save the best epoch's model.

    The validation split is scored after every epoch; the epoch with the best validation F1 is
    kept in `config.output_dir` and scored on the test split at the end.

    Args:
        config: every option of the run.

    Returns:
        The contents of `metrics.json`: per-epoch validation metrics, final `test` metrics
        (None without a test split), words scored, wall time, training words/s and the loss of
        every optimizer step; plus `reports`, the model card and plots written beside it.

    Raises:
        NerlibError: bad data, flags, model or output folder (one-line messages).
    """
    started = time.perf_counter()
    configure_threads(config.num_threads)
    device = resolve_device(config.device)
    precision = resolve_precision(device, config.amp, config.amp_dtype)
    output_dir = config.output_dir
    _check_writable(output_dir)

    train_split, val_split, test_split = _read_splits(config)
    label_set = resolve_label_set(config.labels, [s for s in (train_split, val_split, test_split) if s])
    logger.info("label set %s", label_set.describe())

    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    model = load_model_for_training(config.model, label_set, config.trust_remote_code).to(device)
    max_length = effective_max_length(config.max_length, tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    train_data = prepare(train_split, label_set, tokenizer, max_length)
    val_data = prepare(val_split, label_set, tokenizer, max_length) if val_split else None
    test_data = prepare(test_split, label_set, tokenizer, max_length) if test_split else None
    for prepared in (train_data, val_data, test_data):
        if prepared:
            logger.info("%s: %d sentences, %d words, %d windows (%s)", prepared.split.name,
                        len(prepared.split.sentences), prepared.split.num_words, len(prepared.encoded),
                        prepared.split.source)

    encoded = train_data.encoded
    lengths = encoded.lengths
    words_per_window = encoded.words_per_window()
    batches_per_epoch = math.ceil(len(encoded) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, device)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    scaler = precision.grad_scaler()
    logger.info("training on %s (%s): %d epochs x %d steps, batch %d x accumulation %d, lr %g, warmup %d steps",
                device, precision.name, config.epochs, steps_per_epoch, config.batch_size, config.grad_accum,
                config.lr, warmup_steps)

    history: list[dict] = []
    best_f1, best_epoch = -1.0, 0
    train_words, train_seconds = 0, 0.0
    loss_by_step: list[list[float]] = []  # [optimizer step, loss per word], for the training curves
    bar = tqdm(total=batches_per_epoch * config.epochs, desc="train", unit="batch", disable=not config.progress,
               dynamic_ncols=True)
    model.train()
    for epoch in range(1, config.epochs + 1):
        if config.group_by_length:
            batches = length_grouped_batches(lengths, config.batch_size, config.seed, epoch)
        else:
            batches = shuffled_batches(len(encoded), config.batch_size, config.seed, epoch)
        epoch_started = time.perf_counter()
        epoch_loss, epoch_words = 0.0, 0
        for group_start in range(0, len(batches), config.grad_accum):
            group = batches[group_start:group_start + config.grad_accum]
            # Normalise by the labelled words of the whole accumulation group, so every word
            # weighs the same however the group's batches are cut.
            group_words = int(sum(words_per_window[b].sum() for b in group))
            group_loss = 0.0
            for batch_indices in group:
                batch = collate([encoded.input_ids[i] for i in batch_indices],
                                [encoded.labels[i] for i in batch_indices], pad_id)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with precision.autocast():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss_sum = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
                scaler.scale(loss_sum / group_words).backward()
                group_loss += loss_sum.item()
                bar.update(1)
            if config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(group_loss) and not precision.uses_scaler:
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {group_start // config.grad_accum + 1}")
            loss_by_step.append([len(loss_by_step) + 1, group_loss / group_words])
            epoch_loss += group_loss
            epoch_words += group_words
            elapsed = time.perf_counter() - epoch_started
            bar.set_postfix(loss=f"{group_loss / group_words:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            words_s=f"{(train_words + epoch_words) / (train_seconds + elapsed):.0f}", refresh=False)
        epoch_seconds = time.perf_counter() - epoch_started
        train_words += epoch_words
        train_seconds += epoch_seconds
        record = {"epoch": epoch, "train_loss": epoch_loss / max(1, epoch_words),
                  "train_words_per_s": epoch_words / epoch_seconds}
        if val_data is not None:
            record["val"], _ = evaluate_prepared(model, val_data, label_set, pad_id, config.eval_batch_size, device, precision)
            f1 = record["val"]["f1"]
            logger.info("epoch %d: loss %.4f, val f1 %.4f (precision %.4f, recall %.4f, %d words)", epoch,
                        record["train_loss"], f1, record["val"]["precision"], record["val"]["recall"],
                        record["val"]["words"])
        else:
            f1 = float(epoch)  # no validation split: the last epoch is the best
            logger.info("epoch %d: loss %.4f", epoch, record["train_loss"])
        history.append(record)
        if f1 > best_f1:
            best_f1, best_epoch = f1, epoch
            save_model(model, tokenizer, output_dir, config, label_set)
    bar.close()

    if best_epoch != config.epochs:
        logger.info("reloading epoch %d, the best by validation f1", best_epoch)
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(output_dir).to(device)
    test_metrics, test_predicted = None, None
    if test_data is not None:
        test_metrics, test_predicted = evaluate_prepared(model, test_data, label_set, pad_id, config.eval_batch_size, device, precision)
        logger.info("test: f1 %.4f, scored %d of %d words", test_metrics["f1"], test_metrics["words"],
                    test_split.num_words)
    metrics = {
        "label_set": label_set.name,
        "labels": list(label_set.labels),
        "precision_mode": precision.name,
        "device": str(device),
        "best_epoch": best_epoch,
        "epochs": history,
        "val": history[best_epoch - 1].get("val"),
        "test": test_metrics,
        "test_words_in_split": test_split.num_words if test_split else 0,
        "train_words": train_words,
        "train_seconds": train_seconds,
        "train_words_per_s": train_words / train_seconds if train_seconds else 0.0,
        "wall_time_s": time.perf_counter() - started,
        "output_dir": output_dir,
        "train_loss_by_step": loss_by_step,
    }
    with open(os.path.join(output_dir, METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    metrics["reports"] = write_reports(output_dir, config.to_dict(), label_set, metrics,
                                       test_data.encoded.gold if test_data else None, test_predicted)
    return metrics
