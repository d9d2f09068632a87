#!/usr/bin/env python
"""Load test of `nerlib serve` on loopback: N concurrent clients, a fixed number of requests, with and without batching.

    python bench/serve_load.py runs/five-onnx --clients 8 --requests 2000
    python bench/serve_load.py runs/five --clients 4 --requests 100 --time-limit 60

For each mode, a server (`python -m nerlib serve MODEL_DIR`, with `--no-batching` for the second)
is started on a free port of 127.0.0.1, and only there: the clients never send anything to
another address. After a short warm-up, `--clients` threads, each on its own keep-alive
connection, send `POST /predict` requests of `--texts-per-request` sentences (the split's
sentences joined back into text, in turn) until `--requests` have been sent or `--time-limit`
seconds have passed, whichever comes first; then the server is stopped. Reported per mode:
requests/s and words/s over the wall time of the load, p50/p99 latency of a request, errors
(any answer other than 200, or no answer: none are expected), and from /health the texts the
model ran per call (how much batching grouped).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, BENCH_DIR)

from inference import DEFAULT_DATA, build_texts, percentile  # noqa: E402

HOST = "127.0.0.1"  # loopback only, whatever else is configured
MODES = ("batching", "no-batching")
MAX_REQUESTS = 100_000
MAX_TIME_LIMIT_S = 3600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def request(connection: http.client.HTTPConnection, payload: bytes) -> int:
    connection.request("POST", "/predict", body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def get_json(port: int, path: str, timeout: float = 5) -> dict:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


def start_server(args: argparse.Namespace, mode: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "nerlib", "serve", args.model_dir, "--host", HOST, "--port", str(port),
               "--num-threads", str(args.threads), "--backend", args.backend,
               "--batching" if mode == "batching" else "--no-batching"]
    if args.int8:
        command.append("--int8")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "OMP_NUM_THREADS": str(args.threads)}
    process = subprocess.Popen(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.monotonic() + args.startup_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering")
        try:
            if get_json(port, "/health", timeout=2).get("status") == "ok":
                return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"the server did not answer within {args.startup_timeout:.0f} s")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(port: int, payloads: list[tuple[bytes, int]], clients: int, requests: int, time_limit: float) -> dict:
    """Send up to `requests` requests from `clients` threads within `time_limit` seconds."""
    lock = threading.Lock()
    next_index = [0]
    latencies, words, errors = [], [0], []
    deadline = time.monotonic() + time_limit

    def client() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next_index[0]
                    if index >= requests:
                        return
                    next_index[0] += 1
                payload, payload_words = payloads[index % len(payloads)]
                started = time.perf_counter()
                try:
                    status = request(connection, payload)
                except (OSError, http.client.HTTPException) as exc:
                    status = f"{type(exc).__name__}"
                    connection.close()
                    connection = http.client.HTTPConnection(HOST, port, timeout=60)
                elapsed = time.perf_counter() - started
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                        words[0] += payload_words
                    else:
                        errors.append(status)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = len(latencies)
    return {"requests": done, "errors": len(errors), "error_kinds": sorted({str(e) for e in errors}),
            "wall_s": wall, "requests_per_s": done / wall, "words_per_s": words[0] / wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "stopped_by_time": next_index[0] < requests}


def run_mode(args: argparse.Namespace, mode: str, payloads: list[tuple[bytes, int]]) -> dict:
    port = free_port()
    process = start_server(args, mode, port)
    try:
        warm = load(port, payloads, min(args.clients, 4), args.warmup, args.time_limit)
        before = get_json(port, "/health")
        result = load(port, payloads, args.clients, args.requests, args.time_limit)
        after = get_json(port, "/health")
        calls = after["model_calls"] - before["model_calls"]
        result["texts_per_model_call"] = (after["texts"] - before["texts"]) / calls if calls else None
        result["failed_model_calls"] = after["failed_calls"]
        result["warmup_errors"] = warm["errors"]
    finally:
        stop_server(process)
    return result


def format_report(args: argparse.Namespace, results: dict, words_per_request: float) -> str:
    lines = [f"nerlib serve {args.model_dir} on {HOST}: {args.clients} clients, up to {args.requests} requests of "
             f"{args.texts_per_request} sentence(s) ({words_per_request:.1f} words on average), {args.threads} threads, "
             f"load average {os.getloadavg()[0]:.1f} at the end",
             "",
             f"{'mode':<14}{'requests':>10}{'requests/s':>12}{'words/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
             f"{'texts/call':>12}"]
    for mode, result in results.items():
        if "failed" in result:
            lines.append(f"{mode:<14}failed: {result['failed']}")
            continue
        per_call = f"{result['texts_per_model_call']:.1f}" if result["texts_per_model_call"] else "-"
        lines.append(f"{mode:<14}{result['requests']:>10}{result['requests_per_s']:>12.1f}{result['words_per_s']:>10.0f}"
                     f"{result['p50_ms']:>9.1f}{result['p99_ms']:>9.1f}{result['errors']:>8}{per_call:>12}")
        if result["stopped_by_time"]:
            lines.append(f"{'':<14}(stopped by --time-limit {args.time_limit:g} s before all requests were sent)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="a model folder (train.py) or an exported one (nerlib export --onnx)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=1000, help=f"requests to send (at most {MAX_REQUESTS})")
    parser.add_argument("--time-limit", type=float, default=300, help=f"seconds of load per mode (at most {MAX_TIME_LIMIT_S})")
    parser.add_argument("--warmup", type=int, default=20, help="requests before the clock starts")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--int8", action="store_true", help="the exported folder's int8 model")
    parser.add_argument("--data", default=DEFAULT_DATA, help="data source of the sentences")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--sentences", type=int, default=2000, help="distinct sentences the requests cycle through")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds the server may take to start")
    parser.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        parser.error(f"--modes: expected some of {', '.join(MODES)}")
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be in 1-{MAX_REQUESTS}")
    if not 0 < args.time_limit <= MAX_TIME_LIMIT_S:
        parser.error(f"--time-limit must be in (0, {MAX_TIME_LIMIT_S}]")
    for name in ("clients", "texts_per_request", "threads", "sentences"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    corpus = build_texts(args.data, args.split, args.lang, args.sentences, 0)
    texts, counts, size = corpus["texts"], corpus["text_words"], args.texts_per_request
    starts = range(0, len(texts) - size + 1, size) if len(texts) >= size else [0]
    payloads = [(json.dumps({"texts": texts[i:i + size]}).encode("utf-8"), sum(counts[i:i + size])) for i in starts]
    results = {}
    for mode in args.modes:
        print(f"== {mode} ==", file=sys.stderr, flush=True)
        try:
            results[mode] = run_mode(args, mode, payloads)
        except RuntimeError as exc:
            results[mode] = {"failed": str(exc)}
    words_per_request = sum(w for _, w in payloads) / len(payloads)
    print(format_report(args, results, words_per_request))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=2)
            handle.write("\n")
    failed = any("failed" in r or r["errors"] or r["warmup_errors"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
