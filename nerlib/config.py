"""TrainConfig and ServeConfig: every option of training and of `nerlib serve`, its default and its help.

`train.py` and `nerlib serve` derive their flags from the fields, so a default is written once, here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import typing
from dataclasses import dataclass, field

from .data import DEFAULT_HUB_DATASET, ReadOptions
from .errors import ConfigError
from .formats import ON_OVERLAP
from .schemes import SCHEME_CHOICES


# How a saved model folder is run: PyTorch, or ONNX Runtime for a folder written by `nerlib export --onnx`.
BACKENDS = ("auto", "torch", "onnx")

# Fields that steer how a run is carried out, not what it computes: they may change on resume.
RUN_CONTROL = frozenset({"output_dir", "progress", "num_threads", "save_steps", "keep_checkpoints", "resume",
                         "overwrite", "force", "eval_batch_size", "cache", "cache_dir", "report_to"})


@dataclass(frozen=True)
class NumberRule:
    """The values a numeric option accepts: a finite number (a whole one when `integer`) in a range."""

    minimum: float
    maximum: float = math.inf
    integer: bool = True
    minimum_allowed: bool = True   # False: the minimum itself is refused (a learning rate of 0)
    maximum_allowed: bool = True   # False: the maximum itself is refused (a warmup ratio of 1)

    def problem(self, flag: str, value) -> str | None:
        """What is wrong with `value` for `flag`, or None when it is accepted."""
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not (whole or (not self.integer and isinstance(value, numbers.Real) and not isinstance(value, bool))):
            return f"{flag} must be a {'whole ' if self.integer else ''}number, got {value!r}"
        if not math.isfinite(value):
            return f"{flag} must be a finite number, got {value}"
        above = value >= self.minimum if self.minimum_allowed else value > self.minimum
        below = value <= self.maximum if self.maximum_allowed else value < self.maximum
        if above and below:
            return None
        low, high = _plain(self.minimum), _plain(self.maximum)
        if math.isinf(self.maximum):
            bound = f"at least {low}" if self.minimum_allowed else f"greater than {low}"
        else:
            bound = f"in {'[' if self.minimum_allowed else '('}{low}, {high}{']' if self.maximum_allowed else ')'}"
        return f"{flag} must be {bound}, got {value}"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


# The smallest window: one sub-token beside the two special tokens ([CLS] and [SEP]) most encoders add.
# A tokenizer that adds more is refused when the split is encoded, with the size it needs.
MIN_MAX_LENGTH = 3

_COUNT = NumberRule(1)

# Every numeric option of train.py (TrainConfig), evaluate.py, `python -m nerlib predict` and `nerlib serve`, checked
# here and nowhere else. None always means "not set" and is accepted.
NUMBER_RULES: dict[str, NumberRule] = {
    "epochs": _COUNT,
    "batch_size": _COUNT,
    "eval_batch_size": _COUNT,
    "grad_accum": _COUNT,
    "max_train_samples": _COUNT,
    "max_eval_samples": _COUNT,
    "max_samples": _COUNT,
    "num_threads": NumberRule(1, 1024),  # torch takes a 32-bit count; 1024 is more cores than machines have
    "save_steps": _COUNT,
    "keep_checkpoints": _COUNT,
    "token_column": _COUNT,   # columns count from 1 (formats.ReadOptions checks them for the readers too)
    "tag_column": _COUNT,
    "report_sentences": NumberRule(0),
    "max_length": NumberRule(MIN_MAX_LENGTH),
    "seed": NumberRule(0, 2**32 - 1),   # what NumPy's generator accepts
    "lr": NumberRule(0, integer=False, minimum_allowed=False),
    "weight_decay": NumberRule(0, integer=False),
    "warmup_ratio": NumberRule(0, 1, integer=False, maximum_allowed=False),
    "max_grad_norm": NumberRule(0, integer=False),
    # nerlib export
    "parity_samples": _COUNT,
    "max_f1_drop": NumberRule(0, integer=False),
    # nerlib serve (ServeConfig)
    "port": NumberRule(0, 65535),
    # Upper bounds keep each setting in what a worker thread and a timer can hold (a wait of 1e13 ms overflowed the
    # queue's timeout and killed the worker) and within what one machine's memory answers.
    "batch_wait_ms": NumberRule(0, 10_000, integer=False),
    "max_batch_texts": NumberRule(1, 100_000),
    "max_body_bytes": NumberRule(1, 1 << 30),
    "max_texts": NumberRule(1, 100_000),
    "max_chars": NumberRule(1, 10_000_000),
    "request_timeout_s": NumberRule(0, 3600, integer=False, minimum_allowed=False),
}


def number_problems(values: dict) -> list[str]:
    """What is wrong with some numeric options, one phrase each naming the flag.

    Args:
        values: option name (a key of `NUMBER_RULES`, e.g. `max_length`) -> value; None is not set.

    Returns:
        The problems, in the order of `values`; empty when every value is accepted.
    """
    problems = []
    for name, value in values.items():
        if value is not None:
            problem = NUMBER_RULES[name].problem("--" + name.replace("_", "-"), value)
            if problem:
                problems.append(problem)
    return problems


def check_numbers(**values) -> None:
    """Refuse bad numeric options before anything is loaded: `check_numbers(batch_size=0)`.

    Raises:
        ConfigError: every problem, in one line.
    """
    problems = number_problems(values)
    if problems:
        raise ConfigError("; ".join(problems))


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run. Defaults follow the original notebook."""

    labels: str = _opt("all", "label set: all (31 MultiNERD tags), five (PER ORG LOC ANIM DIS), auto (read from "
                              "the data), or a comma-separated subset of MultiNERD classes such as PER,LOC,DIS")
    data: str = _opt(DEFAULT_HUB_DATASET, "hub dataset id, or a folder: the hub layout, files named after their split "
                                          "(train.txt, dev.conll, test.jsonl, eng.train, ...), or a "
                                          "datasets.save_to_disk folder")
    train_file: typing.Optional[str] = _opt(None, "the training file (any format nerlib reads), instead of the train "
                                                  "split of --data", flag="--train", metavar="FILE")
    val_file: typing.Optional[str] = _opt(None, "the validation file, instead of the val split of --data",
                                          flag="--val", metavar="FILE")
    test_file: typing.Optional[str] = _opt(None, "the test file, instead of the test split of --data", flag="--test",
                                           metavar="FILE")
    lang: str = _opt("en", "language(s) of the data: en, a list such as en,de,fr, or all; records of other "
                           "languages are dropped (and counted)")
    tag_scheme: str = _opt("auto", "tag scheme of the data: auto (detected per file), bio (iob2), iob1, bioes "
                                   "(iobes), bilou, io; converted to BIO", choices=SCHEME_CHOICES)
    token_column: typing.Optional[int] = _opt(None, "column files: the token's column, counted from 1 (unset: the "
                                                    "first, or the second after an index column)", metavar="N")
    tag_column: typing.Optional[int] = _opt(None, "column files: the tag's column, counted from 1 (unset: the last)",
                                                  metavar="N")
    on_overlap: str = _opt("error", "character spans that overlap or nest: error, or keep-longest (the shorter "
                                    "ones are dropped and counted)", choices=ON_OVERLAP)
    model: str = _opt("distilbert-base-uncased", "pre-trained encoder: a local folder or a hub model id")
    output_dir: str = _opt("runs/nerlib", "folder for the model, tokenizer, configuration and metrics.json")
    epochs: int = _opt(2, "training epochs")
    lr: float = _opt(2e-5, "peak learning rate of AdamW")
    batch_size: int = _opt(32, "training batch size (windows per step, per device)")
    eval_batch_size: int = _opt(64, "evaluation batch size")
    weight_decay: float = _opt(0.005, "AdamW weight decay, applied to weight matrices only")
    warmup_ratio: float = _opt(0.0, "fraction of optimizer steps of linear warmup before the linear decay")
    grad_accum: int = _opt(1, "micro-batches accumulated into one optimizer step")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 turns clipping off)")
    max_length: int = _opt(512, "most sub-tokens a window holds; longer sentences are split into windows, "
                                "never truncated (capped at the model's maximum)")
    seed: int = _opt(42, "seed of initialisation, dropout and batch order")
    max_train_samples: typing.Optional[int] = _opt(None, "train on the first N training sentences only")
    max_eval_samples: typing.Optional[int] = _opt(None, "evaluate on the first N sentences of val and test only")
    group_by_length: bool = _opt(True, "batch windows of similar length (shuffled groups) to cut padding")
    cache: bool = _opt(True, "keep tokenised splits in an on-disk cache, so the next run on the same data, tokenizer "
                             "and options starts at once")
    cache_dir: typing.Optional[str] = _opt(None, "folder of the tokenisation cache (default: $NERLIB_CACHE, else "
                                                 "~/.cache/nerlib; an empty value turns the cache off)")
    amp: bool = _opt(False, "mixed precision: bf16 or fp16 autocast on CUDA, bf16 on CPUs with native bf16")
    amp_dtype: str = _opt("auto", "precision under --amp: auto (bf16 where the device has it natively, else "
                                  "fp16 on CUDA), bf16, fp16", choices=("auto", "bf16", "fp16"))
    tf32: bool = _opt(True, "on CUDA GPUs of compute capability 8.0 and later (Ampere+), compute fp32 matmuls with "
                            "TF32 tensor cores (fp32 range, 10-bit mantissa); --no-tf32 keeps them in full fp32. "
                            "No effect on CPUs")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    num_threads: typing.Optional[int] = _opt(None, "CPU threads for torch (default: torch's choice)")
    progress: bool = _opt(True, "show progress bars")
    report_to: str = _opt("none", "live training curves: none, or tensorboard (event files in OUTPUT_DIR/tensorboard; "
                                  "needs nerlib[tensorboard]); the loss of every step goes to OUTPUT_DIR/train_log.jsonl "
                                  "either way", choices=("none", "tensorboard"))
    save_steps: typing.Optional[int] = _opt(None, "also write a checkpoint every N optimizer steps (one is always "
                                                  "written at the end of every epoch)")
    keep_checkpoints: int = _opt(2, "checkpoints kept: the newest K, plus the one of the best epoch")
    resume: bool = _opt(False, "continue from the newest complete checkpoint in --output-dir")
    overwrite: bool = _opt(False, "start a new run in an --output-dir that holds another run's checkpoints, "
                                  "deleting them")
    force: bool = _opt(False, "resume even though the configuration or data fingerprint changed")
    trust_remote_code: bool = _opt(False, "allow model code from the model folder or hub (off: only built-in architectures)")

    def __post_init__(self) -> None:
        problems = number_problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                    if f.name in NUMBER_RULES})
        if self.resume and self.overwrite:
            problems.append("--resume and --overwrite exclude each other")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            problems.append(f"--amp-dtype must be auto, bf16 or fp16, got {self.amp_dtype!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.read_options()  # the data-reading options are checked where they are defined

    def read_options(self) -> ReadOptions:
        """How the data files are read (`--tag-scheme`, `--token-column`, `--tag-column`, `--on-overlap`)."""
        return ReadOptions(self.tag_scheme, self.token_column, self.tag_column, self.on_overlap)

    def split_sources(self) -> dict[str, str | None]:
        """Where each split is read from: its `--train/--val/--test` file, else `--data`.

        With a split file given and `--data` left at the hub default, the other splits are not
        fetched from the hub: they are absent (None).
        """
        files = {"train": self.train_file, "val": self.val_file, "test": self.test_file}
        fallback = None if any(files.values()) and self.data == DEFAULT_HUB_DATASET else self.data
        return {split: path or fallback for split, path in files.items()}

    def run_settings(self) -> dict:
        """The fields that define what is trained: a resume must match them (see RUN_CONTROL)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    @classmethod
    def saved_run_settings(cls, saved: dict) -> dict:
        """The run settings a checkpoint saved, options added to nerlib since then at their defaults.

        A new option's default keeps what nerlib did before it existed, so a run that an upgrade
        interrupted resumes without --force unless this run sets the new option otherwise.
        """
        defaults = cls().run_settings()
        return {**{key: value for key, value in defaults.items() if key not in saved}, **saved}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


@dataclass(frozen=True)
class ServeConfig:
    """Options of `nerlib serve`; the command's flags are derived from these fields."""

    host: str = _opt("127.0.0.1", "address to listen on; the default answers this machine only (0.0.0.0: every "
                                  "network interface)")
    port: int = _opt(8000, "TCP port")
    backend: str = _opt("auto", "torch, or onnx for a folder written by `nerlib export --onnx`; auto: onnx for an "
                                "exported folder", choices=BACKENDS)
    int8: bool = _opt(False, "with the onnx backend, the folder's int8 model")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (the onnx backend runs on the CPU)")
    num_threads: typing.Optional[int] = _opt(None, "CPU threads for the model (default: torch's choice)")
    batching: bool = _opt(True, "run the texts of requests that arrive together in one call of the model "
                                "(--no-batching: one request at a time)")
    batch_wait_ms: float = _opt(2.0, "how long the first request of a batch waits for others to join it")
    max_batch_texts: int = _opt(256, "most texts that requests batched together may hold")
    batch_size: int = _opt(32, "windows per forward pass")
    max_length: typing.Optional[int] = _opt(None, "window size in sub-tokens (default: the training one)")
    max_body_bytes: int = _opt(1_000_000, "largest request body accepted, in bytes (larger: 413)")
    max_texts: int = _opt(64, "most texts in one request (more: 413)")
    max_chars: int = _opt(50_000, "most characters in one text (more: 413)")
    request_timeout_s: float = _opt(30.0, "time budget of one request in seconds: a request not answered by then gets "
                                          "503, and the worker drops what is left of it")
    access_log: bool = _opt(False, "log every request")

    def __post_init__(self) -> None:
        problems = number_problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                    if f.name in NUMBER_RULES})
        if problems:
            raise ConfigError("; ".join(problems))


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """Add one flag per field of a config dataclass: `--max-length`, `--amp`, `--no-progress`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"{help_text} (default: {'on' if f.default else 'off'})")
            continue
        base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
        parser.add_argument(flag, dest=f.name, type=base, default=f.default, choices=f.metadata.get("choices"),
                            metavar=None if f.metadata.get("choices") else f.metadata.get("metavar", f.name.upper()),
                            help=f"{help_text} (default: {f.default})")


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    """Build the config from parsed flags (only the fields the dataclass knows)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


