"""Bad requests against a live ``minillm serve``: each gets the status an OpenAI-compatible
server gives (400 for an invalid request, 404, 405, 413, 401, 503) and an OpenAI error object
``{"error": {"message", "type", "param", "code"}}``, and the server keeps serving afterwards.

One server (class-scoped) answers the whole corpus; the API-key and queue tests start their own
short-lived servers; the non-loopback refusal runs ``minillm serve`` and expects it to exit.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest

try:                           # the OpenAI client's HTTP library: httpx2 in openai 3, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

from prometheus_client.parser import text_string_to_metric_families

from live_server import free_port, running_server

MAX_BODY = 4 << 20             # the server's default --max-body
JSON = {"content-type": "application/json"}


# -- what every error must look like --------------------------------------------------------

def assert_error(r: "httpx.Response", status: int, names: Optional[str] = None) -> dict:
    """``r`` has ``status`` and an OpenAI error object (whose message or param mentions
    ``names``, when given); returns the ``error`` dict."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert type(err["code"]) is int and err["code"] == status, err
    if status == 400:
        assert err["type"] == "invalid_request_error", err
    if names is not None:
        said = (err["message"] + " " + (err["param"] or "")).lower()
        assert names.lower() in said, f"the error does not mention {names!r}: {err}"
    return err


# -- the corpus -------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    status: int
    json: Any = None                        # a JSON body, or
    content: Any = None                     # raw bytes, or a callable making them (a generator: chunked)
    path: str = "/v1/completions"
    method: str = "POST"
    headers: Optional[dict] = None
    names: Optional[str] = None             # the message or param must mention this


_DROP = object()


def comp(**kw) -> dict:
    """A valid completion body with ``kw`` changed (``_DROP`` removes a field)."""
    body = {"prompt": "hello", "max_tokens": 4, **kw}
    return {k: v for k, v in body.items() if v is not _DROP}


def chat(**kw) -> dict:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}
    return {k: v for k, v in body.items() if v is not _DROP}


def msgs(*messages) -> dict:
    return chat(messages=list(messages))


def C(id, status=400, **kw) -> Case:
    return Case(id, status, **kw)


def CHAT(id, body, status=400, **kw) -> Case:
    return Case(id, status, json=body, path="/v1/chat/completions", **kw)


