"""Errors a user can cause and fix: the CLIs print them as one line and exit non-zero."""


class NerlibError(Exception):
    """Base class of every error caused by the user's input, files, flags or environment."""

    exit_code = 2  # what the command-line programs exit with


class DataError(NerlibError):
    """A data source is missing, unreadable or malformed; the message names file and line."""


class ConfigError(NerlibError):
    """A flag or configuration value is invalid or inconsistent."""


class ModelError(NerlibError):
    """A model or tokenizer cannot be found or loaded."""


class TrainingStopped(NerlibError):
    """Training stopped early on purpose or on a fault, with its state saved where possible."""


class TrainingInterrupted(TrainingStopped):
    """SIGTERM or SIGINT: the current step was finished and a checkpoint written."""

    exit_code = 3


class NonFiniteLoss(TrainingStopped):
    """A NaN or infinite loss (fp32, bf16), weights that became NaN or infinite, or fp16 loss scaling
    that keeps skipping steps."""

    exit_code = 4


class MissingExtra(NerlibError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def import_optional(module: str, extra: str, purpose: str):
    """Import an optional package, or fail with one line naming the extra that installs it.

    Args:
        module: the module to import, e.g. `onnxruntime`.
        extra: nerlib's extra that installs it, e.g. `onnx`.
        purpose: what needs it, for the message ("ONNX export").

    Returns:
        The imported module.

    Raises:
        MissingExtra: the module cannot be imported.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{purpose} needs {exc.name or module}, which is not installed: "
                           f"pip install 'nerlib[{extra}]'") from None
