"""An OpenAI-compatible HTTP server (FastAPI on uvicorn, Server-Sent Events for streams).

    minillm serve -m model.gguf --host 127.0.0.1 --port 8080 [--api-key KEY]

One engine, one decode loop: requests are validated in the handlers (bad ones get an
OpenAI-style error object and a 4xx at once), then wait in a bounded queue (full: 503 with
Retry-After) for the single worker thread that runs them one at a time.  A client that
disconnects cancels its request before the next token.  Endpoints: ``GET /health``,
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (also without the
``/v1`` prefix, as llama-server), ``GET /metrics`` (Prometheus text, llama.cpp's ``llamacpp:`` names).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .completion import Outcome
from .openai_format import prepare_chat, prepare_completion, respond

log = logging.getLogger("minillm.server")
LOOPBACK_NAMES = {"localhost"}
PUBLIC_PATHS = {"/health", "/v1/health"}


# -- errors ------------------------------------------------------------------------

def error_response(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
                   headers: Optional[dict] = None) -> JSONResponse:
    """OpenAI's error object."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list)(\[.*\])?$")


def _field_path(loc) -> tuple[list[str], Optional[str]]:
    """The field a pydantic ``loc`` points at, and the Union member it names (pydantic puts one
    error per member of a Union in ``loc``: ``('body', 'prompt', 'list[int]')``), if any."""
    path = []
    for x in loc:
        if x == "body":
            continue
        if isinstance(x, str) and _UNION_MEMBER.match(x):
            return path, x
        path.append(str(x))
    return path, None


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc, member = _field_path(e.get("loc", ()))
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
    if e.get("type") == "extra_forbidden":
        return f"unrecognized request argument: {'.'.join(loc)}", ".".join(loc)
    where = ".".join(loc)
    if not where:
        return f"the request body must be a JSON object ({e.get('msg', 'invalid')})", None
    if member is not None:
        members = []
        for x in errors:
            path, m = _field_path(x.get("loc", ()))
            if path == loc and m is not None and m not in members:
                members.append(m)
        got = _JSON_TYPES.get(type(e.get("input")), "this value")
        return f"{where}: {got} is not accepted here (expected one of: {', '.join(members)})", where
    return f"{where}: {e.get('msg')}", where


# -- request bodies: OpenAI's fields plus llama.cpp's sampling extras; anything else is refused --

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: Optional[str] = None
    stream: bool = False
    stream_options: Optional["StreamOptions"] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    repeat_last_n: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    logit_bias: Optional[dict[str, float]] = None
    n: Optional[int] = None
    user: Optional[str] = None
    response_format: Optional[dict[str, Any]] = None
    grammar: Optional[str] = None
    json_schema: Optional[dict[str, Any]] = None

    def options(self) -> dict:
        return self.model_dump(exclude={"model", "stream", "stream_options", "user"}, exclude_none=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionBody(_Body):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: Optional[int] = 16
    logprobs: Optional[int] = None
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    def options(self) -> dict:
        opts = super().options()
        opts["max_tokens"] = self.max_tokens       # None means "until the context is full"
        return opts


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict[str, Any]], None]
    name: Optional[str] = None