def _chunked_oversized():
    """A body of MAX_BODY + 1 MiB sent chunked (no Content-Length)."""
    for _ in range(MAX_BODY // (1 << 20) + 1):
        yield b" " * (1 << 20)


LONG_PROMPT = "hello " * 3000              # about 3000 tokens: more than the 1024-token context

CASES = [
    # -- the body is not a JSON object
    C("body-malformed-json", content=b'{"prompt": "hello",', headers=JSON, names="JSON"),
    C("body-json-trailing-garbage", content=b'{"prompt": "hello"} x', headers=JSON, names="JSON"),
    C("body-json-array", json=[{"prompt": "hello"}]),
    C("body-json-string", json="hello"),
    C("body-json-null", content=b"null", headers=JSON),
    C("body-empty", content=b"", headers=JSON),
    C("body-invalid-utf8", content=b'{"prompt": "\xff\xfe"}', headers=JSON),
    C("body-lone-surrogate-escape", content=b'{"prompt": "\\ud800", "max_tokens": 4}', headers=JSON),
    C("body-nan-literal", content=b'{"prompt": "hello", "temperature": NaN}', headers=JSON, names="temperature"),
    C("body-int-literal-5000-digits", content=b'{"prompt": "hello", "max_tokens": 1' + b"0" * 5000 + b"}",
      headers=JSON),
    C("body-nested-100k-deep", content=b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=JSON),
    # -- required fields
    C("completion-missing-prompt", json=comp(prompt=_DROP), names="prompt"),
    C("completion-prompt-null", json=comp(prompt=None), names="prompt"),
    CHAT("chat-missing-messages", chat(messages=_DROP), names="messages"),
    # -- wrong types (the request models are strict: no coercion)
    C("type-max_tokens-string", json=comp(max_tokens="5"), names="max_tokens"),
    C("type-max_tokens-float", json=comp(max_tokens=2.0), names="max_tokens"),
    C("type-top_k-float", json=comp(top_k=1.5), names="top_k"),
    C("type-seed-bool", json=comp(seed=True), names="seed"),
    C("type-stop-number", json=comp(stop=5), names="stop"),
    C("type-prompt-object", json=comp(prompt={"text": "hello"}), names="prompt"),
    C("type-prompt-bool-list", json=comp(prompt=[True]), names="prompt"),
    C("type-temperature-string", json=comp(temperature="0.5"), names="temperature"),
    C("type-stream-string", json=comp(stream="true"), names="stream"),
    C("type-echo-string", json=comp(echo="yes"), names="echo"),
    C("type-logit_bias-list", json=comp(logit_bias=[1]), names="logit_bias"),
    C("type-logit_bias-value-string", json=comp(logit_bias={"5": "x"}), names="logit_bias"),
    C("type-model-number", json=comp(model=5), names="model"),
    C("type-stream_options-include_usage-string", json=comp(stream=True, stream_options={"include_usage": "yes"}),
      names="include_usage"),
    CHAT("chat-type-logprobs-int", chat(logprobs=5), names="logprobs"),
    CHAT("chat-type-messages-object", chat(messages={"role": "user", "content": "hi"}), names="messages"),
    # -- unknown fields
    C("unknown-field-foo", json=comp(foo=1), names="foo"),
    C("unknown-field-in-stream_options", json=comp(stream=True, stream_options={"include_usage": True, "x": 1}),
      names="stream_options"),
    CHAT("chat-unknown-field-best_of", chat(best_of=2), names="best_of"),
    CHAT("chat-unknown-field-suffix", chat(suffix="x"), names="suffix"),
    CHAT("chat-unknown-message-field", msgs({"role": "user", "content": "hi", "foo": 1}), names="foo"),
    # -- lengths against the context (n_ctx 1024)
    C("max_tokens-negative", json=comp(max_tokens=-5), names="max_tokens"),
    C("max_tokens-past-context", json=comp(max_tokens=5000), names="max_tokens"),
    C("max_tokens-10e30", json=comp(max_tokens=10 ** 30), names="max_tokens"),
    C("prompt-longer-than-context", json=comp(prompt=LONG_PROMPT), names="prompt"),
    C("prompt-longer-than-context-streaming", json=comp(prompt=LONG_PROMPT, stream=True), names="prompt"),
    CHAT("chat-prompt-longer-than-context", msgs({"role": "user", "content": LONG_PROMPT}), names="prompt"),
    CHAT("chat-max_tokens-past-context", chat(max_tokens=5000), names="max_tokens"),
    # -- sampling ranges
    C("temperature-negative", json=comp(temperature=-1), names="temperature"),
    C("temperature-1000", json=comp(temperature=1000), names="temperature"),
    C("temperature-negative-streaming", json=comp(temperature=-1, stream=True), names="temperature"),
    C("top_p-1.5", json=comp(top_p=1.5), names="top_p"),
    C("min_p-negative", json=comp(min_p=-0.1), names="min_p"),
    C("presence_penalty-3", json=comp(presence_penalty=3), names="presence_penalty"),
    C("frequency_penalty-3", json=comp(frequency_penalty=3), names="frequency_penalty"),
    C("repeat_penalty-0", json=comp(repeat_penalty=0), names="repeat_penalty"),
    C("repeat_last_n-minus-2", json=comp(repeat_last_n=-2), names="repeat_last_n"),
    C("logit_bias-non-numeric-key", json=comp(logit_bias={"abc": 1}), names="logit_bias"),
    C("logit_bias-out-of-vocab-id", json=comp(logit_bias={"99999999": 1}), names="logit_bias"),
    C("logit_bias-negative-id", json=comp(logit_bias={"-1": 1}), names="logit_bias"),
    C("logit_bias-bias-500", json=comp(logit_bias={"5": 500}), names="logit_bias"),
    # -- unsupported or out-of-range completion options
    C("n-2", json=comp(n=2), names="n = 1"),
    C("best_of-2", json=comp(best_of=2), names="best_of"),
    C("suffix", json=comp(suffix="world"), names="suffix"),
    C("logprobs-50", json=comp(logprobs=50), names="logprobs"),
    C("logprobs-minus-1", json=comp(logprobs=-1), names="logprobs"),
    C("stop-17-strings", json=comp(stop=[f"s{i}" for i in range(17)]), names="stop"),
    C("stop-non-string-element", json=comp(stop=["a", 1]), names="stop"),
    C("prompt-token-out-of-vocab", json=comp(prompt=[1, 10 ** 9]), names="prompt"),
    C("prompt-empty-list", json=comp(prompt=[]), names="prompt"),
    C("prompt-batch-of-two", json=comp(prompt=["a", "b"]), names="prompt"),
    # -- chat messages
    CHAT("chat-messages-empty", chat(messages=[]), names="messages"),
    CHAT("chat-message-without-role", msgs({"content": "hi"}), names="role"),
    CHAT("chat-message-without-content", msgs({"role": "user"}), names="content"),
    CHAT("chat-role-tool", msgs({"role": "tool", "content": "hi"}), names="role"),
    CHAT("chat-role-robot", msgs({"role": "robot", "content": "hi"}), names="role"),
    CHAT("chat-content-int", msgs({"role": "user", "content": 5}), names="content"),
    CHAT("chat-content-null-user", msgs({"role": "user", "content": None}), names="content"),
    CHAT("chat-content-image_url-part", msgs({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}), names="content"),
    CHAT("chat-message-not-object", msgs("hi"), names="messages"),
    CHAT("chat-top_logprobs-without-logprobs", chat(top_logprobs=3), names="top_logprobs"),
    CHAT("chat-top_logprobs-50", chat(logprobs=True, top_logprobs=50), names="logprobs"),
    CHAT("chat-max_tokens-and-max_completion_tokens", chat(max_tokens=4, max_completion_tokens=4),
         names="max_completion_tokens"),
    CHAT("chat-n-2", chat(n=2), names="n = 1"),
    # -- structured output
    C("response_format-type-xml", json=comp(response_format={"type": "xml"}), names="response_format"),
    C("response_format-not-object", json=comp(response_format=[]), names="response_format"),
    C("response_format-without-type", json=comp(response_format={}), names="response_format"),
    CHAT("chat-response_format-type-xml", chat(response_format={"type": "xml"}), names="response_format"),
    CHAT("chat-json_schema-missing", chat(response_format={"type": "json_schema"}), names="json_schema"),
    CHAT("chat-json_schema-schema-not-object",
         chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "x"}}), names="schema"),
    C("json_schema-unsatisfiable", json=comp(json_schema={"type": "string", "minLength": 5, "maxLength": 2}),
      names="schema"),
    C("grammar-does-not-parse", json=comp(grammar="root ::= (("), names="grammar"),
    C("grammar-undefined-rule", json=comp(grammar="root ::= foo"), names="grammar"),
    C("grammar-empty", json=comp(grammar=""), names="grammar"),
    C("response_format-and-grammar", json=comp(response_format={"type": "json_object"}, grammar='root ::= "a"'),
      names="grammar"),
    # -- HTTP: paths, methods, sizes
    C("unknown-path-post", 404, json=comp(), path="/v1/nope"),
    C("unknown-path-get", 404, method="GET", path="/v1/engines"),
    C("get-on-completions", 405, method="GET"),
    C("get-on-chat-completions", 405, method="GET", path="/v1/chat/completions"),
    C("delete-on-models", 405, method="DELETE", path="/v1/models"),
    C("body-5MiB-content-length", 413, content=lambda: b'{"prompt": "' + b"x" * (5 << 20) + b'"}', headers=JSON),
    C("body-5MiB-chunked", 413, content=_chunked_oversized, headers=JSON),
    C("body-5MiB-on-chat", 413, content=lambda: b" " * (5 << 20), headers=JSON, path="/v1/chat/completions"),
]


