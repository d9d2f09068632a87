"""`python -m nerlib train|evaluate|predict|convert|export|serve ...` (also the `nerlib` command)."""

import os
import sys

from .cli import convert_main, evaluate_main, export_main, predict_main, run, serve_main, train_main


def main() -> int:
    commands = {"train": train_main, "evaluate": evaluate_main, "predict": predict_main, "convert": convert_main,
                "export": export_main, "serve": serve_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m nerlib {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    command = sys.argv.pop(1)
    # Errors and usage lines name the command as it was typed: `python -m nerlib predict: error: ...`.
    program = "python -m nerlib" if sys.argv[0].endswith("__main__.py") else os.path.basename(sys.argv[0])
    sys.argv[0] = f"{program} {command}"
    return run(commands[command])


if __name__ == "__main__":
    sys.exit(main())
