#!/usr/bin/env python
"""Fine-tune a transformer for NER: `python train.py --labels five --amp`. Flags: `--help`."""

import sys

from nerlib.cli import run, train_main

if __name__ == "__main__":
    sys.exit(run(train_main))
