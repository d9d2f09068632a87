"""`nerlib serve` isolates bad requests and bad settings: a poisoned request fails alone, a slow one gets 503 within
its time budget without holding the worker, a dead worker fails /health and stops the process with exit code 7,
and a port in use or an impossible host is refused (exit code 6) before the model is loaded."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'nerlib[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'nerlib[serve]'")

import nerlib  # noqa: E402
from nerlib.cli import run, serve_main  # noqa: E402
from nerlib.config import ServeConfig  # noqa: E402
from nerlib.prediction import Predictor  # noqa: E402
from nerlib.serve import create_app  # noqa: E402

from test_serve import call, model, post_json, running  # noqa: E402,F401  (model: the module's fixture)

POISON = "carol met the poison in lima"


class Fatal(BaseException):
    """Not an Exception: nothing in the worker's loop catches it, so the worker thread dies of it."""


def expected(model, texts):
    return [[e.to_dict() for e in entities] for entities in nerlib.predict(model.model_dir, texts, device="cpu")]


def test_valid_requests_batched_with_a_poisoned_one_all_succeed(model, monkeypatch):
    honest = Predictor.__call__

    def poisoned(self, texts):
        if POISON in texts:
            raise RuntimeError("the tokenizer choked")
        return honest(self, texts)

    monkeypatch.setattr(Predictor, "__call__", poisoned)
    texts = [f"{name} saw {other} in {place}" for name, other, place in
             zip(["alice", "bob", "carol", "dave"] * 3, ["dave", "carol", "bob", "alice"] * 3,
                 ["paris", "oslo", "lima", "zurich", "paris", "oslo"] * 2)]
    texts = [text + " flu" * i for i, text in enumerate(texts)]  # twelve different texts
    order = texts[:6] + [POISON] + texts[6:]
    barrier = threading.Barrier(len(order))

    def one(text):
        barrier.wait()
        return post_json(port, {"text": text})

    # A long batching window, so that the poisoned request is sure to share a call of the model with others.
    with running(create_app(model.predictor, ServeConfig(batch_wait_ms=300), "tiny")) as port:
        with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
            answers = list(pool.map(one, order))
        health = call(port, "GET", "/health")[1]
    statuses = [status for status, _ in answers]
    assert statuses == [200] * 6 + [500] + [200] * 6, answers
    assert answers[6][1] == {"error": "the model failed: RuntimeError: the tokenizer choked"}
    monkeypatch.setattr(Predictor, "__call__", honest)
    got = [body["results"][0]["entities"] for status, body in answers if status == 200]
    assert got == expected(model, texts)
    # The group call failed, then the poisoned request alone: it did share a call with valid requests.
    assert health["failed_calls"] >= 2 and health["requests"] == len(texts) and health["status"] == "ok"


