"""bench/vs_trainer.py: the ratios and verdicts it prints, and one tiny run of every side."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "vs_trainer.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("vs_trainer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(words_per_s, eval_words_per_s=None, rss=1000.0, f1=None, padding=None):
    return {"train_words_per_s": words_per_s, "eval_words_per_s": eval_words_per_s, "peak_rss_mib": rss, "f1": f1,
            "padding_efficiency": padding}


def test_ratios_and_targets():
    bench = load_bench()
    results = {
        "nerlib": run(1000.0, 3100.0, rss=900.0, f1=0.897, padding=0.94),
        "bare": run(1040.0),
        "trainer": run(400.0, 1000.0, rss=1000.0, f1=0.900, padding=0.43),
        "trainer-bf16": run(900.0, 2000.0, rss=1100.0, f1=0.902, padding=0.94),
    }
    summary = bench.summarise(results)
    assert summary["train_vs_trainer"] == pytest.approx(2.5) and summary["targets"]["train_vs_trainer"]
    assert summary["train_vs_trainer_bf16"] == pytest.approx(1000 / 900)
    assert summary["targets"]["train_vs_trainer_bf16"] is False  # 1.11 < 1.15
    assert summary["eval_vs_trainer"] == pytest.approx(3.1) and summary["targets"]["eval_vs_trainer"]
    assert summary["targets"]["rss_vs_trainer"] and summary["loop_efficiency"] == pytest.approx(1000 / 1040)
    # F1 is measured against the lower Trainer run: 0.897 is 0.3 points below 0.900.
    assert summary["f1_points_below_lower_trainer"] == pytest.approx(0.3) and summary["targets"]["f1"]
    assert summary["targets"]["padding_efficiency"] and summary["targets"]["loop_efficiency"]


def test_the_bf16_target_is_judged_only_where_bf16_is_native(tmp_path):
    bench = load_bench()
    results = {"nerlib": run(1000.0, 3000.0, f1=0.9, padding=0.94), "trainer-bf16": run(50.0, 400.0, f1=0.9)}
    native = bench.summarise(results)
    assert native["targets"]["train_vs_trainer_bf16"] is True  # 20x
    emulated = bench.summarise(results, native_bf16=False)
    assert emulated["train_vs_trainer_bf16"] == pytest.approx(20.0)  # still shown
    assert emulated["targets"]["train_vs_trainer_bf16"] is None
    args = bench.parse_args(["--data", str(tmp_path), "--model", str(tmp_path), "--runs", "nerlib,trainer-bf16"])
    environment = {"torch": "2.x", "transformers": "5.x", "cpu": "x86_64 AVX2", "cpu_count": 2, "load_average": 0.0,
                   "emulated_bf16": True}
    (line,) = [line for line in bench.format_report(args, results, {}, emulated, environment).splitlines()
               if line.startswith("nerlib / Trainer bf16+grouped")]
    assert "not comparable here" in line and "met" not in line and "MISSED" not in line


def test_missing_runs_give_no_verdict():
    summary = load_bench().summarise({"nerlib": run(1000.0, padding=0.5)})
    assert summary["train_vs_trainer"] is None and summary["targets"]["train_vs_trainer"] is None
    assert summary["targets"]["padding_efficiency"] is False


def test_tiny_run_of_every_side_but_bf16(hub_folder, tiny_encoder, tmp_path, monkeypatch, capsys):
    # The runs go through the parent's argument passing and table, but in this process (a
    # subprocess each would spend most of the test importing torch three times).
    bench = load_bench()

    def in_process(command, **kwargs):
        assert command[:2] == [sys.executable, os.path.abspath(SCRIPT)]
        bench.child_main(bench.parse_args(command[2:]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench.subprocess, "run", in_process)
    monkeypatch.setenv("NERLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    code = bench.main(["--data", hub_folder, "--model", tiny_encoder, "--runs", "nerlib,bare,trainer", "--lr", "5e-3",
                       "--batch-size", "8", "--no-progress", "--json-out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "nerlib / Trainer:" in printed and "loop efficiency" in printed
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"nerlib", "bare", "trainer"} and not report["failed"]
    # Both sides train on every word of the split and score every word of the test split.
    assert runs["nerlib"]["train_words"] == runs["bare"]["train_words"] == runs["trainer"]["train_words"] > 0
    assert runs["nerlib"]["eval_words"] == runs["trainer"]["eval_words"] == runs["trainer"]["eval_words_in_split"]
    for name in ("nerlib", "trainer"):
        assert runs[name]["train_words_per_s"] > 0 and runs[name]["eval_words_per_s"] > 0
        assert 0 <= runs[name]["f1"] <= 1 and 0 < runs[name]["padding_efficiency"] <= 1
    assert runs["nerlib"]["train_cpu_seconds"] > 0 and report["summary"]["loop_efficiency"] > 0
    # nerlib's clocks are train()'s own phase times (no patching of the library, no log parsing).
    assert runs["nerlib"]["eval_cpu_seconds"] > 0 and runs["nerlib"]["startup_seconds"] > 0
    # The Trainer's training clock starts, as nerlib's does, once its loader, optimizer and schedule exist.
    assert runs["trainer"]["train_clock_started_after"] == ["lr_scheduler", "optimizer", "train_dataloader"]
    assert 0 < runs["trainer"]["train_seconds"] < runs["trainer"]["wall_seconds"]


def write_invocation(path, seed, runs, **settings):
    bench = load_bench()
    defaults = vars(bench.parse_args(["--data", str(path.parent), "--model", str(path.parent)]))
    document = {"settings": {**defaults, "seed": seed, **settings, "runs": list(runs)},
                "environment": {"torch": "2.x", "transformers": "5.x", "cpu": "x86_64 AVX2", "cpu_count": 2,
                                "load_average": 0.0}, "runs": runs}
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def test_combine_averages_each_run_over_the_invocations_that_made_it(tmp_path, capsys):
    bench = load_bench()
    first = write_invocation(tmp_path / "a.json", 1, {
        "nerlib": {**run(900.0, 3000.0, f1=0.79, padding=0.94), "precision": "fp32", "train_words": 100},
        "bare": run(1000.0),
        "trainer": {**run(400.0, 1000.0, f1=0.80), "precision": "fp32", "train_words": 100}})
    second = write_invocation(tmp_path / "b.json", 2, {
        "nerlib": {**run(1100.0, 3400.0, f1=0.81, padding=0.94), "precision": "fp32", "train_words": 100},
        "trainer": {**run(400.0, 1200.0, f1=0.80), "precision": "fp32", "train_words": 100}})
    settings, results, summary, _, spread = bench.combine([first, second])
    assert results["nerlib"]["train_words_per_s"] == pytest.approx(1000.0)
    assert results["nerlib"]["f1"] == pytest.approx(0.80) and results["nerlib"]["precision"] == "fp32"
    assert results["nerlib"]["train_words"] == 100 and isinstance(results["nerlib"]["train_words"], int)
    assert results["bare"]["train_words_per_s"] == 1000.0  # only in the first file
    assert summary["train_vs_trainer"] == pytest.approx(2.5) and summary["targets"]["train_vs_trainer"]
    assert summary["eval_vs_trainer"] == pytest.approx(3200 / 1100)
    assert summary["f1_points_below_lower_trainer"] == pytest.approx(0.0, abs=1e-9)
    assert settings.runs == ["nerlib", "bare", "trainer"]
    assert "seeds 1, 2" in spread and "900 - 1100  (2)" in spread and "1000 - 1000  (1)" in spread
    assert "seed 1: train x2.25, eval x3.00, peak RSS x1.00, F1 points below 1.00, loop efficiency 0.900" in spread
    assert "seed 2: train x2.75, eval x2.83, peak RSS x1.00, F1 points below -1.00\n" in spread + "\n"
    assert bench.main(["--combine", first, second]) == 0
    assert "train x2.50" in capsys.readouterr().out


def test_combine_refuses_other_settings_and_unreadable_files(tmp_path, capsys):
    bench = load_bench()
    first = write_invocation(tmp_path / "a.json", 1, {"nerlib": run(900.0)})
    other = write_invocation(tmp_path / "b.json", 1, {"nerlib": run(900.0)}, lr=2e-5)
    broken = tmp_path / "c.json"
    broken.write_text("{", encoding="utf-8")
    assert bench.main(["--combine", first, other]) == 2
    assert f"{other}: made with other settings than {first} (lr)" in capsys.readouterr().err
    for path in (str(broken), str(tmp_path / "missing.json")):
        assert bench.main(["--combine", first, path]) == 2
        message = capsys.readouterr().err
        assert path in message and message.count("\n") == 1 and "Traceback" not in message


# --- bench/gpu_check.sh and its report ---------------------------------------------------------------

GPU_CHECK = os.path.join(ROOT, "bench", "gpu_check.sh")


def load_gpu_report():
    spec = importlib.util.spec_from_file_location("gpu_check_report", os.path.join(ROOT, "bench", "gpu_check_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_script_is_valid_bash_and_refuses_unknown_steps(tmp_path):
    assert subprocess.run(["bash", "-n", GPU_CHECK]).returncode == 0
    refused = subprocess.run(["bash", GPU_CHECK, "--steps", "fp32,fp8"], capture_output=True, text=True,
                             env={**os.environ, "PYTHON": sys.executable})
    assert refused.returncode == 2 and refused.stderr == "gpu_check.sh: --steps: unknown step fp8\n"


def _write(path, content) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content if isinstance(content, str) else json.dumps(content))


def test_gpu_check_report_reads_every_run_and_works_out_the_ratio(tmp_path, capsys):
    report = load_gpu_report()
    work = str(tmp_path)
    _write(f"{work}/environment.json", {"torch": "2.x", "transformers": "5.x", "commit": "abc1234",
                                        "gpus": [{"name": "NVIDIA H200", "capability": "9.0"}]})
    for name, precision, tf32, train_rate, peak in (("fp32", "fp32", True, 3000.0, 900.0),
                                                    ("bf16", "bf16", True, 5000.0, 700.0)):
        _write(f"{work}/{name}/metrics.json", {
            "precision_mode": precision, "tf32": tf32, "world_size": 1, "device": "cuda",
            "train_words_per_s": train_rate, "test_words_per_s": 2 * train_rate, "peak_gpu_memory_mib": peak,
            "test": {"f1": 0.81, "words": 100}, "train_words": 1000, "skipped_steps": 0, "wall_time_s": 30.0})
        _write(f"{work}/{name}.code", "0\n")
    _write(f"{work}/fp16.code", "1\n")
    _write(f"{work}/fp16.log", "Traceback ...\n")
    _write(f"{work}/ddp.skipped", "one GPU\n")
    _write(f"{work}/trainer-bf16.code", "0\n")
    _write(f"{work}/trainer-bf16.json", {"settings": {"device": "cuda"}, "runs": {"trainer-bf16": {
        "precision": "bf16", "train_words_per_s": 4000.0, "eval_words_per_s": 8000.0, "peak_gpu_memory_mib": 1200.0,
        "f1": 0.80, "train_words": 1000, "eval_words": 100, "wall_seconds": 60.0}}})
    for name, code in (("resume-reference", 0), ("resume-killed", 3), ("resume-resumed", 0)):
        _write(f"{work}/{name}.code", f"{code}\n")
    _write(f"{work}/resume.json", {"identical": True, "tensors": 40, "differing": 0, "first_differing": [],
                                   "max_abs_diff": 0.0, "loss_by_step_equal": True})

    assert report.main(["summary", "--work", work, "--out", f"{work}/out.json", "--mode", "gpu", "--gpus", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out.json").read_text())
    ratios = summary["nerlib_bf16_vs_trainer_bf16"]
    assert ratios["train"] == pytest.approx(1.25) and ratios["train_target_met"] is True  # 5000 / 4000
    assert ratios["eval"] == pytest.approx(1.25) and ratios["f1_points"] == pytest.approx(1.0)
    status = {row["run"]: row["status"] for row in summary["runs"]}
    assert status == {"nerlib fp32": "ok", "nerlib fp16": "failed (exit 1; see fp16.log)", "nerlib bf16": "ok",
                      "nerlib bf16, 2 ranks": "not run: one GPU", "Trainer bf16+grouped": "ok"}
    assert summary["resume"]["killed_exit_code"] == "3"
    assert "NVIDIA H200 (compute capability 9.0)" in printed
    rows = {line.split("  ")[0].strip(): line.split() for line in printed.splitlines() if line.startswith("nerlib ")}
    assert rows["nerlib fp32"] == ["nerlib", "fp32", "fp32+TF32", "3000", "6000", "900", "0.8100", "ok"]
    assert "train x1.25 (target >= 1.15 met)" in printed
    assert "stopped with exit 3, resumed ok; weights bit-identical; loss at every step equal" in printed


def test_same_weights_compares_bit_for_bit(tmp_path):
    import torch
    from safetensors.torch import save_file

    report = load_gpu_report()
    tensors = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    for name, changed in (("one", {}), ("two", {}), ("three", {"b": torch.tensor([[0.75]])})):
        os.makedirs(tmp_path / name)
        save_file({**tensors, **changed}, str(tmp_path / name / "model.safetensors"))
        _write(str(tmp_path / name / "metrics.json"), {"train_loss_by_step": [[1, 0.5]]})
    assert report.same_weights(str(tmp_path / "one"), str(tmp_path / "two")) == {
        "identical": True, "tensors": 2, "differing": 0, "first_differing": [], "max_abs_diff": 0.0,
        "loss_by_step_equal": True}
    different = report.same_weights(str(tmp_path / "one"), str(tmp_path / "three"))
    assert (different["identical"], different["first_differing"], different["max_abs_diff"]) == (False, ["b"], 0.25)


def _gpu_check(tmp_path, hub_folder, tiny_encoder, *steps):
    """The script's dry run (forced where a GPU is present: the tests measure nothing)."""
    import torch

    out = tmp_path / "gpu_check.json"
    forced = ["--dry-run"] if torch.cuda.is_available() else []
    result = subprocess.run(["bash", GPU_CHECK, *forced, "--model", tiny_encoder, "--data", hub_folder,
                             "--out", str(out), *(["--steps", ",".join(steps)] if steps else [])],
                            capture_output=True, text=True, timeout=1800, cwd=str(tmp_path),
                            env={**os.environ, "PYTHON": sys.executable, "NERLIB_CACHE": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    if not forced:
        assert result.stderr.startswith("no GPU present: dry run on the CPU with tiny sizes")
    summary = json.loads(out.read_text())
    assert summary["mode"] == "dry-run"
    return {row["run"]: row for row in summary["runs"]}, summary, result.stdout


def test_gpu_check_dry_run_trains_on_the_cpu_and_fp16_is_refused(tmp_path, hub_folder, tiny_encoder):
    rows, _, printed = _gpu_check(tmp_path, hub_folder, tiny_encoder, "fp32", "fp16")
    fp32 = rows["nerlib fp32"]
    assert fp32["status"] == "ok" and fp32["precision"] == "fp32" and fp32["tf32"] is False
    assert fp32["train_words_per_s"] > 0 and fp32["eval_words_per_s"] > 0 and fp32["peak_gpu_memory_mib"] is None
    with open(os.path.join(hub_folder, "test", "test_en.jsonl"), encoding="utf-8") as handle:
        scored = [json.loads(line) for line in handle][:16]  # the dry run's --eval-samples
    assert fp32["test_words"] == sum(len(record["tokens"]) for record in scored)
    assert rows["nerlib fp16"]["status"] == "refused on the CPU, as it must be (fp16 needs CUDA)"
    assert rows["nerlib bf16"]["status"] == "not run: not asked for"
    assert "nerlib fp32" in printed and "refused on the CPU" in printed


@pytest.mark.slow
def test_gpu_check_dry_run_of_every_step(tmp_path, hub_folder, tiny_encoder):
    rows, summary, _ = _gpu_check(tmp_path, hub_folder, tiny_encoder)
    assert {run: row["status"] for run, row in rows.items()} == {
        "nerlib fp32": "ok", "nerlib fp16": "refused on the CPU, as it must be (fp16 needs CUDA)", "nerlib bf16": "ok",
        "nerlib bf16, 2 ranks": "ok", "Trainer bf16+grouped": "ok"}
    assert rows["nerlib bf16, 2 ranks"]["world_size"] == 2
    resume = summary["resume"]
    assert resume["killed_exit_code"] == "3" and resume["comparison"]["identical"]
    assert summary["nerlib_bf16_vs_trainer_bf16"]["train"] > 0


# --- bench/dist_stress.py: what counts as a clean run ---------------------------------------------

def load_stress():
    spec = importlib.util.spec_from_file_location("dist_stress", os.path.join(ROOT, "bench", "dist_stress.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


ABORTED_RANK = """test: f1 0.0000, scored 79 of 79 words
terminate called without an active exception
E1201 torch/distributed/elastic/multiprocessing/api.py] failed (exitcode: -6) local_rank: 1 (pid: 812)
"""


def test_stress_verdicts(tmp_path):
    stress = load_stress()
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    reloaded = "reloading epoch 1, the best by validation f1\ntest: f1 0.5000, scored 79 of 79 words\n"
    clean = stress.Launch("fresh", 0, reloaded, 20.0)

    assert stress.verdict(clean, True, expected=(stress.RELOAD,), wrote=str(metrics)) is None
    # The abort is caught whatever the exit status (torchrun says 1, a rank alone -6).
    for returncode in (0, 1, -6):
        problem = stress.verdict(stress.Launch("fresh", returncode, reloaded + ABORTED_RANK, 20.0), True)
        assert problem == f"exit {returncode}, stderr shows an abort (terminate called)"
    assert stress.verdict(stress.Launch("fresh", None, reloaded, 300.0), True) == \
        "still running after the time limit (300 s)"
    assert stress.verdict(stress.Launch("fresh", 1, reloaded, 20.0), True) == "exit 1"
    # A scenario that did not take its path, or wrote nothing, is not clean either.
    assert stress.verdict(clean, True, expected=("resuming from",)) == \
        "exit 0, but the log lacks ['resuming from']"
    assert stress.verdict(clean, True, unexpected=(stress.RELOAD,)) == \
        f"exit 0, but the log has [{stress.RELOAD!r}]"
    assert stress.verdict(clean, True, wrote=str(tmp_path / "absent.json")) == \
        f"exit 0, but {tmp_path / 'absent.json'} was not written"
    # The interrupted half of `resume` must stop (non-zero), with its checkpoint, and not abort.
    stopped = stress.Launch("resume (stopped)", 1, "SIGTERM after step 3; checkpoint written to x\n", 9.0)
    assert stress.verdict(stopped, False, expected=("checkpoint written to",)) is None
    assert stress.verdict(stress.Launch("resume (stopped)", 0, "", 9.0), False) == \
        "exit 0, but it should have been stopped"