def send(client: "httpx.Client", case: Case) -> "httpx.Response":
    kw: dict = {"headers": case.headers}
    if case.json is not None:
        kw["json"] = case.json
    elif case.content is not None:
        kw["content"] = case.content() if callable(case.content) else case.content
    return client.request(case.method, case.path, **kw)


@pytest.fixture(scope="module", autouse=True)
def _no_env_key():
    """A MINILLM_API_KEY in the environment would put every server here behind a key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MINILLM_API_KEY", raising=False)
        yield


def metric_values(url: str, headers: Optional[dict] = None) -> dict:
    """The /metrics samples without labels, by name."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


@pytest.fixture(scope="class")
def client():
    """A client of one server for the whole corpus (stopped when its class is done)."""
    with running_server() as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            yield c


class TestBadRequests:
    """The corpus against one server, then a normal request on that same server."""

    def test_case_count(self):
        assert len(CASES) >= 45
        assert len({c.id for c in CASES}) == len(CASES)

    @pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
    def test_bad_request(self, client, case: Case):
        assert_error(send(client, case), case.status, case.names)

    def test_unknown_field_is_named(self, client):
        err = assert_error(client.post("/v1/completions", json=comp(foo=1)), 400)
        assert "foo" in err["message"] and err["param"] == "foo", err

    @pytest.mark.parametrize("path, body, param", [
        pytest.param("/v1/completions", comp(prompt={"text": "hello"}), "prompt", id="prompt-object"),
        pytest.param("/v1/completions", comp(stop=["a", 1]), "stop", id="stop-non-string-element"),
        pytest.param("/v1/chat/completions", msgs({"role": "user", "content": 5}), "messages.0.content",
                     id="chat-content-int"),
    ])
    def test_param_is_the_request_field(self, client, path, body, param):
        """OpenAI's ``param`` names the request parameter, not a pydantic Union member
        (``prompt``, not ``prompt.str``)."""
        err = assert_error(client.post(path, json=body), 400)
        assert err["param"] == param, err

    def test_method_not_allowed_says_which_methods_are(self, client):
        """RFC 9110 15.5.6: a 405 response MUST carry an Allow header."""
        r = client.get("/v1/completions")
        assert_error(r, 405)
        assert "POST" in r.headers.get("allow", ""), dict(r.headers)

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streaming"])
    def test_seed_minus_one_is_not_a_server_error(self, client, stream):
        """llama.cpp's seed -1 means "random", and OpenAI's seed is any integer: either answer the
        request or refuse it with a 400, never fail it in the engine (500 / an error event)."""
        r = client.post("/v1/completions", json=comp(seed=-1, stream=stream))
        if r.status_code != 200:
            assert_error(r, 400, "seed")
            return
        if stream:
            events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
            assert events and events[-1] == "[DONE]", r.text
            assert not any('"error"' in e for e in events), r.text
        else:
            assert r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text

    def test_still_serving_after_the_corpus(self, client):
        """Runs last in this class: every bad request above left the server working."""
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert isinstance(choice["text"], str) and choice["text"], r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        # nothing in the corpus reached the engine and stayed there
        gauges = metric_values(str(client.base_url).rstrip("/"))
        assert gauges["llamacpp:requests_processing"] == 0 and gauges["llamacpp:requests_deferred"] == 0


