#!/usr/bin/env python
"""Two-rank torchrun runs repeated end to end, counting how many end cleanly.

    python bench/dist_stress.py --runs 30                  # 30 rounds; about 1-2 min a round on two cores
    python bench/dist_stress.py --runs 5 --scenarios fresh,resume --max-minutes 15

A round runs each scenario once; every scenario is a real `torchrun --standalone --nproc_per_node 2
train.py` on the CPU (gloo), with a tiny randomly initialised BERT and fixture data written here
(the test suite's builders, so the `test` extra must be installed):

* `fresh`: train, validation and test splits; the best epoch is not the last, so rank 0 reloads
  it and broadcasts it to the other rank before the test split is scored;
* `resume`: the same run stopped by SIGTERM after a checkpoint, then finished with `--resume`
  (the resumed run reloads the best epoch too);
* `no-val`: no validation split, so the last epoch is kept (no reload), with two torch threads a
  rank, so that the CPU inference shares its batches among Python threads.

A run that should succeed is clean when torchrun exits 0 (so every rank did), its stderr has no
trace of a C++ abort ("terminate called", SIGABRT) and it wrote `metrics.json`; the interrupted
half of `resume` is clean when it stopped with a checkpoint and no abort. The check is bounded:
each launch gets `--timeout` seconds (then its whole process group is killed and the run counts as
failed), and no round starts after `--max-minutes`. The last lines of the stderr of every failed
run are printed. Exit status 0 when every run was clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("fresh", "resume", "no-val")
# What a C++ abort leaves in the stderr of torchrun and its ranks.
ABORT_MARKS = ("terminate called", "SIGABRT", "Fatal Python error", "core dumped")
TRAIN_FLAGS = ("--batch-size=4", "--epochs=2", "--lr=5e-3", "--max-length=16", "--device=cpu", "--no-progress")
STOP_AFTER = "checkpoint-00000003"  # the interrupted run is stopped once this checkpoint is complete


@dataclass
class Launch:
    """One torchrun launch: what it was, how it ended, its stderr."""

    name: str
    returncode: int | None  # None: killed at the time limit
    stderr: str
    seconds: float


def verdict(launch: Launch, expect_success: bool, expected: tuple[str, ...] = (), unexpected: tuple[str, ...] = (),
            wrote: str | None = None) -> str | None:
    """Why a launch did not end cleanly, or None when it did.

    Args:
        launch: the finished launch.
        expect_success: the run should exit 0 (False: it is the interrupted half of `resume`).
        expected: lines the log must contain (the scenario really took the path it names).
        unexpected: lines it must not contain.
        wrote: a file the run must have written.
    """
    if launch.returncode is None:
        return f"still running after the time limit ({launch.seconds:.0f} s)"
    marks = [mark for mark in ABORT_MARKS if mark in launch.stderr]
    if marks:
        return f"exit {launch.returncode}, stderr shows an abort ({', '.join(marks)})"
    if expect_success and launch.returncode != 0:
        return f"exit {launch.returncode}"
    if not expect_success and launch.returncode == 0:
        return "exit 0, but it should have been stopped"
    missing = [line for line in expected if line not in launch.stderr]
    if missing:
        return f"exit {launch.returncode}, but the log lacks {missing}"
    present = [line for line in unexpected if line in launch.stderr]
    if present:
        return f"exit {launch.returncode}, but the log has {present}"
    if wrote and not os.path.isfile(wrote):
        return f"exit {launch.returncode}, but {wrote} was not written"
    return None


def _torchrun(data: str, model: str, output_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(REPO_ROOT, "train.py"), f"--model={model}", f"--data={data}", f"--output-dir={output_dir}",
            *TRAIN_FLAGS, *extra]


def _env() -> dict:
    # Each run tokenises its data (no shared cache); one thread a rank unless a scenario asks more.
    # An abort prints the Python stack of every thread of the rank (faulthandler).
    return {**os.environ, "PYTHONPATH": REPO_ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "NERLIB_CACHE": "", "TOKENIZERS_PARALLELISM": "false", "PYTHONFAULTHANDLER": "1"}


def _finish(process: subprocess.Popen, name: str, started: float, timeout: float) -> Launch:
    try:
        _, stderr = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        return Launch(name, process.returncode, stderr, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its ranks: the launch has its own session
        _, stderr = process.communicate()
        return Launch(name, None, stderr, time.monotonic() - started)


def _start(command: list[str], work: str) -> subprocess.Popen:
    # Its own session, so that a launch past its time is killed with its ranks; the work folder as
    # the working directory, so that core files, if enabled, land there.
    return subprocess.Popen(command, env=_env(), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def launch(command: list[str], name: str, work: str, timeout: float) -> Launch:
    """Run one torchrun to its end (or the time limit)."""
    started = time.monotonic()
    return _finish(_start(command, work), name, started, timeout)


def launch_and_stop(command: list[str], name: str, work: str, checkpoint: str, timeout: float) -> Launch:
    """Run one torchrun and send it SIGTERM (torchrun passes it on to the ranks) once `checkpoint` exists."""
    started = time.monotonic()
    process = _start(command, work)
    # stderr is read only at the end: the fixture run logs far less than a pipe holds.
    while not os.path.isdir(checkpoint) and process.poll() is None and time.monotonic() - started < timeout:
        time.sleep(0.005)
    if process.poll() is None and os.path.isdir(checkpoint):
        process.send_signal(signal.SIGTERM)
    return _finish(process, name, started, timeout)


RELOAD = "the best by validation f1"  # logged by rank 0 when it reloads the best epoch


def run_scenario(scenario: str, fixtures: dict, work: str, timeout: float) -> list[tuple[Launch, str | None]]:
    """Run one scenario; returns each launch with why it was not clean (None: clean)."""
    output_dir = os.path.join(work, scenario)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    metrics = os.path.join(output_dir, "metrics.json")
    model = fixtures["model"]
    if scenario == "fresh":
        done = launch(_torchrun(fixtures["data"], model, output_dir), scenario, work, timeout)
        return [(done, verdict(done, True, expected=(RELOAD,), wrote=metrics))]
    if scenario == "no-val":
        done = launch(_torchrun(fixtures["data_no_val"], model, output_dir, "--num-threads=2"), scenario, work,
                      timeout)
        return [(done, verdict(done, True, unexpected=(RELOAD,), wrote=metrics))]
    if scenario == "resume":
        command = _torchrun(fixtures["data"], model, output_dir, "--save-steps=1")
        stopped = launch_and_stop(command, "resume (stopped)", work,
                                  os.path.join(output_dir, "checkpoints", STOP_AFTER), timeout)
        results = [(stopped, verdict(stopped, False, expected=("checkpoint written to",)))]
        if results[0][1] is None:
            resumed = launch(command + ["--resume"], "resume (resumed)", work, timeout)
            results.append((resumed, verdict(resumed, True, expected=("resuming from", RELOAD), wrote=metrics)))
        return results
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")


def write_fixtures(folder: str) -> dict:
    """The tiny encoder and the data of the test suite (tests/conftest.py), written into `folder`."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from conftest import build_tiny_encoder, write_hub_folder

    data = write_hub_folder(os.path.join(folder, "data"), sizes=(64, 12, 12), seed=4)
    no_val = write_hub_folder(os.path.join(folder, "data-no-val"), sizes=(64, 12, 12), seed=4)
    shutil.rmtree(os.path.join(no_val, "val"))
    return {"model": build_tiny_encoder(os.path.join(folder, "model")), "data": data, "data_no_val": no_val}


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="rounds; each runs every scenario once")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of " + ", ".join(SCENARIOS))
    parser.add_argument("--timeout", type=float, default=300, help="seconds one torchrun launch may take")
    parser.add_argument("--max-minutes", type=float, default=120, help="no round starts after this")
    parser.add_argument("--tail", type=int, default=25, help="stderr lines printed for each failed run")
    parser.add_argument("--work-dir", help="where fixtures and runs go (default: a temporary folder, removed after)")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="nerlib-dist-stress-")
    os.makedirs(work, exist_ok=True)
    started = time.monotonic()
    failures: list[tuple[int, Launch, str]] = []
    clean_rounds = rounds = 0
    per_scenario = {scenario: [0, 0] for scenario in args.scenarios}  # clean, run
    try:
        fixtures = write_fixtures(os.path.join(work, "fixtures"))
        for round_number in range(1, args.runs + 1):
            if time.monotonic() - started > args.max_minutes * 60:
                print(f"--max-minutes {args.max_minutes:g} reached: {args.runs - rounds} round(s) not run")
                break
            rounds += 1
            round_clean = True
            for scenario in args.scenarios:
                results = run_scenario(scenario, fixtures, os.path.join(work, "runs"), args.timeout)
                scenario_clean = all(problem is None for _, problem in results)
                per_scenario[scenario][0] += scenario_clean
                per_scenario[scenario][1] += 1
                round_clean &= scenario_clean
                for result, problem in results:
                    print(f"round {round_number} {result.name}: {problem or 'clean'} ({result.seconds:.0f} s)",
                          flush=True)
                    if problem:
                        failures.append((round_number, result, problem))
            clean_rounds += round_clean
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    for round_number, result, problem in failures:
        print(f"\n--- round {round_number} {result.name}: {problem}; last {args.tail} lines of stderr:")
        print(tail(result.stderr, args.tail))
    print(f"\n{clean_rounds} of {rounds} rounds clean ("
          + ", ".join(f"{name} {clean} of {run}" for name, (clean, run) in per_scenario.items())
          + f"); {(time.monotonic() - started) / 60:.1f} min")
    return 0 if clean_rounds == rounds == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