def test_a_slow_request_gets_503_within_its_budget_and_the_worker_drops_the_rest_of_it(model, monkeypatch):
    honest = Predictor.__call__
    slow_calls = []

    def slow(self, texts):
        if any(text.startswith("slow") for text in texts):
            slow_calls.append(list(texts))
            time.sleep(1.0)
        return honest(self, texts)

    monkeypatch.setattr(Predictor, "__call__", slow)
    # max_chars=8: a call of the model holds one of these texts, so the worker can drop the rest between calls.
    config = ServeConfig(request_timeout_s=1.5, max_chars=8)
    with running(create_app(model.predictor, config, "tiny")) as port:
        start = time.monotonic()
        status, body = post_json(port, {"texts": ["slow 1", "slow 2", "slow 3", "slow 4"]})
        answered = time.monotonic() - start
        assert status == 503 and "no answer within 1.5 s (--request-timeout-s)" in body["error"], body
        assert answered < 3.5  # the budget, not the 4 s the texts take
        # This one waits for the slow call under way (until about 2 s), not for the two after it.
        status, body = post_json(port, {"text": "alice"})
        deadline = time.monotonic() + 5
        while call(port, "GET", "/health")[1]["timed_out"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker counts the dropped request when it reaches its next call
        health = call(port, "GET", "/health")[1]
    assert status == 200 and body["results"][0]["entities"] == expected(model, ["alice"])[0], body
    assert slow_calls == [["slow 1"], ["slow 2"]] and health["timed_out"] == 1


def test_a_large_request_does_not_keep_a_small_one_waiting_until_it_is_done(model, monkeypatch):
    honest = Predictor.__call__
    calls = []

    def slow(self, texts):
        calls.append(list(texts))
        if any(text.startswith("slow") for text in texts):
            time.sleep(0.8)
        return honest(self, texts)

    monkeypatch.setattr(Predictor, "__call__", slow)
    # max_chars=8: each slow text is a call of its own, and the worker takes waiting requests between them.
    with running(create_app(model.predictor, ServeConfig(max_chars=8), "tiny")) as port:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            large = pool.submit(post_json, port, {"texts": ["slow 1", "slow 2", "slow 3", "slow 4"]})
            while not calls:  # the large request is under way
                time.sleep(0.01)
            small = pool.submit(post_json, port, {"text": "alice"})
            status, body = small.result()
            small_done = large.done()
            large_status, large_body = large.result()
    assert status == 200 and body["results"][0]["entities"] == expected(model, ["alice"])[0]
    assert not small_done, "the small request was answered only after the large one"
    assert calls.index(["alice"]) < len(calls) - 1 and large_status == 200
    monkeypatch.setattr(Predictor, "__call__", honest)
    assert [r["entities"] for r in large_body["results"]] == expected(model, ["slow 1", "slow 2", "slow 3", "slow 4"])


def test_a_dead_worker_fails_health_and_every_request(model, monkeypatch):
    honest = Predictor.__call__

    def fatal(self, texts):
        if POISON in texts:
            raise Fatal("the worker was killed")
        return honest(self, texts)

    monkeypatch.setattr(Predictor, "__call__", fatal)
    with running(create_app(model.predictor, ServeConfig(), "tiny")) as port:
        assert call(port, "GET", "/health")[0] == 200
        status, body = post_json(port, {"text": POISON})
        assert status == 503 and "the model's worker stopped: Fatal: the worker was killed" in body["error"], body
        status, health, _ = call(port, "GET", "/health")
        assert status == 503 and health["status"] == "failed" and "worker stopped" in health["error"]
        start = time.monotonic()
        status, body = post_json(port, {"text": "alice"})  # answered at once, not left hanging
        assert status == 503 and "worker stopped" in body["error"] and time.monotonic() - start < 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_serve_command_exits_7_when_its_worker_dies(model, monkeypatch, capsys):
    honest = Predictor.__call__

    def fatal(self, texts):
        if POISON in texts:
            raise Fatal("the worker was killed")
        return honest(self, texts)

    monkeypatch.setattr(Predictor, "__call__", fatal)
    port = free_port()
    codes = []
    # In a thread of this process (uvicorn leaves the signals alone outside the main thread).
    thread = threading.Thread(target=lambda: codes.append(run(serve_main, [
        model.model_dir, "--port", str(port), "--device", "cpu", "--request-timeout-s", "5"])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while True:
        try:
            assert call(port, "GET", "/health")[0] == 200
            break
        except OSError:
            assert thread.is_alive() and time.monotonic() < deadline, capsys.readouterr().err
            time.sleep(0.1)
    assert post_json(port, {"text": POISON})[0] == 503
    thread.join(30)
    assert not thread.is_alive() and codes == [7]
    err = capsys.readouterr().err
    assert "nerlib serve: error: the model's worker stopped (Fatal: the worker was killed); the service shut down" \
        in err or "error: the model's worker stopped (Fatal: the worker was killed)" in err, err


def _not_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the address was checked")


@pytest.mark.parametrize("host, message", [
    ("127.0.0.1", "cannot listen: the port is in use"),
    ("nope.invalid", "--host nope.invalid --port {port}: cannot listen: no such address"),
    ("999.1.1.1", "--host 999.1.1.1 --port {port}: cannot listen: no such address"),
    ("203.0.113.7", "cannot listen: the address is not this machine's"),  # TEST-NET-3: never a local address
])
def test_a_port_in_use_or_an_impossible_host_is_exit_6_before_the_model_loads(model, host, message, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr("nerlib.serve.load_predictor", _not_loaded)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert run(serve_main, [model.model_dir, "--host", host, "--port", str(port)]) == 6
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and message.format(port=port) in lines[0], err


@pytest.mark.parametrize("argv, message", [
    (["--batch-wait-ms", "1e13"], "--batch-wait-ms must be in [0, 10000], got 10000000000000.0"),
    (["--batch-wait-ms", "nan"], "--batch-wait-ms must be a finite number"),
    (["--request-timeout-s", "0"], "--request-timeout-s must be in (0, 3600], got 0"),
    (["--request-timeout-s", "inf"], "--request-timeout-s must be a finite number"),
    (["--max-batch-texts", "1000000000"], "--max-batch-texts must be in [1, 100000]"),
    (["--max-texts", "1000000000"], "--max-texts must be in [1, 100000]"),
    (["--max-chars", "0"], "--max-chars must be in [1, 10000000], got 0"),
    (["--max-body-bytes", "99999999999"], "--max-body-bytes must be in [1, 1073741824]"),
])
def test_serve_settings_out_of_bounds_are_one_line_before_the_model_loads(model, argv, message, monkeypatch, capsys):
    monkeypatch.setattr("nerlib.serve.load_predictor", _not_loaded)
    assert run(serve_main, [model.model_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
