"""The completion API on the engine (Model.create_completion / create_chat_completion): samplers
in llama.cpp's order, stop strings, the prompt cache, logprobs, structured output, full contexts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minillm
from minillm.completion import StopMatcher
from minillm.sampling import Sampler, SamplingParams, log_softmax
from minillm.synthetic import default_model_path


@pytest.fixture(scope="module")
def model():
    return minillm.load(default_model_path(), n_ctx=1024, n_threads=2)


def draws(logits, n=400, **params):
    s = Sampler(SamplingParams(seed=7, **params))
    return [s.choose(s.adjust(logits)) for _ in range(n)]


# -- samplers ---------------------------------------------------------------------------

def test_penalties_follow_llama_cpp():
    """repeat penalty divides positive and multiplies negative logits of tokens in the last
    repeat_last_n; frequency subtracts count * f, presence subtracts p once."""
    z = np.array([2.0, -1.0, 0.5, 3.0, 1.0], np.float32)
    p = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=4)
    s = Sampler(p, history=[3, 0, 1, 1, 0])          # the last 4: 0, 1, 1, 0 -> counts {0: 2, 1: 2}
    out = s.adjust(z)
    want = np.array([2.0 / 2 - 2 * 0.25 - 0.5, -1.0 * 2 - 2 * 0.25 - 0.5, 0.5, 3.0, 1.0], np.float32)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_top_p_looks_at_temperature_one():
    """top-p before temperature (llama.cpp's order): at temperature 100 the distribution is
    nearly flat, yet top_p 0.8 of [0.6, 0.3, 0.1] still drops the last token."""
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    got = set(draws(logits, temperature=100.0, top_k=0, top_p=0.8, min_p=0.0))
    assert got == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = np.log(np.array([0.5, 0.3, 0.14, 0.04, 0.02]))
    got = set(draws(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.1))   # keeps p >= 0.05
    assert got == {0, 1, 2}


def test_top_k_and_logit_bias():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert set(draws(logits, temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)) == {0, 1}
    assert set(draws(logits, temperature=0.0, logit_bias={4: 10.0})) == {4}
    assert 0 not in draws(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, logit_bias={0: -100.0})


def test_grammar_mask_comes_first():
    logits = np.array([5.0, 4.0, 3.0, 2.0])
    s = Sampler(SamplingParams(temperature=0.0))
    assert s.sample(logits, mask=np.array([False, False, True, True])) == 2


def test_seed_reproduces_draws():
    logits = np.random.default_rng(0).normal(size=1000)
    a = draws(logits, n=50, temperature=1.0)
    assert a == draws(logits, n=50, temperature=1.0)
    s = Sampler(SamplingParams(seed=8, temperature=1.0))
    assert a != [s.choose(s.adjust(logits)) for _ in range(50)]


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=1.5), dict(min_p=-0.1), dict(top_k=1.5),
                                 dict(repeat_penalty=0.0), dict(presence_penalty=3.0), dict(repeat_last_n=-2),
                                 dict(logit_bias={10 ** 6: 1.0}), dict(logit_bias={1: 500.0}), dict(seed=True)])
def test_bad_sampling_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).check(1000)


# -- stop strings -----------------------------------------------------------------------

def first_stop_cut(text: str, stops: list[str]):
    """Reference: scan character by character; at the first position where a stop ends, cut at
    the earliest start among the stops ending there."""
    for p in range(1, len(text) + 1):
        starts = [p - len(s) for s in stops if s and text[:p].endswith(s)]
        if starts:
            return text[:min(starts)], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc中", max_size=30), stops=st.lists(st.text(alphabet="abc中", min_size=1, max_size=4),
                                                                  max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_matcher_is_split_invariant(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    m, out, stopped = StopMatcher(stops), [], False
    for a, b in zip(bounds, bounds[1:]):
        emitted, stopped = m.push(text[a:b])
        out.append(emitted)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    assert ("".join(out), stopped) == first_stop_cut(text, stops)


# -- the completion API on the built-in model ----------------------------------------------

def test_completion_shape_and_usage(model):
    r = model("The capital of France is", max_tokens=6, temperature=0)
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] == "length"
    n_prompt = len(model.tokenize("The capital of France is"))
    assert r["usage"]["prompt_tokens"] == n_prompt and r["usage"]["completion_tokens"] == 6
    assert r["usage"]["total_tokens"] == n_prompt + 6
    ids = model.tokenize("The capital of France is")
    want = model.detokenize(list(_greedy_ids(model, ids, 6)))
    assert r["choices"][0]["text"] == want


def _greedy_ids(model, ids, n):
    """Greedy continuation straight from Model.prefill / eval (no completion machinery)."""
    model.reset()
    logits = model.prefill(ids)[0]
    for _ in range(n):
        tid = int(np.argmax(logits))
        yield tid
        logits = model.eval([tid], logits_all=False)[-1]


def test_stream_chunks_join_to_the_whole_text(model):
    kw = dict(max_tokens=12, temperature=0.9, seed=11)
    whole = model.create_completion("Once upon a time", **kw)
    chunks = list(model.create_completion("Once upon a time", stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["id"] == chunks[0]["id"] for c in chunks)


def test_same_seed_same_text_different_seed_other_text(model):
    a = model("Hello", max_tokens=10, temperature=1.0, seed=5)["choices"][0]["text"]
    model("Something else entirely to change the cache", max_tokens=3)
    assert model("Hello", max_tokens=10, temperature=1.0, seed=5)["choices"][0]["text"] == a
    assert model("Hello", max_tokens=10, temperature=1.0, seed=6)["choices"][0]["text"] != a


def test_prompt_cache_reuses_the_shared_prefix_and_changes_nothing(model):
    """Multi-turn chat: the second turn reuses the first turn's prompt (all but its last batch)
    and gives the same text as on an empty cache."""
    turn1 = [{"role": "system", "content": "You are a helpful assistant. " * 12},
             {"role": "user", "content": "Tell me about the sea."}]
    model.reset()
    r1 = model.create_chat_completion(turn1, max_tokens=8, temperature=0)
    n1 = r1["usage"]["prompt_tokens"]
    assert n1 > 64
    turn2 = turn1 + [r1["choices"][0]["message"], {"role": "user", "content": "And the mountains?"}]
    r2 = model.create_chat_completion(turn2, max_tokens=8, temperature=0)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert n1 // 64 * 64 - 64 <= cached <= n1 and cached > 0
    model.reset()
    r2_fresh = model.create_chat_completion(turn2, max_tokens=8, temperature=0)
    assert r2_fresh["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert r2_fresh["choices"][0]["message"]["content"] == r2["choices"][0]["message"]["content"]


def test_stop_string_across_tokens_is_cut_and_not_emitted(model):
    kw = dict(max_tokens=24, temperature=0)
    model.reset()
    ids = model.tokenize("Stop strings")
    toks = list(_greedy_ids(model, ids, 24))
    pieces = [model.detokenize(toks[:i]) for i in range(len(toks) + 1)]
    # a stop string made of the last 2 characters of one token and the first 2 of the next
    k = next(i for i in range(1, len(toks) - 1)
             if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) - len(pieces[i]) >= 2)
    full = pieces[-1]
    stop = full[len(pieces[k]) - 2:len(pieces[k]) + 2]
    want = full[:full.find(stop)]
    r = model("Stop strings", stop=[stop], **kw)
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    streamed = [c["choices"][0]["text"] for c in model("Stop strings", stop=stop, stream=True, **kw)]
    assert "".join(streamed) == want


def byte_token(model, b: int) -> int:
    """The id of the single-byte token for byte ``b``."""
    return next(i for i in range(model.config.n_vocab) if model.tokenizer.token_to_piece(i) == bytes([b])
                and not model.tokenizer.is_special(i))


def test_utf8_split_across_tokens_arrives_whole(model):
    """A grammar allows four characters, each 中 or 文 (3 UTF-8 bytes each); a logit bias makes
    the model spell them byte by byte (one token per byte): every streamed piece is whole."""
    bias = {byte_token(model, b): 50.0 for b in set("中文".encode())}
    kw = dict(max_tokens=20, temperature=1.0, seed=3, logit_bias=bias, grammar='root ::= ("中" | "文"){4}')
    chunks = [c["choices"][0]["text"] for c in model("Write:", stream=True, **kw)]
    texts = [c for c in chunks if c]
    r = model("Write:", logprobs=0, **kw)
    assert "".join(texts) == r["choices"][0]["text"] and len(texts) == 4
    assert set(texts) <= {"中", "文"}
    assert r["usage"]["completion_tokens"] == 12                    # one token per byte
    assert [e for e in r["choices"][0]["logprobs"]["tokens"] if e != "\ufffd"] == []   # each token is a lone byte
    assert r["choices"][0]["finish_reason"] == "stop"


def test_logprobs_are_the_model_distribution(model):
    r = model("The weather today", max_tokens=5, temperature=0, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    ids = model.tokenize("The weather today")
    model.reset()
    logits = [model.prefill(ids)[0]]          # the same evaluation schedule as the completion
    toks = []
    for _ in range(5):
        toks.append(int(np.argmax(logits[-1])))
        logits.append(model.eval(toks[-1:], logits_all=False)[-1])
    for i, t in enumerate(toks):
        ref = log_softmax(logits[i])
        assert lp["tokens"][i] == model.tokenizer.token_to_piece(t).decode("utf-8", "replace")
        assert abs(lp["token_logprobs"][i] - ref[t]) < 1e-9 and ref[t] == ref.max()
        best = np.argsort(-ref)[:3]
        assert len(lp["top_logprobs"][i]) == 3
        np.testing.assert_allclose(sorted(lp["top_logprobs"][i].values(), reverse=True), ref[best], atol=1e-9)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_chat_logprobs_layout(model):
    r = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0,
                                     logprobs=True, top_logprobs=2)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for e in content:
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]
        assert e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-9


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["ok", "color", "n"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_is_valid(model, seed):
    r = model.create_chat_completion([{"role": "user", "content": "Give me JSON"}], max_tokens=60, temperature=0.7,
                                     seed=seed, response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "t", "schema": SCHEMA}})
    assert r["choices"][0]["finish_reason"] == "stop"
    value = json.loads(r["choices"][0]["message"]["content"])
    assert set(value) == {"ok", "color", "n"} and isinstance(value["ok"], bool)
    assert value["color"] in ("red", "green", "blue") and 0 <= value["n"] <= 99


def test_json_object_is_an_object(model):
    """Any JSON object: the random model ends one at seed 4 and runs on inside a string at seed 0."""
    ask = dict(messages=[{"role": "user", "content": "JSON please"}], max_tokens=100, temperature=0.8,
               response_format={"type": "json_object"})
    r = model.create_chat_completion(seed=4, **ask)
    assert r["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)
    r = model.create_chat_completion(seed=0, **ask)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["message"]["content"].startswith('{"')


def test_generation_that_fills_the_context_ends_with_length(tmp_path):
    m = minillm.load(default_model_path(), n_ctx=40, n_threads=2)
    r = m.create_chat_completion([{"role": "user", "content": "Talk"}], temperature=0)   # max_tokens: none
    n_prompt = r["usage"]["prompt_tokens"]
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 40 - n_prompt
    r = m("a", max_tokens=3, temperature=0)                  # and the model goes on serving
    assert r["usage"]["completion_tokens"] == 3
    with pytest.raises(ValueError, match="context"):
        m("word " * 50, max_tokens=1)
    with pytest.raises(ValueError, match="max_tokens"):
        m("a", max_tokens=100)


@pytest.mark.parametrize("kwargs", [dict(n=2), dict(suffix="x"), dict(logprobs=21), dict(stop=["a"] * 17),
                                    dict(stop=[1]), dict(max_tokens=-5), dict(logit_bias={"x": 1}),
                                    dict(response_format={"type": "xml"}), dict(grammar="root ::= ("),
                                    dict(prompt=[]), dict(prompt=[10 ** 7]), dict(temperature=float("nan"))])
def test_bad_completion_arguments(model, kwargs):
    kwargs = {"prompt": "hi", **kwargs}
    with pytest.raises(ValueError):
        model.create_completion(**kwargs)


@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "x"}], [{"content": "x"}],
                                      [{"role": "user", "content": 5}],
                                      [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]])
def test_bad_chat_messages(model, messages):
    with pytest.raises(ValueError):
        model.create_chat_completion(messages)
