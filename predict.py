#!/usr/bin/env python
"""Tag raw text with a saved model: `python predict.py MODEL_DIR "Some text."`. Flags: `--help`."""

import sys

from nerlib.cli import predict_main, run

if __name__ == "__main__":
    sys.exit(run(predict_main))
