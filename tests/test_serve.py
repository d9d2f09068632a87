"""`nerlib serve` as users use it: a real server on a free loopback port, every endpoint and error, concurrent
requests, a failing model, the page in headless Chromium, and the command line."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'nerlib[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'nerlib[serve]'")

import uvicorn  # noqa: E402

import nerlib  # noqa: E402
from nerlib.cli import run, serve_main  # noqa: E402
from nerlib.config import ServeConfig  # noqa: E402
from nerlib.prediction import load_predictor  # noqa: E402
from nerlib.serve import create_app  # noqa: E402

from conftest import ROOT, cli_env, train_tiny_model  # noqa: E402

LIMITS = dict(max_texts=4, max_chars=300, max_body_bytes=2000)
TEXTS = ["alice and bob saw acme , an eagle and measles in paris .", "carol met dave in oslo", "",
         "flu near lima with bob ."]


def call(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
         chunked: bool = False) -> tuple[int, dict | str, dict]:
    """One HTTP request to the server on 127.0.0.1; returns status, parsed JSON (or text) and headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if isinstance(body, str):
            body = body.encode("utf-8")
        if chunked:
            connection.request(method, path, body=iter([body[i:i + 500] for i in range(0, len(body), 500)]),
                               headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read().decode("utf-8")
        kind = response.getheader("content-type", "")
        return response.status, json.loads(raw) if "json" in kind else raw, dict(response.getheaders())
    finally:
        connection.close()


def post_json(port: int, payload) -> tuple[int, dict]:
    status, body, _ = call(port, "POST", "/predict", json.dumps(payload), {"Content-Type": "application/json"})
    return status, body


@contextlib.contextmanager
def running(app):
    """Serve an ASGI app with uvicorn in a thread, on a loopback socket bound here (so its port is free)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_encoder):
    model_dir, _ = train_tiny_model(tmp_path_factory.mktemp("serve"), tiny_encoder)
    return SimpleNamespace(model_dir=model_dir, predictor=load_predictor(model_dir, device="cpu"))


@pytest.fixture(scope="module")
def server(model):
    # A long batching window, so that concurrent requests are sure to meet in one call of the model.
    config = ServeConfig(batch_wait_ms=100, **LIMITS)
    with running(create_app(model.predictor, config, "tiny")) as port:
        yield port


def expected_entities(model, texts):
    return [[e.to_dict() for e in entities] for entities in nerlib.predict(model.model_dir, texts, device="cpu")]


def test_health_and_labels(server, model):
    status, health, _ = call(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny" and health["backend"] == "torch"
    status, labels, _ = call(server, "GET", "/labels")
    with open(os.path.join(model.model_dir, "config.json"), encoding="utf-8") as handle:
        id2label = json.load(handle)["id2label"]
    assert status == 200 and labels == {"labels": [id2label[str(i)] for i in range(len(id2label))],
                                        "types": ["PER", "LOC", "DIS"]}


def test_predict_one_text_and_several(server, model):
    status, body = post_json(server, {"text": TEXTS[0]})
    assert status == 200 and body["results"] == [{"entities": expected_entities(model, TEXTS[:1])[0]}]
    assert body["results"][0]["entities"] and body["types"] == ["PER", "LOC", "DIS"] and body["labels"][0] == "O"
    status, body = post_json(server, {"texts": TEXTS})
    assert status == 200 and [r["entities"] for r in body["results"]] == expected_entities(model, TEXTS)
    for text, result in zip(TEXTS, body["results"]):
        assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in result["entities"])


@pytest.mark.parametrize("body, headers, status, message", [
    ('{"texts": ["alice"', {"Content-Type": "application/json"}, 400, "malformed JSON"),
    ("", {"Content-Type": "application/json"}, 400, "empty body"),
    ("text=alice", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "the body must be JSON"),
    ('{"text": "a", "texts": ["b"]}', {"Content-Type": "application/json"}, 422, 'give either "text"'),
    ("{}", {"Content-Type": "application/json"}, 422, 'give either "text"'),
    ('{"texts": ["a", 5]}', {"Content-Type": "application/json"}, 422, "texts.1: Input should be a valid string"),
    ('{"text": "a", "lang": "en"}', {"Content-Type": "application/json"}, 422, "lang: unknown field"),
    ('{"txt": "alice"}', {"Content-Type": "application/json"}, 422,
     'txt: unknown field: "text" (a string) or "texts" (a list of strings) is required'),
    ('{"text": "alice \\ud800 bob"}', {"Content-Type": "application/json"}, 422,
     "text 0: character 6 is a lone surrogate (U+D800)"),
    ('{"texts": ["alice", "\\udfff"]}', {"Content-Type": "application/json"}, 422,
     "text 1: character 0 is a lone surrogate (U+DFFF)"),
    ("[1, 2]", {"Content-Type": "application/json"}, 422, "invalid request"),
    (json.dumps({"texts": ["a"] * 5}), {"Content-Type": "application/json"}, 413, "5 texts in one request; at most 4"),
    (json.dumps({"texts": ["a", "b " * 151]}), {"Content-Type": "application/json"}, 413,
     "text 1 has 302 characters; at most 300"),
    (json.dumps({"text": "x" * 2100}), {"Content-Type": "application/json"}, 413, "request body over 2000 bytes"),
])
def test_bad_requests_get_a_json_error(server, body, headers, status, message):
    got, payload, _ = call(server, "POST", "/predict", body, headers)
    assert got == status and message in payload["error"], payload
    # The server is still up and right after every error.
    assert post_json(server, {"text": "alice"})[0] == 200


def test_a_chunked_body_over_the_limit_is_refused_too(server):
    body = json.dumps({"texts": ["alice bob " * 25] * 9})  # no Content-Length: the limit is counted as it arrives
    status, payload, _ = call(server, "POST", "/predict", body, {"Content-Type": "application/json"}, chunked=True)
    assert len(body) > LIMITS["max_body_bytes"] and status == 413 and "over 2000 bytes" in payload["error"]
    small = json.dumps({"text": "alice in paris"})
    status, payload, _ = call(server, "POST", "/predict", small, {"Content-Type": "application/json"}, chunked=True)
    assert status == 200 and len(payload["results"]) == 1


def test_unknown_paths_and_methods(server):
    status, payload, _ = call(server, "GET", "/nothing")
    assert status == 404 and payload == {"error": "Not Found"}
    status, payload, _ = call(server, "GET", "/predict")
    assert status == 405 and payload == {"error": "Method Not Allowed"}
    status, payload, _ = call(server, "GET", "/docs")  # FastAPI's page would load its scripts from a CDN
    assert status == 404


def test_openapi_schema_describes_the_endpoints(server):
    status, schema, _ = call(server, "GET", "/openapi.json")
    assert status == 200 and {"/predict", "/health", "/labels"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["PredictRequest"]
    assert set(request["properties"]) == {"text", "texts"}
    responses = schema["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "422", "500"} <= set(responses)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, model):
    texts = [f"{name} met {other} in {place} ." for name, other, place in
             zip(["alice", "bob", "carol", "dave"] * 4, ["dave", "carol", "bob", "alice"] * 4,
                 ["paris", "oslo", "lima", "zurich"] * 4)]
    texts = [text + " flu" * i for i, text in enumerate(texts)]  # sixteen different texts
    before = call(server, "GET", "/health")[1]
    barrier = threading.Barrier(len(texts))

    def one(text):
        barrier.wait()
        return post_json(server, {"text": text})

    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(one, texts))
    assert [status for status, _ in answers] == [200] * len(texts)
    assert [body["results"][0]["entities"] for _, body in answers] == expected_entities(model, texts)
    after = call(server, "GET", "/health")[1]
    assert after["requests"] - before["requests"] == len(texts)
    assert after["model_calls"] - before["model_calls"] < len(texts)  # some requests shared a call of the model


def test_without_batching_every_request_is_its_own_call(model):
    with running(create_app(model.predictor, ServeConfig(batching=False), "tiny")) as port:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda text: post_json(port, {"text": text}), [TEXTS[0]] * 6))
        assert all(status == 200 for status, _ in answers)
        health = call(port, "GET", "/health")[1]
    assert health["batching"] is False and health["requests"] == health["model_calls"] == 6


class FailsOnce(torch.nn.Module):
    """The trained model, except that its first forward pass raises (a model error injected by the test)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.failed = False

    def forward(self, **inputs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return self.inner(**inputs)


def test_a_model_error_answers_500_and_the_server_goes_on(model):
    predictor = dataclasses.replace(model.predictor, model=FailsOnce(model.predictor.model))
    with running(create_app(predictor, ServeConfig(), "tiny")) as port:
        status, body = post_json(port, {"text": TEXTS[0]})
        assert status == 500 and body == {"error": "the model failed: RuntimeError: injected failure"}
        status, body = post_json(port, {"text": TEXTS[0]})
        assert status == 200 and body["results"][0]["entities"] == expected_entities(model, TEXTS[:1])[0]
        health = call(port, "GET", "/health")[1]
    assert health["failed_calls"] == 1 and health["model_calls"] == 1


class _Sources(HTMLParser):
    """Every src and href of a page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_page_is_served_by_the_package_alone(server):
    status, page, headers = call(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and "<textarea" in page
    parser = _Sources()
    parser.feed(page)
    assert parser.links == []  # no external (or any other) script, style sheet, font or image
    assert not re.search(r"https?://", page) and "@import" not in page


class _Marks(HTMLParser):
    """The highlighted entities of the page's output: (type, score, text) of each <mark>."""

    def __init__(self):
        super().__init__()
        self.marks: list[list] = []
        self._open: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "mark":
            attributes = dict(attrs)
            self._open = [attributes.get("data-type"), attributes.get("title"), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag):
        if tag == "mark" and self._open is not None:
            self.marks.append(self._open)
            self._open = None


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_page_highlights_entities_in_headless_chromium(server, model):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium)")
    # An emoji before the entities: the page must turn code-point offsets into the right characters.
    text = "🙂 alice and bob saw acme , an eagle and measles in paris ."
    url = f"http://127.0.0.1:{server}/?text={urllib.parse.quote(text)}"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Marks()
    parser.feed(result.stdout)
    (expected,) = nerlib.predict(model.model_dir, [text], device="cpu")
    assert expected  # the model finds entities in this text
    assert [(kind, content) for kind, _, content in parser.marks] == [(e.type, e.text) for e in expected]
    assert [title for _, title, _ in parser.marks] == [f"{e.type} · score {e.score:.3f}" for e in expected]
    entity_count = f"{len(expected)} entities" if len(expected) != 1 else "1 entity"
    assert entity_count in result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_listens_on_loopback_and_stops_on_ctrl_c(model):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nerlib", "serve", model.model_dir, "--port", str(port),
                                "--device", "cpu", "--num-threads", "1"],
                               cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # a loaded machine takes long to import torch
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                status, health, _ = call(port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer within 300 s"
                time.sleep(0.2)
        assert status == 200 and health["backend"] == "torch" and health["batching"] is True
        status, body = post_json(port, {"text": TEXTS[0]})
        assert status == 200 and body["results"][0]["entities"] == expected_entities(model, TEXTS[:1])[0]
        listening = [line for line in _listening_sockets() if line.endswith(f":{port}")]
        assert listening == [f"127.0.0.1:{port}"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0 and f"http://127.0.0.1:{port}/" in output


def _listening_sockets() -> list[str]:
    """Local addresses of listening IPv4 TCP sockets, from /proc/net/tcp (state 0A)."""
    try:
        with open("/proc/net/tcp", encoding="ascii") as handle:
            rows = handle.read().splitlines()[1:]
    except OSError:
        pytest.skip("no /proc/net/tcp to read the listening sockets from")
    addresses = []
    for row in rows:
        fields = row.split()
        if fields[3] != "0A":
            continue
        host, port = fields[1].split(":")
        octets = [str(int(host[i:i + 2], 16)) for i in range(6, -2, -2)]  # little-endian hex
        addresses.append(f"{'.'.join(octets)}:{int(port, 16)}")
    return addresses


@pytest.mark.parametrize("argv, message", [
    (["--max-texts", "0"], "--max-texts must be in [1, 100000], got 0"),
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--backend", "onnx"], "no model.onnx"),
])
def test_serve_command_errors_are_one_line(model, argv, message, capsys):
    assert run(serve_main, [model.model_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_serve_without_the_extra_names_it(model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert run(serve_main, [model.model_dir]) == 2
    err = capsys.readouterr().err
    assert "pip install 'nerlib[serve]'" in err and len(err.strip().splitlines()) == 1
