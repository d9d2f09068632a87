"""Live training curves: the loss of every step as JSON lines, and TensorBoard event files on request.

The loop calls a `RunLog` where it already logs: after each optimizer step and after each
epoch's validation. `RunLog` itself does nothing (what ranks other than 0 get under torchrun);
`FileRunLog` appends one JSON line a step to `train_log.jsonl`, flushed at once so that
`tail -f` shows the run as it goes, and with `report_to="tensorboard"` writes the same values
and the validation scores as TensorBoard scalars under `tensorboard/`.
"""

from __future__ import annotations

import json
import logging
import os
import time

from .errors import ConfigError

logger = logging.getLogger(__name__)

TRAIN_LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("none", "tensorboard")
# How TensorBoard's writers name their files (events.out.tfevents.TIME.HOST.PID.N).
EVENT_FILE_PREFIX = "events.out.tfevents."
TENSORBOARD_HINT = "pip install 'nerlib[tensorboard]'"


def check_report_to(report_to: str) -> None:
    """Fail before training when `report_to` is unknown or its package is not installed.

    Raises:
        ConfigError: an unknown value, or tensorboard asked for and not installed.
    """
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        except ImportError:
            raise ConfigError(f"--report-to tensorboard needs the tensorboard package: {TENSORBOARD_HINT}") from None


class RunLog:
    """Receives the values of each step and epoch; this base class drops them."""

    def step(self, step: int, epoch: int, loss: float, lr: float, words_per_s: float) -> None:
        """One optimizer step: its loss (per labelled word), learning rate and the training speed so far."""

    def epoch(self, epoch: int, step: int, train_loss: float | None, val: dict | None) -> None:
        """The end of an epoch: its mean training loss (None when fp16 loss scaling skipped every step) and
        the validation metrics (None without a val split)."""

    def close(self) -> None:
        """Flush and close whatever was opened."""

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileRunLog(RunLog):
    """`train_log.jsonl` in the output folder, and TensorBoard event files with `tensorboard=True`.

    Args:
        output_dir: the run's folder.
        tensorboard: also write TensorBoard event files under `output_dir/tensorboard`.
        resume_step: the step a resumed run restarts after: lines of later steps (trained again
            now) are dropped from the JSON lines and the event files; None starts both afresh.
    """

    def __init__(self, output_dir: str, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.path = os.path.join(output_dir, TRAIN_LOG_FILE)
        kept = _lines_up_to(self.path, resume_step) if resume_step is not None else []
        self.handle = open(self.path, "w", encoding="utf-8")
        self.handle.writelines(kept)
        self.handle.flush()
        self.writer = None
        if tensorboard:
            check_report_to("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            events_dir = os.path.join(output_dir, TENSORBOARD_DIR)
            if resume_step is None:
                _remove_event_files(events_dir)  # an earlier run's curves would be drawn along with this one's
            # purge_step hides the events a resumed run writes again, so each step keeps one value.
            self.writer = SummaryWriter(events_dir, purge_step=resume_step + 1 if resume_step is not None else None)
            logger.info("TensorBoard event files in %s (tensorboard --logdir %s)", events_dir, output_dir)
        logger.info("per-step loss in %s (tail -f to follow)", self.path)

    def _write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def step(self, step: int, epoch: int, loss: float, lr: float, words_per_s: float) -> None:
        self._write({"event": "step", "step": step, "epoch": epoch, "loss": loss, "lr": lr,
                     "words_per_s": words_per_s, "time": time.time()})
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", lr, step)
            self.writer.add_scalar("train/words_per_s", words_per_s, step)

    def epoch(self, epoch: int, step: int, train_loss: float | None, val: dict | None) -> None:
        scores = {k: val[k] for k in ("precision", "recall", "f1", "accuracy")} if val else None
        self._write({"event": "epoch", "step": step, "epoch": epoch, "train_loss": train_loss, "val": scores,
                     "time": time.time()})
        if self.writer is not None:
            if train_loss is not None:
                self.writer.add_scalar("train/epoch_loss", train_loss, step)
            if val:
                for key, value in scores.items():
                    self.writer.add_scalar(f"val/{key}", value, step)
                for name, row in val["per_type"].items():
                    self.writer.add_scalar(f"val_f1/{name}", row["f1"], step)
            self.writer.flush()

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def _remove_event_files(folder: str) -> None:
    """Delete the TensorBoard event files an earlier run left in `folder` (nothing else in it)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(EVENT_FILE_PREFIX):
            try:
                os.remove(os.path.join(folder, name))
            except OSError as exc:
                raise ConfigError(f"{os.path.join(folder, name)}: cannot remove an earlier run's events "
                                  f"({exc.strerror})") from None


def _lines_up_to(path: str, step: int) -> list[str]:
    """The lines of an earlier log at or before `step` (a resumed run rewrites the later ones)."""
    if not os.path.isfile(path):
        return []
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: dropped
    return kept


def open_run_log(output_dir: str, report_to: str, is_main: bool, resume_step: int | None = None) -> RunLog:
    """The run log of one rank: `FileRunLog` on rank 0, the silent `RunLog` elsewhere."""
    if not is_main:
        return RunLog()
    return FileRunLog(output_dir, tensorboard=report_to == "tensorboard", resume_step=resume_step)