# -- the API key -----------------------------------------------------------------------------

KEY = "secret"

KEY_CASES = [
    pytest.param("GET", "/v1/models", None, 401, id="models-no-header"),
    pytest.param("GET", "/v1/models", {"authorization": "Bearer nope"}, 401, id="models-wrong-key"),
    pytest.param("GET", "/v1/models", {"authorization": KEY}, 401, id="models-key-without-bearer"),
    pytest.param("GET", "/v1/models", {"authorization": "Basic c2VjcmV0OnNlY3JldA=="}, 401, id="models-basic-auth"),
    pytest.param("GET", "/v1/models", {"authorization": f"Bearer {KEY}x"}, 401, id="models-key-prefix"),
    pytest.param("POST", "/v1/completions", None, 401, id="completions-no-header"),
    pytest.param("POST", "/v1/chat/completions", {"authorization": "Bearer nope"}, 401, id="chat-wrong-key"),
    pytest.param("GET", "/metrics", None, 401, id="metrics-no-header"),
    pytest.param("GET", "/v1/models", {"authorization": f"Bearer {KEY}"}, 200, id="models-right-key"),
    pytest.param("POST", "/v1/completions", {"authorization": f"Bearer {KEY}"}, 200, id="completions-right-key"),
    pytest.param("GET", "/health", None, 200, id="health-open-without-key"),
    pytest.param("GET", "/v1/health", None, 200, id="v1-health-open-without-key"),
]


