"""`nerlib serve MODEL_DIR`: an HTTP service over `nerlib.predict`, with requests batched together.

    POST /predict   {"text": "..."} or {"texts": ["...", ...]}  ->  {"results": [{"entities": [...]}], "labels", "types"}
    GET  /health    model, backend and counters        GET /labels   the label set and entity types
    GET  /          a page to paste text into and see its entities highlighted
    GET  /openapi.json  the OpenAPI schema

One worker thread runs the model. Requests wait in a queue; with batching on, the worker takes the
first one, gathers what else arrives within `batch_wait_ms` (and whatever queued up while it was
busy), runs all their texts through one call of the inference path, and hands each request its
part. A call that fails is made again for each of its requests alone, so only the culprit gets 500.
A text that is not Unicode (a lone surrogate) is refused at the door (422). A request not answered
within `request_timeout_s` gets 503 and the worker drops what is left of it. If the worker dies,
/health answers 503 and `serve` shuts the server down and raises `ServiceFailed` (exit code 7); a
host and port that cannot be listened on are refused before the model loads (`CannotListen`, 6).

FastAPI and uvicorn are the optional extra `nerlib[serve]`. This module imports them only in
`create_app` and `serve`, so it also holds no `from __future__ import annotations` (FastAPI reads
the endpoint annotations at run time).
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .config import ServeConfig
from .errors import NerlibError, import_optional
from .prediction import Entity, Predictor, load_predictor

logger = logging.getLogger(__name__)

EXTRA = "serve"
PAGE = "static/serve.html"


class CannotListen(NerlibError):
    """`nerlib serve` cannot listen on its `--host` and `--port` (a port in use, a host that is not this machine's);
    found before the model is loaded."""

    exit_code = 6


class ServiceFailed(NerlibError):
    """The worker that runs the model stopped; the service shut down rather than leave requests hanging."""

    exit_code = 7


class WorkerStopped(RuntimeError):
    """What a request gets once the model's worker thread has stopped."""


@dataclass
class _Job:
    texts: List[str]
    future: concurrent.futures.Future
    results: list = dataclasses.field(default_factory=list)


@dataclass
class BatchStats:
    """What the worker has done: requests answered, texts tagged, calls of the model, failed calls, and the
    requests whose time budget ran out (dropped by the worker before or between calls of the model)."""

    requests: int = 0
    texts: int = 0
    model_calls: int = 0
    failed_calls: int = 0
    timed_out: int = 0


def _settle(future: concurrent.futures.Future, result=None, error: Optional[BaseException] = None) -> None:
    """Answer a request's future unless it was answered already (its time budget ran out and it was cancelled)."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


class Batcher:
    """One worker thread that runs the model on the texts of queued requests, grouped or one at a time.

    A call of the model that fails for a group of requests is made again for each request alone, so
    only the request that caused it fails. A group is run in calls of at most `max_call_chars`
    characters; between calls the requests already answered (their time budget ran out) are
    dropped, so an abandoned request does not keep the worker, and the requests that queued in the
    meantime are run, so a large request does not keep the others waiting. If the worker stops, every
    waiting request fails, `failure` says why and `on_death` is called.
    """

    def __init__(self, predict: Callable[[List[str]], List[List[Entity]]], batching: bool = True,
                 wait_s: float = 0.002, max_texts: int = 256, max_call_chars: Optional[int] = None,
                 on_death: Optional[Callable[[], None]] = None):
        """
        Args:
            predict: texts to their entities (one call is one run of the inference path).
            batching: group requests that arrive together; False: one request per call.
            wait_s: how long the first request of a group waits for others.
            max_texts: most texts in a group (a single larger request still runs whole).
            max_call_chars: most characters in one call of the model (a longer text still runs whole);
                None: no limit.
            on_death: called (from the worker thread) if the worker stops on an error.
        """
        self._predict = predict
        self._batching = batching
        self._wait_s = wait_s
        self._max_texts = max_texts
        self._max_call_chars = max_call_chars
        self._on_death = on_death
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._lock = threading.Lock()
        self.stats = BatchStats()
        self.failure: Optional[str] = None
        self._current: List[_Job] = []  # the group being run, answered too if the worker dies
        self._stop_requested = False  # close()'s marker was taken while serving requests between calls
        self._thread = threading.Thread(target=self._work, name="nerlib-serve-model", daemon=True)
        self._thread.start()

    def submit(self, texts: List[str]) -> concurrent.futures.Future:
        """Queue texts; the future's result is their entities, in order (or WorkerStopped, the worker being gone)."""
        job = _Job(list(texts), concurrent.futures.Future())
        with self._lock:
            if self.failure is None:
                self._queue.put(job)
                return job.future
        _settle(job.future, error=WorkerStopped(f"the model's worker stopped: {self.failure}"))
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the requests queued so far."""
        self._queue.put(None)
        self._thread.join(timeout)

    def snapshot(self) -> BatchStats:
        with self._lock:
            return dataclasses.replace(self.stats)

    def _gather(self, first: _Job) -> tuple:
        """The first job and those that join it; and whether the worker was asked to stop."""
        group, count = [first], len(first.texts)
        deadline = time.monotonic() + self._wait_s
        while self._batching and count < self._max_texts:
            try:
                # Whatever queued while the model was busy is taken at once; then wait out the window.
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return group, True
            group.append(job)
            count += len(job.texts)
        return group, False

    def _work(self) -> None:
        try:
            stopping = False
            while not stopping and not self._stop_requested:
                first = self._queue.get()
                if first is None:
                    break
                group, stopping = self._gather(first)
                self._current = group
                self._run_group(group)
                self._current = []
        except BaseException as exc:  # anything that ends the loop ends the service: say so, answer everyone
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        logger.error("the model's worker stopped: %s: %s", type(exc).__name__, exc)
        with self._lock:
            self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        error = WorkerStopped(f"the model's worker stopped: {self.failure}")
        for job in self._current:
            _settle(job.future, error=error)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _settle(job.future, error=error)
        if self._on_death is not None:
            self._on_death()

    def _calls(self, pending: List[tuple]) -> List[List[tuple]]:
        """(job, text) pairs in calls of at most `max_call_chars` characters (at least one text a call)."""
        calls, current, size = [], [], 0
        for pair in pending:
            if current and self._max_call_chars is not None and size + len(pair[1]) > self._max_call_chars:
                calls.append(current)
                current, size = [], 0
            current.append(pair)
            size += len(pair[1])
        return calls + ([current] if current else [])

    def _run_group(self, group: List[_Job], interleave: bool = True) -> None:
        for job in group:
            if not job.texts:  # `{"texts": []}`: nothing to run, answered at once
                self._finish_if_complete(job)
        failed: set = set()
        calls = self._calls([(job, text) for job in group for text in job.texts])
        for number, call in enumerate(calls):
            self._run_call(call, failed)
            if interleave and number + 1 < len(calls) and not self._queue.empty():
                self._serve_waiting()

    def _serve_waiting(self) -> None:
        """Run the requests that queued while a long group runs, between two of its calls, so that one
        large request does not keep every other waiting until it is done."""
        waiting = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): finish what is under way, then stop
                self._stop_requested = True
                break
            waiting.append(job)
        self._current.extend(waiting)
        group: List[_Job] = []
        for job in waiting:
            if group and (not self._batching or sum(len(j.texts) for j in group) + len(job.texts) > self._max_texts):
                self._run_group(group, interleave=False)
                group = []
            group.append(job)
        if group:
            self._run_group(group, interleave=False)

    def _run_call(self, call: List[tuple], failed: set) -> None:
        """One call of the model on (job, text) pairs; a failure is narrowed down to the request that caused it."""
        live = [(job, text) for job, text in call if id(job) not in failed and not job.future.done()]
        jobs = list({id(job): job for job, _ in live}.values())
        for job, _ in call:  # answered already: its time budget ran out while it waited
            if job.future.done() and id(job) not in failed:
                failed.add(id(job))
                with self._lock:
                    self.stats.timed_out += 1
        if not live:
            return
        try:
            results = self._call([text for _, text in live])
        except Exception as exc:
            if len(jobs) == 1:
                self._fail(jobs[0], exc, failed)
                return
            # Which request caused it? Each one again alone: only the culprit fails.
            for job in jobs:
                try:
                    job.results.extend(self._call([text for owner, text in live if owner is job]))
                except Exception as solo_exc:
                    self._fail(job, solo_exc, failed)
                else:
                    self._finish_if_complete(job)
            return
        start = 0
        for job in jobs:
            count = sum(1 for owner, _ in live if owner is job)
            job.results.extend(results[start:start + count])
            start += count
            self._finish_if_complete(job)

    def _call(self, texts: List[str]) -> list:
        try:
            results = self._predict(texts)
        except Exception:
            logger.exception("the model failed on %d text(s)", len(texts))
            with self._lock:
                self.stats.failed_calls += 1
            raise
        with self._lock:
            self.stats.model_calls += 1
        return results

    def _fail(self, job: _Job, exc: Exception, failed: set) -> None:
        failed.add(id(job))
        _settle(job.future, error=exc)

    def _finish_if_complete(self, job: _Job) -> None:
        if len(job.results) == len(job.texts):
            with self._lock:
                self.stats.requests += 1
                self.stats.texts += len(job.texts)
            _settle(job.future, result=job.results)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the application reads it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        # Read the body here, counting (a chunked body declares no length), then hand it on whole.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        payload = json.dumps({"error": f"request body over {self.max_bytes} bytes (--max-body-bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


REQUIRED = '"text" (a string) or "texts" (a list of strings) is required, and nothing else'


def _field_name(location) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def _message(problem: dict) -> str:
    if problem.get("type") == "extra_forbidden":
        return f"unknown field: {REQUIRED}"
    message = str(problem.get("msg", ""))
    # pydantic prefixes the messages of a model's own checks: "Value error, give either ..."
    return message[len("Value error, "):] if message.startswith("Value error, ") else message


def text_problem(index: int, text: str, max_chars: int) -> Optional[tuple]:
    """Why a request's text is refused at the door, as `(status, message)`, or None when it is accepted.

    A lone surrogate (`"\ud800"` is valid JSON) is not text: no encoding holds it, and the
    tokenizer would fail on it in the middle of a batch.
    """
    if len(text) > max_chars:
        return 413, f"text {index} has {len(text)} characters; at most {max_chars} (--max-chars)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return 422, (f"text {index}: character {exc.start} is a lone surrogate (U+{ord(text[exc.start]):04X}), "
                     f"not text; send valid Unicode")
    return None


def page_html() -> str:
    """The page served at `/` (a package data file: no external scripts, styles or fonts)."""
    from importlib import resources

    return resources.files("nerlib").joinpath(PAGE).read_text(encoding="utf-8")


def create_app(predictor: Predictor, config: ServeConfig, model_name: str = "model",
               batcher: Optional[Batcher] = None):
    """The FastAPI application over a loaded predictor.

    Args:
        predictor: the model and its settings (`nerlib.prediction.load_predictor`).
        config: limits, batching and the time budget of a request.
        model_name: what /health calls the model.
        batcher: the worker that runs the model (`serve` passes one that stops the server if it
            dies); None: one is made here from `predictor` and `config`.

    Returns:
        The ASGI application (FastAPI inside the body-size middleware); its worker thread starts
        now and stops when the application shuts down.

    Raises:
        MissingExtra: FastAPI is not installed.
    """
    fastapi = import_optional("fastapi", EXTRA, "nerlib serve")
    import_optional("pydantic", EXTRA, "nerlib serve")
    from contextlib import asynccontextmanager

    if batcher is None:
        batcher = make_batcher(predictor, config)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json.
    app = fastapi.FastAPI(title="nerlib", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                          description="Named entities in raw text, with character offsets.")
    app.state.batcher = batcher
    _add_error_handlers(app)
    _add_routes(app, predictor, config, batcher, model_name, _schemas())
    return BodyLimit(app, config.max_body_bytes)


def make_batcher(predictor: Predictor, config: ServeConfig, on_death: Optional[Callable[[], None]] = None) -> Batcher:
    """The worker that runs `predictor` with the batching settings of `config`."""
    # A call of the model holds at most one longest text's worth of characters, so an abandoned request
    # keeps the worker for at most about that long after its budget ran out.
    return Batcher(predictor, config.batching, config.batch_wait_ms / 1000, config.max_batch_texts,
                   max_call_chars=config.max_chars, on_death=on_death)


def _error(code: int, message: str, **extra):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **extra}, status_code=code)


def _schemas():
    """The request and response models of /predict (pydantic), for validation and the OpenAPI schema."""
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class PredictRequest(BaseModel):
        """Either one text or a list of texts."""

        model_config = ConfigDict(extra="forbid")
        text: Optional[str] = Field(None, description="one text", examples=["Angela Merkel visited Paris."])
        texts: Optional[List[str]] = Field(None, description="several texts; the results come in the same order")

        @model_validator(mode="after")
        def one_of_text_or_texts(self):
            if (self.text is None) == (self.texts is None):
                raise ValueError('give either "text" (a string) or "texts" (a list of strings)')
            return self

    class EntityOut(BaseModel):
        type: str = Field(description="entity class, e.g. PER")
        text: str = Field(description="the entity as written: text[start:end]")
        start: int = Field(description="character offset of the first character (Unicode code points)")
        end: int = Field(description="character offset after the last character")
        score: float = Field(description="mean probability of the entity's word tags")
        word_start: int = Field(description="index of the first word")
        word_end: int = Field(description="index after the last word")

    class Result(BaseModel):
        entities: List[EntityOut]

    class PredictResponse(BaseModel):
        results: List[Result] = Field(description="one per text, in order")
        labels: List[str] = Field(description="the model's tags")
        types: List[str] = Field(description="the entity types")

    class ErrorOut(BaseModel):
        error: str

    return PredictRequest, PredictResponse, ErrorOut


def _add_error_handlers(app) -> None:
    """Every error as `{"error": "..."}`: malformed JSON and a missing body 400, invalid fields 422."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        problems = exc.errors()
        malformed = [p for p in problems if p.get("type") == "json_invalid"]
        if malformed:
            detail = malformed[0].get("ctx", {}).get("error", "")
            return _error(400, f"malformed JSON: {detail}".rstrip(": "))
        if any(p.get("type") == "missing" and tuple(p.get("loc", ())) == ("body",) for p in problems):
            return _error(400, 'empty body: send a JSON object, {"text": "..."} or {"texts": ["...", ...]}')
        if "json" not in request.headers.get("content-type", ""):
            return _error(400, "the body must be JSON, sent with Content-Type: application/json")
        fields = [{"field": _field_name(p.get("loc", ())), "message": _message(p)} for p in problems]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return _error(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))


