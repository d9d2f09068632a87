"""`nerlib serve MODEL_DIR`: an HTTP service over `nerlib.predict`, with requests batched together.

    POST /predict   {"text": "..."} or {"texts": ["...", ...]}  ->  {"results": [{"entities": [...]}], "labels", "types"}
    GET  /health    model, backend and counters        GET /labels   the label set and entity types
    GET  /          a page to paste text into and see its entities highlighted
    GET  /openapi.json  the OpenAPI schema

One worker thread runs the model. Requests wait in a queue; with batching on, the worker takes the
first one, gathers what else arrives within `batch_wait_ms` (and whatever queued up while it was
busy), runs all their texts through one call of the inference path, and hands each request its
part. A failing call answers its requests with 500 and the worker goes on.

FastAPI and uvicorn are the optional extra `nerlib[serve]`. This module imports them only in
`create_app` and `serve`, so it also holds no `from __future__ import annotations` (FastAPI reads
the endpoint annotations at run time).
"""

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .config import ServeConfig
from .errors import import_optional
from .prediction import Entity, Predictor, load_predictor

logger = logging.getLogger(__name__)

EXTRA = "serve"
PAGE = "static/serve.html"


@dataclass
class _Job:
    texts: List[str]
    future: concurrent.futures.Future


@dataclass
class BatchStats:
    """What the worker has done: requests answered, texts tagged, calls of the model, failed calls."""

    requests: int = 0
    texts: int = 0
    model_calls: int = 0
    failed_calls: int = 0


class Batcher:
    """One worker thread that runs the model on the texts of queued requests, grouped or one at a time."""

    def __init__(self, predict: Callable[[List[str]], List[List[Entity]]], batching: bool = True,
                 wait_s: float = 0.002, max_texts: int = 256):
        """
        Args:
            predict: texts to their entities (one call is one run of the inference path).
            batching: group requests that arrive together; False: one request per call.
            wait_s: how long the first request of a group waits for others.
            max_texts: most texts in a group (a single larger request still runs whole).
        """
        self._predict = predict
        self._batching = batching
        self._wait_s = wait_s
        self._max_texts = max_texts
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._lock = threading.Lock()
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._work, name="nerlib-serve-model", daemon=True)
        self._thread.start()

    def submit(self, texts: List[str]) -> concurrent.futures.Future:
        """Queue texts; the future's result is their entities, in order."""
        job = _Job(list(texts), concurrent.futures.Future())
        self._queue.put(job)
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
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group, stopping = self._gather(first)
            texts = [text for job in group for text in job.texts]
            try:
                results = self._predict(texts)
            except Exception as exc:  # a model error answers these requests; the worker goes on
                logger.exception("the model failed on %d text(s)", len(texts))
                with self._lock:
                    self.stats.failed_calls += 1
                for job in group:
                    job.future.set_exception(exc)
                continue
            with self._lock:
                self.stats.requests += len(group)
                self.stats.texts += len(texts)
                self.stats.model_calls += 1
            start = 0
            for job in group:
                job.future.set_result(results[start:start + len(job.texts)])
                start += len(job.texts)


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


def _field_name(location) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def _message(problem: dict) -> str:
    message = str(problem.get("msg", ""))
    # pydantic prefixes the messages of a model's own checks: "Value error, give either ..."
    return message[len("Value error, "):] if message.startswith("Value error, ") else message


def page_html() -> str:
    """The page served at `/` (a package data file: no external scripts, styles or fonts)."""
    from importlib import resources

    return resources.files("nerlib").joinpath(PAGE).read_text(encoding="utf-8")


def create_app(predictor: Predictor, config: ServeConfig, model_name: str = "model"):
    """The FastAPI application over a loaded predictor.

    Args:
        predictor: the model and its settings (`nerlib.prediction.load_predictor`).
        config: limits and batching.
        model_name: what /health calls the model.

    Returns:
        The ASGI application (FastAPI inside the body-size middleware); its worker thread starts
        now and stops when the application shuts down.

    Raises:
        MissingExtra: FastAPI is not installed.
    """
    fastapi = import_optional("fastapi", EXTRA, "nerlib serve")
    import_optional("pydantic", EXTRA, "nerlib serve")
    from contextlib import asynccontextmanager

    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    label_set = predictor.label_set
    types = list(label_set.classes)
    batcher = Batcher(predictor, config.batching, config.batch_wait_ms / 1000, config.max_batch_texts)
    page = page_html()

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

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json.
    app = fastapi.FastAPI(title="nerlib", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                          description="Named entities in raw text, with character offsets.")
    app.state.batcher = batcher

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        problems = exc.errors()
        malformed = [p for p in problems if p.get("type") == "json_invalid"]
        if malformed:
            detail = malformed[0].get("ctx", {}).get("error", "")
            return error(400, f"malformed JSON: {detail}".rstrip(": "))
        if any(p.get("type") == "missing" and tuple(p.get("loc", ())) == ("body",) for p in problems):
            return error(400, 'empty body: send a JSON object, {"text": "..."} or {"texts": ["...", ...]}')
        if "json" not in request.headers.get("content-type", ""):
            return error(400, "the body must be JSON, sent with Content-Type: application/json")
        fields = [{"field": _field_name(p.get("loc", ())), "message": _message(p)} for p in problems]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        stats = batcher.snapshot()
        return {"status": "ok", "model": model_name, "backend": predictor.backend, "int8": config.int8,
                "batching": config.batching, **dataclasses.asdict(stats)}

    @app.get("/labels")
    async def labels():
        return {"labels": list(label_set.labels), "types": types}

    error_responses = {status: {"model": ErrorOut, "description": description} for status, description in (
        (400, "malformed JSON"), (413, "over a size limit"), (422, "invalid fields"), (500, "the model failed"))}

    @app.post("/predict", response_model=PredictResponse, responses=error_responses)
    async def predict(request: PredictRequest):
        texts = [request.text] if request.text is not None else request.texts
        if len(texts) > config.max_texts:
            return error(413, f"{len(texts)} texts in one request; at most {config.max_texts} (--max-texts)")
        for index, text in enumerate(texts):
            if len(text) > config.max_chars:
                return error(413, f"text {index} has {len(text)} characters; at most {config.max_chars} (--max-chars)")
        try:
            results = await asyncio.wrap_future(batcher.submit(texts))
        except Exception as exc:
            return error(500, f"the model failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return {"results": [{"entities": [e.to_dict() for e in entities]} for entities in results],
                "labels": list(label_set.labels), "types": types}

    return BodyLimit(app, config.max_body_bytes)


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


def serve(model_dir: str, config: ServeConfig) -> None:
    """Load `model_dir` and serve it until interrupted.

    Raises:
        MissingExtra: FastAPI or uvicorn is not installed.
        NerlibError: the model cannot be loaded, or a bad option.
    """
    for module in ("fastapi", "uvicorn"):  # before the model is loaded, so a missing extra fails at once
        import_optional(module, EXTRA, "nerlib serve")
    import uvicorn

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    predictor = load_predictor(model_dir, config.batch_size, config.max_length, config.device, False, config.backend,
                               config.int8, config.num_threads)
    predictor(["Warm up the model once before the first request."])
    app = create_app(predictor, config, os.path.basename(os.path.normpath(model_dir)))
    if not _is_loopback(config.host):
        logger.warning("listening on %s: anyone who can reach this machine can send texts to the model", config.host)
    logger.info("%s (%s backend%s, batching %s) at http://%s:%d/", model_dir, predictor.backend,
                ", int8" if config.int8 else "", "on" if config.batching else "off", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, access_log=config.access_log, log_level="info")