class ChatBody(_Body):
    messages: list[Message]
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None

    def options(self) -> dict:
        opts = super().options()
        opts["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return opts


_Body.model_rebuild()


# -- the worker: one decode loop ---------------------------------------------------

class QueueFull(Exception):
    pass


@dataclass
class Stats:
    """What /metrics reports; written by the worker thread only."""
    prompt_tokens: int = 0
    prompt_cached_tokens: int = 0
    prompt_seconds: float = 0.0
    tokens_predicted: int = 0
    tokens_predicted_seconds: float = 0.0
    n_decode: int = 0
    requests: dict = field(default_factory=dict)      # (path, status) -> count


class Ticket:
    """A queued request: the worker calls ``work(cancelled)``; ``cancel()`` makes ``cancelled()``
    true, so the run ends before its next token (or never starts)."""

    def __init__(self, work: Callable[[Callable[[], bool]], None]):
        self.work = work
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()


class Worker:
    """Runs queued tickets one at a time on a daemon thread, in arrival order."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self._queue: "queue.Queue[Ticket]" = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0
        self.processing = 0
        threading.Thread(target=self._loop, name="minillm-engine", daemon=True).start()

    def submit(self, ticket: Ticket) -> None:
        with self._lock:
            if self.waiting >= self.max_queue:
                raise QueueFull
            self.waiting += 1
        self._queue.put(ticket)

    def _loop(self) -> None:
        while True:
            ticket = self._queue.get()
            with self._lock:
                self.waiting -= 1
                self.processing = 1
            try:
                if not ticket.cancelled():
                    ticket.work(ticket.cancelled)
            except Exception:             # the ticket reports its own errors; never lose the loop
                log.exception("engine worker")
            finally:
                with self._lock:
                    self.processing = 0


# -- the app -----------------------------------------------------------------------

_END = object()


def create_app(model, api_key: Optional[str] = None, max_queue: int = 16, max_body_bytes: int = 4 << 20) -> FastAPI:
    """The FastAPI app serving ``model`` (a loaded :class:`minillm.Model`)."""
    app = FastAPI(title="minillm", docs_url=None, redoc_url=None, openapi_url=None)
    worker = Worker(max_queue)
    stats = Stats()
    app.state.model, app.state.worker, app.state.stats = model, worker, stats
    _warm_grammar(model)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        c = model.config
        meta = {"n_ctx": model.n_ctx, "n_ctx_train": c.n_ctx_train, "n_vocab": c.n_vocab,
                "size": model.weight_bytes(), "cache_type": model.cache_type}
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": int(app_started),
                                            "owned_by": "minillm", "meta": meta}]}

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(body: CompletionBody, request: Request):
        return await _serve(request, body, chat=False)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(body: ChatBody, request: Request):
        return await _serve(request, body, chat=True)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(model, worker, stats),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _serve(request: Request, body: _Body, chat: bool):
        opts = body.options()
        try:
            if chat:
                job = await run_in_threadpool(lambda: prepare_chat(model, opts.pop("messages"), **opts))
            else:
                job = await run_in_threadpool(lambda: prepare_completion(model, opts.pop("prompt"), **opts))
        except (ValueError, TypeError) as e:
            return error_response(400, str(e))
        outcome = Outcome()
        request.state.outcome = outcome
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        loop = asyncio.get_running_loop()
        results: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            loop.call_soon_threadsafe(results.put_nowait, item)

        def work(cancelled) -> None:
            try:
                out = respond(model, job, chat=chat, stream=body.stream, model_name=model.name, outcome=outcome,
                              cancelled=cancelled, include_usage=include_usage)
                if body.stream:
                    for chunk in out:
                        put(chunk)
                else:
                    put(out)
            except Exception as e:   # reported to this client only
                log.exception("generation failed")
                put(e)
            finally:
                _account(stats, outcome)
                put(_END)

        ticket = Ticket(work)
        try:
            worker.submit(ticket)
        except QueueFull:
            return error_response(503, f"the server is busy ({worker.max_queue} requests waiting); retry later",
                                  "server_busy", headers={"Retry-After": "1"})
        if body.stream:
            return StreamingResponse(_sse(results, ticket, outcome), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _wait_whole(request, results, ticket, outcome)

    app_started = time.time()
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, stats=stats)
    return app


async def _sse(results: asyncio.Queue, ticket: Ticket, outcome: Outcome):
    """The stream's events; the client going away cancels the ticket (Starlette cancels this
    generator when it sees the disconnect)."""
    try:
        while True:
            item = await results.get()
            if item is _END:
                break
            if isinstance(item, Exception):
                err = {"error": {"message": f"generation failed: {item}", "type": "server_error", "code": 500}}
                yield f"data: {json.dumps(err)}\n\n"
                continue
            yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if outcome.finish_reason is None:       # the client left first: the run stops before its next token
            outcome.cancelled = True
        ticket.cancel()


async def _wait_whole(request: Request, results: asyncio.Queue, ticket: Ticket, outcome: Outcome):
    """The non-streaming answer, watching for the client going away meanwhile."""
    got = asyncio.ensure_future(results.get())
    try:
        while True:
            done, _ = await asyncio.wait({got}, timeout=0.05)
            if done:
                break
            if await request.is_disconnected():
                outcome.cancelled = True
                ticket.cancel()
                return error_response(499, "client closed the request")
        item = got.result()
        if isinstance(item, Exception):
            return error_response(500, f"generation failed: {item}", "server_error")
        return JSONResponse(item)
    finally:
        if not got.done():
            got.cancel()
        ticket.cancel()           # a no-op when it finished


def _account(stats: Stats, outcome: Outcome) -> None:
    stats.prompt_tokens += outcome.n_prompt - outcome.n_cached
    stats.prompt_cached_tokens += outcome.n_cached
    stats.prompt_seconds += outcome.prompt_s
    stats.tokens_predicted += outcome.n_generated
    stats.tokens_predicted_seconds += outcome.gen_s
    stats.n_decode += outcome.n_generated + (outcome.n_prompt > outcome.n_cached)


def _warm_grammar(model) -> None:
    """Build llguidance's view of the vocabulary now (about a second), not in the first
    structured request."""
    try:
        from .grammar import ll_tokenizer
        ll_tokenizer(model.tokenizer)
    except (ImportError, ValueError):
        pass


# -- Prometheus ------------------------------------------------------------------------

def render_metrics(model, worker: Worker, stats: Stats) -> str:
    """The Prometheus text exposition, through prometheus_client's metric families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    def rate(n, s):
        return n / s if s else 0.0

    def families():
        def counter(name, doc, value):
            return CounterMetricFamily(f"llamacpp:{name}", doc, value=value)

        def gauge(name, doc, value):
            return GaugeMetricFamily(f"llamacpp:{name}", doc, value=value)

        yield counter("prompt_tokens", "Number of prompt tokens processed.", stats.prompt_tokens)
        yield counter("prompt_seconds", "Prompt process time", stats.prompt_seconds)
        yield counter("tokens_predicted", "Number of generation tokens processed.", stats.tokens_predicted)
        yield counter("tokens_predicted_seconds", "Predict process time", stats.tokens_predicted_seconds)
        yield counter("n_decode", "Number of llama_decode() calls", stats.n_decode)
        yield counter("prompt_tokens_cached", "Prompt tokens reused from the KV cache.", stats.prompt_cached_tokens)
        yield gauge("prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                    rate(stats.prompt_tokens, stats.prompt_seconds))
        yield gauge("predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                    rate(stats.tokens_predicted, stats.tokens_predicted_seconds))
        yield gauge("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", model.n_past / model.n_ctx)
        yield gauge("kv_cache_tokens", "KV-cache tokens.", model.n_past)
        yield gauge("requests_processing", "Number of requests processing.", worker.processing)
        yield gauge("requests_deferred", "Number of requests deferred (waiting in the queue).", worker.waiting)
        requests = CounterMetricFamily("llamacpp:requests", "HTTP requests answered.", labels=["path", "status"])
        for (path, status), n in sorted(stats.requests.items()):
            requests.add_metric([path, str(status)], n)
        yield requests

    class _Collector(Collector):
        def collect(self):
            return families()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry).decode()


# -- a guard in front of everything: body size, API key, access log -----------------------

class _Guard:
    """Pure ASGI middleware: refuses oversized bodies (413) and requests without the API key
    (401), and writes one access-log line per request with its token counts."""

    def __init__(self, app, api_key: Optional[str], max_body_bytes: int, stats: Stats):
        self.app, self.api_key, self.max_body, self.stats = app, api_key, max_body_bytes, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # the body is JSON whatever the Content-Type says (llama-server; curl -d sends a form type)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + \
                    [(b"content-type", b"application/json")]
                refusal, receive = await self._buffer_body(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            self._log(scope, status[0], time.perf_counter() - t0)

    def _refusal(self, scope):
        if self.api_key is None or scope["path"] in PUBLIC_PATHS:
            return None
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return error_response(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error")

    async def _buffer_body(self, scope, receive):
        """Read the whole body (at most max_body bytes), then replay it to the app."""
        too_big = error_response(413, f"the request body exceeds {self.max_body} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return too_big, receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return PlainTextResponse("", status_code=499), receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return too_big, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return None, replay

    def _log(self, scope, status: int, seconds: float) -> None:
        path = scope["path"]
        key = (path if path in _KNOWN_PATHS else "other", status)
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1
        client = scope.get("client") or ("-", 0)
        line = f'{client[0]} "{scope["method"]} {path}" {status} {seconds:.3f}s'
        outcome = scope.get("state", {}).get("outcome")
        if outcome is not None:
            tps = outcome.n_generated / outcome.gen_s if outcome.gen_s else 0.0
            line += (f" prompt {outcome.n_prompt} (cached {outcome.n_cached}) generated {outcome.n_generated}"
                     f" {tps:.1f} t/s" + (" cancelled" if outcome.cancelled else
                                         f" finish {outcome.finish_reason}"))
        log.info(line)


_KNOWN_PATHS = {"/health", "/v1/health", "/v1/models", "/models", "/v1/completions", "/completions",
                "/v1/chat/completions", "/chat/completions", "/metrics"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model, host: str = "127.0.0.1", port: int = 8080, api_key: Optional[str] = None, open_access: bool = False,
          max_queue: int = 16, max_body_bytes: int = 4 << 20, log_level: str = "info") -> None:
    """Run the server until interrupted.  A non-loopback ``host`` needs an ``api_key`` or
    ``open_access=True`` (the user said the server is open to anyone who can reach it)."""
    import uvicorn

    if not is_loopback(host) and not api_key and not open_access:
        raise ValueError(f"refusing to serve on {host} without an API key: pass --api-key KEY, or --open "
                         f"if anyone who can reach {host}:{port} may use the model")
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(model, api_key=api_key, max_queue=max_queue, max_body_bytes=max_body_bytes)
    log.info("serving %s on http://%s:%d (n_ctx %d, %s cache, %d threads, queue %d)%s", model.name, host, port,
             model.n_ctx, model.cache_type, model.n_threads, max_queue, "" if api_key else " without an API key")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)


__all__ = ["create_app", "serve", "render_metrics"]
