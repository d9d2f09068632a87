"""nerlib's version: one line, read by the package, the model card and setup.cfg."""

__version__ = "0.1.0"
