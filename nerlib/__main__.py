"""`python -m nerlib train ...` / `python -m nerlib evaluate ...`."""

import sys

from .cli import evaluate_main, run, train_main


def main() -> int:
    commands = ("train", "evaluate")
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m nerlib {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    command = sys.argv.pop(1)
    return run(train_main if command == "train" else evaluate_main)


if __name__ == "__main__":
    sys.exit(main())
