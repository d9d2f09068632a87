#!/usr/bin/env python
"""Score a saved model: `python evaluate.py MODEL_DIR --split test`. Flags: `--help`."""

import sys

from nerlib.cli import evaluate_main, run

if __name__ == "__main__":
    sys.exit(run(evaluate_main))