def _add_routes(app, predictor: Predictor, config: ServeConfig, batcher: Batcher, model_name: str, schemas) -> None:
    """/, /health, /labels and /predict."""
    from fastapi.responses import HTMLResponse

    PredictRequest, PredictResponse, ErrorOut = schemas
    label_set = predictor.label_set
    types = list(label_set.classes)
    page = page_html()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        stats = batcher.snapshot()
        answer = {"status": "ok", "model": model_name, "backend": predictor.backend, "int8": config.int8,
                  "batching": config.batching, **dataclasses.asdict(stats)}
        if batcher.failure is not None:  # a service whose worker is gone answers nothing: a load balancer must know
            return _error(503, f"the model's worker stopped: {batcher.failure}", **{**answer, "status": "failed"})
        return answer

    @app.get("/labels")
    async def labels():
        return {"labels": list(label_set.labels), "types": types}

    error_responses = {status: {"model": ErrorOut, "description": description} for status, description in (
        (400, "malformed JSON"), (413, "over a size limit"), (422, "invalid fields or text that is not Unicode"),
        (500, "the model failed on this request"), (503, "the time budget ran out, or the worker stopped"))}

    @app.post("/predict", response_model=PredictResponse, responses=error_responses)
    async def predict(request: PredictRequest):
        texts = [request.text] if request.text is not None else request.texts
        if len(texts) > config.max_texts:
            return _error(413, f"{len(texts)} texts in one request; at most {config.max_texts} (--max-texts)")
        for index, text in enumerate(texts):
            problem = text_problem(index, text, config.max_chars)
            if problem:
                return _error(*problem)
        future = batcher.submit(texts)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), config.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # the worker drops it if it has not run it yet, or between its calls of the model
            return _error(503, f"no answer within {_plain(config.request_timeout_s)} s (--request-timeout-s); "
                               f"the service is busy or the request too large")
        except WorkerStopped as exc:
            return _error(503, str(exc))
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            return _error(500, f"the model failed: {type(exc).__name__}: {first_line}")
        return {"results": [{"entities": [e.to_dict() for e in entities]} for entities in results],
                "labels": list(label_set.labels), "types": types}


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _version() -> str:
    from . import __version__

    return __version__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host` and `port`, for the server to listen on: made before the model is
    loaded, so an address in use or a host that is not this machine's fails at once.

    Raises:
        CannotListen: the host does not resolve, or the address cannot be bound, naming both.
    """
    where = f"--host {host} --port {port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise CannotListen(f"{where}: cannot listen: no such address ({reason})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart despite TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "the port is in use", errno.EADDRNOTAVAIL: "the address is not this machine's",
               errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(exc.errno, exc.strerror)
        raise CannotListen(f"{where}: cannot listen: {why}") from None
    return sock


def serve(model_dir: str, config: ServeConfig) -> None:
    """Load `model_dir` and serve it until interrupted.

    Raises:
        MissingExtra: FastAPI or uvicorn is not installed.
        CannotListen: the host and port cannot be listened on (checked before the model is loaded).
        NerlibError: the model cannot be loaded, or a bad option.
        ServiceFailed: the model's worker stopped, and with it the service.
    """
    for module in ("fastapi", "uvicorn"):  # before the model is loaded, so a missing extra fails at once
        import_optional(module, EXTRA, "nerlib serve")
    import uvicorn

    with contextlib.closing(listening_socket(config.host, config.port)) as sock:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        predictor = load_predictor(model_dir, config.batch_size, config.max_length, config.device, False,
                                   config.backend, config.int8, config.num_threads)
        predictor(["Warm up the model once before the first request."])
        server: list = []  # the server, once made: the worker's death asks it to stop

        def stop_serving() -> None:
            if server:
                server[0].should_exit = True

        batcher = make_batcher(predictor, config, on_death=stop_serving)
        app = create_app(predictor, config, os.path.basename(os.path.normpath(model_dir)), batcher)
        port = sock.getsockname()[1]
        if not _is_loopback(config.host):
            logger.warning("listening on %s: anyone who can reach this machine can send texts to the model",
                           config.host)
        logger.info("%s (%s backend%s, batching %s) at http://%s:%d/", model_dir, predictor.backend,
                    ", int8" if config.int8 else "", "on" if config.batching else "off", config.host, port)
        # Requests end within their time budget, so shutting down need not wait longer than that.
        server.append(uvicorn.Server(uvicorn.Config(
            app, host=config.host, port=port, access_log=config.access_log, log_level="info",
            timeout_graceful_shutdown=int(config.request_timeout_s) + 5)))
        try:
            server[0].run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has shut down: the user's way to stop
            pass
    if batcher.failure is not None:
        raise ServiceFailed(f"the model's worker stopped ({batcher.failure}); the service shut down")
    if not server[0].started:
        raise ServiceFailed("the server did not start (uvicorn's log above says why)")