@pytest.fixture(scope="class")
def keyed_url():
    with running_server("--api-key", KEY) as url:
        yield url


class TestApiKey:
    @pytest.mark.parametrize("method, path, headers, status", KEY_CASES)
    def test_api_key(self, keyed_url, method, path, headers, status):
        body = {"prompt": "hello", "max_tokens": 4, "temperature": 0} if path == "/v1/completions" else \
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} if method == "POST" else None
        r = httpx.request(method, keyed_url + path, headers=headers, json=body, timeout=60)
        if status == 401:
            err = assert_error(r, 401)
            assert KEY not in r.text and err["type"] == "authentication_error", err
        else:
            assert r.status_code == 200, r.text
            if path == "/v1/models":
                assert r.json()["object"] == "list" and r.json()["data"][0]["object"] == "model", r.text
            elif path == "/v1/completions":
                assert r.json()["choices"][0]["text"], r.text

    def test_key_checked_before_the_body(self, keyed_url):
        """A bad body without the key is a 401 (no validation for strangers), with it a 400."""
        bad = b'{"prompt": '
        assert_error(httpx.post(keyed_url + "/v1/completions", content=bad, headers=JSON), 401)
        assert_error(httpx.post(keyed_url + "/v1/completions", content=bad,
                                headers={**JSON, "authorization": f"Bearer {KEY}"}), 400)


# -- a non-loopback address needs a key (or --open) ----------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_non_loopback_host_without_key(host):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MINILLM_API_KEY"}
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "minillm", "serve", "--host", host, "--port", str(port)],
                           capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired as e:      # run() has killed it
        pytest.fail(f"minillm serve --host {host} without a key did not exit: it is serving? {e.stderr!r}")
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "--api-key" in p.stderr and "--open" in p.stderr, p.stderr
    assert "Uvicorn running" not in p.stderr + p.stdout
    assert time.monotonic() - t0 < 60
    with socket.socket() as s:                 # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


# -- a full queue: 503 with Retry-After -----------------------------------------------------------

def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:     # reported by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_queue_full_gets_503_with_retry_after():
    with running_server("--max-queue", "1") as url:
        started = threading.Event()

        def long_stream():
            body = {"prompt": "hello", "max_tokens": 300, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        started.set()
                return r.status_code, events

        def queued():
            return httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "temperature": 0},
                              timeout=300)

        first, first_out = _in_thread(long_stream)
        assert started.wait(60), f"the streaming request did not start: {first_out}"
        second, second_out = _in_thread(queued)
        deadline = time.monotonic() + 60
        while True:
            g = metric_values(url)
            if g["llamacpp:requests_processing"] == 1 and g["llamacpp:requests_deferred"] == 1:
                break
            assert first.is_alive(), f"the first request ended before the second was queued: {first_out}"
            assert time.monotonic() < deadline, f"never saw 1 processing + 1 deferred: {g}"
            time.sleep(0.02)

        r = httpx.post(url + "/v1/completions", json={"prompt": "again", "max_tokens": 4}, timeout=60)
        assert first.is_alive(), "the first request finished before the third was answered: not a full queue"
        assert_error(r, 503)
        retry = r.headers.get("retry-after", "")
        assert retry.isdigit() and int(retry) >= 1, dict(r.headers)

        first.join(300)
        second.join(300)
        assert not first.is_alive() and not second.is_alive()
        assert "error" not in first_out and "error" not in second_out, (first_out, second_out)
        status, events = first_out["value"]
        assert status == 200 and events[-1] == "[DONE]", events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks), chunks[-3:]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(c["choices"][0]["text"] for c in chunks)
        r2 = second_out["value"]
        assert r2.status_code == 200 and r2.json()["choices"][0]["text"], r2.text
        g = metric_values(url)
        assert g["llamacpp:requests_processing"] == 0 and g["llamacpp:requests_deferred"] == 0, g
