"""train.py, with every window a rank's model predicts written down: run by test_distributed.py under torchrun.

Usage: `torchrun ... tests/eval_window_counter.py OUT_PREFIX TRAIN_FLAGS...`. Each rank writes
`OUT_PREFIX.RANK.json`: the unpadded token ids of every window its model ran on in evaluation mode
(validation after each epoch, then test), one list a window, in the order they were run.
"""

import json
import os
import sys

import torch

from nerlib.cli import run, train_main


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    windows: list[list[int]] = []

    def record(module, args, kwargs, output) -> None:
        # Only the token-classification model itself, and only when it predicts (not in training steps).
        if not type(module).__name__.endswith("ForTokenClassification") or module.training:
            return
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for row, row_mask in zip(input_ids, mask if mask is not None else torch.ones_like(input_ids)):
            windows.append(row[row_mask.bool()].tolist())

    # A global hook sees every model, the one reloaded for the best epoch included.
    torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    code = run(train_main, argv)
    with open(f"{out}.{os.environ.get('RANK', '0')}.json", "w", encoding="utf-8") as handle:
        json.dump(windows, handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
