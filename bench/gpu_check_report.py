#!/usr/bin/env python
"""What `bench/gpu_check.sh` runs after its training runs: the resume comparison and the report.

    python bench/gpu_check_report.py same-weights REFERENCE_DIR RESUMED_DIR
    python bench/gpu_check_report.py summary --work DIR --out FILE --mode gpu|dry-run --gpus N

`same-weights` compares two finished output folders tensor by tensor and prints one JSON object.
`summary` reads the work folder the script filled (each run's `metrics.json`, its exit code in
`NAME.code`, its log in `NAME.log`, the Trainer's `--json-out` file, the resume comparison),
prints one table and writes everything as one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The nerlib runs, in the order of the table: (name in the work folder, title).
NERLIB_RUNS = (("fp32", "nerlib fp32"), ("fp16", "nerlib fp16"), ("bf16", "nerlib bf16"),
               ("ddp", "nerlib bf16, 2 ranks"))
TRAINER_RUN = "trainer-bf16"
TRAIN_VS_TRAINER_BF16_TARGET = 1.15
FP16_ON_CPU = "--amp-dtype fp16 needs CUDA"


def same_weights(reference: str, resumed: str) -> dict:
    """Compare the saved models and the per-step losses of two runs; identical means bit for bit."""
    import torch
    from safetensors.torch import load_file

    a = load_file(os.path.join(reference, "model.safetensors"))
    b = load_file(os.path.join(resumed, "model.safetensors"))
    differing, largest = [], 0.0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or a[name].shape != b[name].shape:
            differing.append(name)  # nothing to subtract: it counts, the largest difference does not see it
        elif not torch.equal(a[name], b[name]):
            differing.append(name)
            largest = max(largest, (a[name].double() - b[name].double()).abs().max().item())
    losses = [_read_json(os.path.join(folder, "metrics.json")).get("train_loss_by_step") for folder in (reference,
                                                                                                       resumed)]
    return {"identical": not differing, "tensors": len(a), "differing": len(differing),
            "first_differing": differing[:5], "max_abs_diff": largest,
            "loss_by_step_equal": losses[0] is not None and losses[0] == losses[1]}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _status(work: str, name: str) -> str:
    """ok, failed (exit N), refused on the CPU as expected, or why it was not run."""
    code = _read_text(os.path.join(work, f"{name}.code"))
    if code is None:
        return "not run: " + (_read_text(os.path.join(work, f"{name}.skipped")) or "not asked for").strip()
    code = int(code.strip())
    if code == 0:
        return "ok"
    if code == 124 or code == 137:
        return f"timed out (exit {code})"
    if FP16_ON_CPU in (_read_text(os.path.join(work, f"{name}.log")) or ""):
        return "refused on the CPU, as it must be (fp16 needs CUDA)"
    return f"failed (exit {code}; see {name}.log)"


def nerlib_row(work: str, name: str, title: str) -> dict:
    metrics = _read_json(os.path.join(work, name, "metrics.json"))
    test = metrics.get("test") or {}
    return {
        "run": title, "status": _status(work, name),
        "precision": metrics.get("precision_mode"), "tf32": metrics.get("tf32"),
        "world_size": metrics.get("world_size"), "device": metrics.get("device"),
        "train_words_per_s": metrics.get("train_words_per_s"), "eval_words_per_s": metrics.get("test_words_per_s"),
        "peak_gpu_memory_mib": metrics.get("peak_gpu_memory_mib"), "test_f1": test.get("f1"),
        "train_words": metrics.get("train_words"), "test_words": test.get("words"),
        "skipped_steps": metrics.get("skipped_steps"), "wall_time_s": metrics.get("wall_time_s"),
    }


def trainer_row(work: str) -> dict:
    report = _read_json(os.path.join(work, f"{TRAINER_RUN}.json"))
    run = report.get("runs", {}).get(TRAINER_RUN, {})
    return {
        "run": "Trainer bf16+grouped", "status": _status(work, TRAINER_RUN), "precision": run.get("precision"),
        "tf32": None, "world_size": 1, "device": (report.get("settings") or {}).get("device"),
        "train_words_per_s": run.get("train_words_per_s"), "eval_words_per_s": run.get("eval_words_per_s"),
        "peak_gpu_memory_mib": run.get("peak_gpu_memory_mib"), "test_f1": run.get("f1"),
        "train_words": run.get("train_words"), "test_words": run.get("eval_words"), "skipped_steps": None,
        "wall_time_s": run.get("wall_seconds"),
    }


def _ratio(a, b):
    return a / b if a and b else None


def summarise(work: str, mode: str, gpus: int) -> dict:
    """Everything the script measured, as one JSON-serialisable object."""
    rows = [nerlib_row(work, name, title) for name, title in NERLIB_RUNS] + [trainer_row(work)]
    bf16, trainer = rows[2], rows[-1]
    resume = {"comparison": _read_json(os.path.join(work, "resume.json")),
              "reference": _status(work, "resume-reference"), "killed": _status(work, "resume-killed"),
              "resumed": _status(work, "resume-resumed"),
              "killed_exit_code": (_read_text(os.path.join(work, "resume-killed.code")) or "").strip() or None}
    train_ratio = _ratio(bf16["train_words_per_s"], trainer["train_words_per_s"])
    return {
        "mode": mode,
        "gpus": gpus,
        "environment": _read_json(os.path.join(work, "environment.json")),
        "runs": rows,
        "nerlib_bf16_vs_trainer_bf16": {
            "train": train_ratio, "eval": _ratio(bf16["eval_words_per_s"], trainer["eval_words_per_s"]),
            "train_target": TRAIN_VS_TRAINER_BF16_TARGET,
            "train_target_met": None if train_ratio is None else train_ratio >= TRAIN_VS_TRAINER_BF16_TARGET,
            "f1_points": (None if bf16["test_f1"] is None or trainer["test_f1"] is None
                          else 100 * (bf16["test_f1"] - trainer["test_f1"])),
        },
        "resume": resume,
    }


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value)


def format_table(summary: dict) -> str:
    environment = summary["environment"]
    gpus = environment.get("gpus") or []
    where = "; ".join(f"{g['name']} (compute capability {g['capability']})" for g in gpus) or "no GPU"
    lines = [
        f"GPU check ({summary['mode']}): {where}; torch {environment.get('torch', '?')}, transformers "
        f"{environment.get('transformers', '?')}, nerlib {environment.get('commit', '?')}",
        "",
        f"{'run':<22}{'precision':>12}{'train words/s':>15}{'eval words/s':>14}{'peak GPU MiB':>14}{'test F1':>9}"
        f"  status",
    ]
    for row in summary["runs"]:
        precision = row["precision"] or "-"
        if row["tf32"]:
            precision += "+TF32"
        lines.append(f"{row['run']:<22}{precision:>12}{_cell(row['train_words_per_s'], '{:.0f}'):>15}"
                     f"{_cell(row['eval_words_per_s'], '{:.0f}'):>14}{_cell(row['peak_gpu_memory_mib'], '{:.0f}'):>14}"
                     f"{_cell(row['test_f1'], '{:.4f}'):>9}  {row['status']}")
    ratios = summary["nerlib_bf16_vs_trainer_bf16"]
    verdict = {None: "", True: " met", False: " MISSED"}[ratios["train_target_met"]]
    lines += ["", f"nerlib bf16 / Trainer bf16+grouped: train x{_cell(ratios['train'], '{:.2f}')} (target >= "
                  f"{ratios['train_target']}{verdict}), eval x{_cell(ratios['eval'], '{:.2f}')}, test F1 "
                  f"{_cell(ratios['f1_points'], '{:+.2f}')} points"]
    resume = summary["resume"]
    comparison = resume["comparison"]
    if comparison:
        same = ("bit-identical" if comparison["identical"] else
                f"NOT identical ({comparison['differing']} of {comparison['tensors']} tensors differ, "
                f"max |diff| {comparison['max_abs_diff']:.3g})")
        lines.append(f"resume (fp32, TF32 off; SIGTERM, then --resume): stopped with exit "
                     f"{resume['killed_exit_code']}, resumed {resume['resumed']}; weights {same}; loss at every "
                     f"step {'equal' if comparison['loss_by_step_equal'] else 'DIFFERENT'}")
    else:
        lines.append(f"resume: reference {resume['reference']}; stopped run {resume['killed']}; resumed "
                     f"{resume['resumed']}")
    return "\n".join(lines)


def environment() -> dict:
    """Versions and the GPUs, as the runs saw them."""
    import torch
    import transformers

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            gpus.append({"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}",
                         "memory_mib": torch.cuda.get_device_properties(index).total_memory / 2**20})
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda, "gpus": gpus}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("same-weights", help="compare two finished runs' weights and losses")
    compare.add_argument("reference")
    compare.add_argument("resumed")
    probe = commands.add_parser("environment", help="print versions and GPUs as JSON")
    probe.add_argument("--commit", default=None)
    report = commands.add_parser("summary", help="print the table and write the JSON file")
    report.add_argument("--work", required=True)
    report.add_argument("--out", required=True)
    report.add_argument("--mode", required=True, choices=("gpu", "dry-run"))
    report.add_argument("--gpus", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "same-weights":
        print(json.dumps(same_weights(args.reference, args.resumed)))
        return 0
    if args.command == "environment":
        print(json.dumps({**environment(), "commit": args.commit}))
        return 0
    summary = summarise(args.work, args.mode, args.gpus)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
