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
    # The nerlib run leaves nerlib's loop as it found it.
    import nerlib.loop

    assert nerlib.loop.evaluate_prepared.__module__ == "nerlib.loop"


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
