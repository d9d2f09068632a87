"""Errors a user can cause and fix: the CLIs print them as one line and exit non-zero."""


class NerlibError(Exception):
    """Base class of every error caused by the user's input, files, flags or environment."""


class DataError(NerlibError):
    """A data source is missing, unreadable or malformed; the message names file and line."""


class ConfigError(NerlibError):
    """A flag or configuration value is invalid or inconsistent."""


class ModelError(NerlibError):
    """A model or tokenizer cannot be found or loaded."""
