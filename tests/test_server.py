"""`minillm serve` with the official OpenAI client: a live server on a free loopback port, the
built-in model, compared with the library API in this process."""
from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import minillm
from minillm.synthetic import default_model_path
from minillm.tokenizer import Tokenizer

from live_server import N_CTX, httpx, running_server, server_log

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def url():
    with running_server() as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model():
    return minillm.load(default_model_path(), n_ctx=N_CTX, n_threads=2)


def metrics(url) -> dict:
    out = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            out[s.name if not s.labels else (s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def byte_token(model, b: int) -> int:
    return next(i for i in range(model.config.n_vocab) if model.tokenizer.token_to_piece(i) == bytes([b])
                and not model.tokenizer.is_special(i))


# -- the same text as the library ---------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.9, seed=4, top_p=0.9),
                                dict(temperature=1.0, seed=9, stop=[" the", "\n"], presence_penalty=0.5)])
def test_completions_match_the_library(client, model, kw):
    r = client.completions.create(model="any", prompt="The history of the city", max_tokens=16, **kw)
    want = model("The history of the city", max_tokens=16, **kw)
    assert r.choices[0].text == want["choices"][0]["text"]
    assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert r.usage.completion_tokens == want["usage"]["completion_tokens"]
    streamed = client.completions.create(model="any", prompt="The history of the city", max_tokens=16,
                                         stream=True, **kw)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.8, seed=21)])
def test_chat_matches_the_library(client, model, kw):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    r = client.chat.completions.create(model="any", messages=messages, max_tokens=12, **kw)
    want = model.create_chat_completion(messages, max_tokens=12, **kw)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    stream = client.chat.completions.create(model="any", messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, **kw)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_seed_reproduces_and_differs(client):
    def text(seed):
        return client.completions.create(model="m", prompt="Once", max_tokens=10, temperature=1.0,
                                         seed=seed).choices[0].text
    a = text(1)
    assert text(1) == a and text(2) != a


def test_stop_string_spanning_tokens_is_not_emitted_nor_duplicated(client, model):
    """Stop at "文中" while the model spells 中/文 byte by byte (three tokens a character): the
    stop spans six tokens; neither it nor a piece of it reaches the client, nothing twice."""
    bias = {str(byte_token(model, b)): 50.0 for b in set("中文".encode())}
    kw = dict(model="m", prompt="Write:", max_tokens=30, temperature=1.0, seed=5, logit_bias=bias,
              extra_body={"grammar": 'root ::= ("中" | "文"){10}'})
    free = client.completions.create(**kw).choices[0].text
    assert "文中" in free, free          # the seed is chosen so that the stop occurs
    want = free[:free.find("文中")]
    r = client.completions.create(stop=["文中"], **kw)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in client.completions.create(stop=["文中"], stream=True, **kw)]
    assert "".join(pieces) == want
    assert all("\ufffd" not in p for p in pieces)
    assert [p for p in pieces if p] == list(want)      # one whole character per piece


def test_utf8_characters_arrive_whole_in_chat_streams(client, model):
    bias = {str(byte_token(model, b)): 50.0 for b in set("中文".encode())}
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=24,
                                            temperature=1.0, seed=2, logit_bias=bias, stream=True,
                                            extra_body={"grammar": 'root ::= ("中" | "文"){8}'})
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 8 and set(deltas) <= {"中", "文"}


def test_json_schema_response_format(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["S", "M", "L"]}},
              "required": ["ok", "size"], "additionalProperties": False}
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "JSON"}], max_tokens=40,
                                       temperature=0.5, seed=1,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "s", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert r.choices[0].finish_reason == "stop" and set(value) == {"ok", "size"} and value["size"] in "SML"


def test_logprobs_through_the_client(client, model):
    r = client.completions.create(model="m", prompt="Numbers", max_tokens=4, temperature=0, logprobs=2)
    want = model("Numbers", max_tokens=4, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    assert r.choices[0].logprobs.tokens == want["tokens"]
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(want["token_logprobs"], abs=1e-9)


# -- prompt cache, context limits ------------------------------------------------------------

def test_multi_turn_chat_reuses_the_cache(client):
    turn = [{"role": "system", "content": "You answer questions about geography. " * 10},
            {"role": "user", "content": "Where is Lima?"}]
    r1 = client.chat.completions.create(model="m", messages=turn, max_tokens=6, temperature=0)
    turn += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And Quito?"}]
    r2 = client.chat.completions.create(model="m", messages=turn, max_tokens=6, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens - 64 <= cached < r2.usage.prompt_tokens


def test_a_full_context_ends_with_length_and_the_server_lives_on(client, url):
    prompt = " ".join(["word"] * (N_CTX - 30))
    n_prompt = len(Tokenizer.from_gguf(default_model_path()).tokenize(prompt))
    assert N_CTX - 40 < n_prompt < N_CTX
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == N_CTX
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt=prompt + prompt, max_tokens=4)
    assert client.completions.create(model="m", prompt="ok", max_tokens=2).usage.completion_tokens == 2


# -- one engine, many clients ------------------------------------------------------------------

def test_eight_concurrent_streams_each_get_their_solo_text(client):
    prompts = [f"Story number {i}:" for i in range(8)]

    def run(prompt):
        s = client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in s)

    solo = [run(p) for p in prompts]
    together = [None] * 8

    def worker(i):
        together[i] = run(prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == solo
    assert len(set(solo)) > 1


def test_a_client_that_leaves_stops_its_generation(url):
    before = metrics(url)["llamacpp:tokens_predicted_total"]
    body = {"prompt": "Leave early", "max_tokens": 800, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as resp:
            got = 0
            for line in resp.iter_lines():
                if line.startswith("data: ") and '"text"' in line:
                    got += 1
                    if got == 3:
                        break
    t0 = time.monotonic()
    while True:
        m = metrics(url)
        if m["llamacpp:requests_processing"] == 0 and m["llamacpp:tokens_predicted_total"] > before:
            break
        assert time.monotonic() - t0 < 10, "the engine is still busy with the closed stream"
        time.sleep(0.02)
    generated = m["llamacpp:tokens_predicted_total"] - before
    assert generated < 100, f"{generated} tokens generated for a client that read 3"
    log = server_log(url)
    assert "cancelled" in log


def test_metrics_and_access_log(client, url):
    before = metrics(url)
    r = client.completions.create(model="m", prompt="Count me", max_tokens=5, temperature=0)
    after = metrics(url)
    assert after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"] == 5
    evaluated = r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens
    assert after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"] == evaluated
    key = ("llamacpp:requests_total", (("path", "/v1/completions"), ("status", "200")))
    assert after[key] == before.get(key, 0) + 1
    assert 0 < after["llamacpp:kv_cache_usage_ratio"] <= 1 and after["llamacpp:requests_deferred"] == 0
    assert after["llamacpp:predicted_tokens_seconds"] > 0
    lines = [ln for ln in server_log(url).splitlines() if '"POST /v1/completions" 200' in ln]
    assert lines and "generated 5" in lines[-1] and "t/s" in lines[-1] and f"prompt {r.usage.prompt_tokens}" in lines[-1]


def test_models_and_health(client, url):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-q8_0-seed0-v1"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
