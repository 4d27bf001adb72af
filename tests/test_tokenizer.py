"""Tokenizer: llama.cpp's own test vectors, special tokens, decoding, streaming, errors."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minillm
from minillm.errors import GGUFError
from minillm.tokenizer import CONTROL, NORMAL, USER_DEFINED, Tokenizer, read_gguf_metadata

VOCAB_DIR = os.path.join(os.path.dirname(__file__), "data", "vocab")
VOCABS = ("deepseek-llm", "deepseek-coder")


def vocab_path(name: str) -> str:
    return os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf")


@pytest.fixture(scope="module", params=VOCABS)
def tok(request) -> Tokenizer:
    return _load(request.param)


@pytest.fixture(scope="module")
def llm() -> Tokenizer:
    return _load("deepseek-llm")


_CACHE: dict[str, Tokenizer] = {}


def _load(name: str) -> Tokenizer:
    if name not in _CACHE:
        _CACHE[name] = Tokenizer.from_gguf(vocab_path(name))
    return _CACHE[name]


def read_llama_cpp_vectors(path: str) -> list[tuple[str, list[int]]]:
    """Read ``.inp``/``.out`` the way llama.cpp's tests/test-tokenizer-0.cpp does.

    Inputs are separated by "\\n__ggml_vocab_test__\\n" (the file ends with one);
    each ``.out`` line holds the expected ids, whitespace-stripped.  The test
    tokenizes with add_special=false (no BOS) and parse_special=false.
    """
    with open(path + ".inp", "rb") as f:
        raw = f.read().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(sep)
    with open(path + ".out", "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines), "input and output files have different numbers of tests"
    return [(s, [int(t) for t in line.split()]) for s, line in zip(inputs, lines)]


# -- llama.cpp test vectors ------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vectors_exact(name):
    tok = _load(name)
    cases = read_llama_cpp_vectors(vocab_path(name))
    assert len(cases) == 46
    failures = [(s, want, tok.tokenize(s, add_bos=False)) for s, want in cases
                if tok.tokenize(s, add_bos=False) != want]
    assert not failures, failures[:3]


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vectors_round_trip(name):
    tok = _load(name)
    for s, want in read_llama_cpp_vectors(vocab_path(name)):
        assert tok.detokenize(want) == s


def test_known_ids(llm):
    # Spot values from the vector file, spelled out so a broken reader cannot hide them.
    assert llm.tokenize("Hello world", add_bos=False) == [17464, 1843]
    assert llm.tokenize(" Hello world", add_bos=False) == [37727, 1843]
    assert llm.tokenize("Führer", add_bos=False) == [37, 100014, 71, 6245]  # "ü" is a user-defined token
    assert llm.tokenize("\n\n\n", add_bos=False) == [185, 185, 185]


# -- metadata, BOS/EOS ------------------------------------------------------------

def test_properties(tok):
    meta = read_gguf_metadata(vocab_path(tok.pre))
    assert tok.n_vocab == len(meta["tokenizer.ggml.tokens"])
    assert tok.bos_id == meta["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == meta["tokenizer.ggml.eos_token_id"]
    assert tok.tokens[tok.bos_id] == "<｜begin▁of▁sentence｜>"
    assert tok.is_eog(tok.eos_id) and not tok.is_eog(tok.bos_id)


def test_metadata_reader_matches_gguf_file():
    from minillm.gguf_file import GGUFFile
    path = vocab_path("deepseek-coder")
    assert read_gguf_metadata(path) == GGUFFile(path).metadata


def test_add_bos_follows_the_file(llm):
    assert llm.tokenize("Hello world") == [llm.bos_id, 17464, 1843]
    assert llm.tokenize("Hello world", add_bos=False) == [17464, 1843]
    assert llm.tokenize("") == [llm.bos_id]
    assert llm.tokenize("", add_bos=False) == []
    coder_meta = read_gguf_metadata(vocab_path("deepseek-coder"))  # the smaller file: quicker to build
    coder = _load("deepseek-coder")
    hello = coder.tokenize("Hello world", add_bos=False)
    assert coder.tokenize("Hello world") == [coder.bos_id, *hello]
    no_bos = Tokenizer.from_metadata({**coder_meta, "tokenizer.ggml.add_bos_token": False})
    assert no_bos.tokenize("Hello world") == hello
    with_eos = Tokenizer.from_metadata({**coder_meta, "tokenizer.ggml.add_eos_token": True})
    assert with_eos.tokenize("Hello world") == [coder.bos_id, *hello, coder.eos_id]
    assert with_eos.tokenize("Hello world", add_bos=False) == hello


# -- special tokens -----------------------------------------------------------------

def test_control_tokens_only_parsed_when_asked(llm):
    text = "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>"
    plain = llm.tokenize(text, add_bos=False)
    assert llm.bos_id not in plain and llm.eos_id not in plain
    assert llm.detokenize(plain) == text
    parsed = llm.tokenize(text, add_bos=False, special=True)
    assert parsed[0] == llm.bos_id and parsed[-1] == llm.eos_id
    assert parsed[1:-1] == llm.tokenize("Hi", add_bos=False)


def test_fim_markers_are_control_like_llama_cpp():
    # The coder file types the FIM markers as user-defined; llama.cpp promotes them to control.
    coder = _load("deepseek-coder")
    hole = coder.tokens.index("<｜fim▁hole｜>")
    assert coder.token_types[hole] == CONTROL
    assert hole not in coder.tokenize("a<｜fim▁hole｜>b", add_bos=False)
    assert hole in coder.tokenize("a<｜fim▁hole｜>b", add_bos=False, special=True)
    user = coder.tokens.index("<|User|>")  # stays user-defined: always parsed
    assert coder.token_types[user] == USER_DEFINED
    assert coder.tokenize("<|User|>x", add_bos=False)[0] == user


def _tiny_gpt2_meta(extra_tokens: list[tuple[str, int]], merges=()) -> dict:
    from minillm.tokenizer import _BYTE_OF_CHAR
    byte_chars = sorted(_BYTE_OF_CHAR, key=_BYTE_OF_CHAR.get)
    tokens = byte_chars + [t for t, _ in extra_tokens]
    types = [NORMAL] * 256 + [k for _, k in extra_tokens]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-llm",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": list(merges), "tokenizer.ggml.bos_token_id": 256,
            "tokenizer.ggml.eos_token_id": 256, "tokenizer.ggml.add_bos_token": False}


def test_overlapping_special_tokens_longest_first():
    # llama.cpp cuts the longest special token out first wherever it occurs, then
    # shorter ones from what is left: "abcd" -> "a" + "bcd", not "ab" + "cd".
    meta = _tiny_gpt2_meta([("<bos>", CONTROL), ("ab", USER_DEFINED), ("bcd", USER_DEFINED)])
    tok = Tokenizer.from_metadata(meta)
    ab, bcd = 257, 258
    assert tok.tokenize("abcd") == [ord("a"), bcd]
    assert tok.tokenize("abab") == [ab, ab]
    assert tok.tokenize("xbcdab") == [tok.tokenize("x")[0], bcd, ab]
    assert tok.detokenize(tok.tokenize("zabcdbcdz")) == "zabcdbcdz"


def test_merges_applied_in_rank_order():
    meta = _tiny_gpt2_meta([("<bos>", CONTROL), ("ab", NORMAL), ("bc", NORMAL), ("abc", NORMAL)],
                           merges=["b c", "a b", "a bc"])
    tok = Tokenizer.from_metadata(meta)
    assert tok.tokenize("abc") == [259]  # b+c first (rank 0), then a+bc
    assert tok.tokenize("ab") == [257]


# -- decoding -----------------------------------------------------------------------

def test_detokenize_skips_control_unless_special(llm):
    ids = llm.tokenize("Hi there")
    assert ids[0] == llm.bos_id
    assert llm.detokenize(ids) == "Hi there"
    assert llm.detokenize(ids, special=True) == "<｜begin▁of▁sentence｜>Hi there"
    assert llm.token_to_piece(llm.bos_id) == "<｜begin▁of▁sentence｜>".encode()
    assert llm.token_to_piece(llm.bos_id, special=False) == b""


def test_token_to_piece_is_bytes(llm):
    space = llm.tokenize(" ", add_bos=False)
    assert [llm.token_to_piece(t) for t in space] == [b" "]
    llama_emoji = llm.tokenize("🦙", add_bos=False)
    pieces = [llm.token_to_piece(t) for t in llama_emoji]
    assert len(pieces) > 1 and b"".join(pieces) == "🦙".encode()
    assert llm.token_to_piece(100014) == "ü".encode()  # user-defined tokens are raw text, not byte-mapped


def test_detokenize_invalid_utf8_is_replaced(llm):
    ids = llm.tokenize("🦙", add_bos=False)
    assert llm.detokenize(ids[:1]) == "\ufffd"
    assert llm.detokenize(ids[:1] + llm.tokenize("ok", add_bos=False)) == "\ufffdok"


def test_bad_ids_raise(llm):
    for bad in (-1, llm.n_vocab, 10**9):
        with pytest.raises(ValueError, match="out of range"):
            llm.detokenize([1, bad])
        with pytest.raises(ValueError, match="out of range"):
            llm.token_to_piece(bad)


def test_stream_waits_for_complete_characters(llm):
    ids = llm.tokenize("a🦙b", add_bos=False)
    stream = llm.stream()
    outs = [stream.feed(t) for t in ids]
    assert "".join(outs) + stream.flush() == "a🦙b"
    assert "\ufffd" not in "".join(outs)
    assert any(o == "" for o in outs)  # the llama emoji spans several tokens
    # an unfinished character at the end becomes U+FFFD on flush
    part = llm.tokenize("🦙", add_bos=False)[:1]
    s = llm.stream()
    assert s.feed(part[0]) == ""
    assert s.flush() == "\ufffd"
    assert s.flush() == ""


# -- errors -------------------------------------------------------------------------

def test_bad_input_text(llm):
    with pytest.raises(TypeError):
        llm.tokenize(b"bytes")
    with pytest.raises(ValueError, match="surrogate"):
        llm.tokenize("a\ud800b")


def test_unknown_pre_tokenizer_is_a_clear_error():
    meta = read_gguf_metadata(vocab_path("deepseek-coder"))
    with pytest.raises(GGUFError, match="tokenizer.ggml.pre = 'qwen2' is not supported"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(GGUFError, match="tokenizer.ggml.model = 'bert'"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.model": "bert"})
    with pytest.raises(GGUFError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(GGUFError, match="out of range"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.bos_token_id": 10**6})


def test_unreadable_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(GGUFError, match="magic"):
        Tokenizer.from_gguf(bad)
    data = open(vocab_path("deepseek-coder"), "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:5000])
    with pytest.raises(GGUFError):
        Tokenizer.from_gguf(cut)
    with pytest.raises(GGUFError):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")


def test_package_exports_tokenizer():
    assert minillm.Tokenizer is Tokenizer


# -- long texts ---------------------------------------------------------------------

def test_long_text_chunking_is_exact(llm):
    # Texts over 16k characters are encoded in newline-cut chunks; compare with
    # encoding line by line (the first split rule isolates every newline).
    lines = [f"line {i}: {'x' * (i % 50)} 数字{i * 7919} é\t" for i in range(3000)]
    text = "\n".join(lines) + "\n\n  trailing  "
    ids = llm.tokenize(text, add_bos=False)
    by_line = []
    for i, line in enumerate(text.split("\n")):
        if i:
            by_line += llm.tokenize("\n", add_bos=False)
        by_line += llm.tokenize(line, add_bos=False)
    assert ids == by_line
    assert llm.detokenize(ids) == text


# -- properties ---------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_any_text_round_trips(tok, text):
    ids = tok.tokenize(text, add_bos=False)
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert tok.detokenize(ids) == text
    stream = tok.stream()
    assert "".join(stream.feed(i) for i in ids) + stream.flush() == text
    with_bos = tok.tokenize(text)
    assert with_bos[0] == tok.bos_id and with_bos[1:] == ids
    parsed = tok.tokenize(text, add_bos=False, special=True)  # must not raise either
    assert tok.detokenize(parsed, special=True) == text


def _byte_token_ids(tok: Tokenizer) -> dict[int, int]:
    """Byte value -> a token whose piece is exactly that byte.  DeepSeek has none for
    the 13 bytes that never occur in UTF-8 (C0, C1, F5..FF): their byte-level
    characters (À, Á, õ...) are user-defined tokens standing for the characters."""
    by_byte = {}
    for i in range(tok.n_vocab):
        p = tok.token_to_piece(i)
        if len(p) == 1 and p[0] not in by_byte:
            by_byte[p[0]] = i
    return by_byte


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64), extra=st.lists(st.integers(0, 102399), max_size=8))
def test_any_byte_stream_decodes_the_same_streamed(llm, data, extra):
    byte_ids = _BYTE_IDS.get("llm") or _BYTE_IDS.setdefault("llm", _byte_token_ids(llm))
    assert len(byte_ids) == 256 - 13
    data = bytes(b for b in data if b in byte_ids)
    ids = [byte_ids[b] for b in data] + extra
    whole = llm.detokenize(ids)
    assert whole == llm.detokenize_bytes(ids).decode("utf-8", errors="replace")
    stream = llm.stream()
    streamed = "".join(stream.feed(i) for i in ids) + stream.flush()
    assert streamed == whole
    if not extra:
        assert whole == data.decode("utf-8", errors="replace")


_BYTE_IDS: dict[str, dict[int, int]] = {}


# -- the fused split passes equal llama.cpp's rules applied one by one ----------------

# Runs of characters from every class the rules tell apart (letters, punctuation,
# whitespace, CJK, numbers, others), glued in random orders.
_ATOMS = [" ", "  ", "   ", "\t", " \t", "\u3000", "\u00a0", "\n", "\r\n", "!", ",", "...", "(", "_", "a",
          "Zz", "é", "ß", "Ḁ", "ἀ", "ж", "中", "文字", "한", "か", "1", "42", "٣", "①", "Ⅻ", "²", "©", "🦙", "+",
          "\u0301", "、", "。", "！", "‘", "\u200b", "\x0b"]
_FEW_ATOMS = [" ", "  ", "\t", "\n", "!", "a", "é", "中", "1", "©", "\u00a0", "Ａ", "~"]  # one per class
_TEXTS = st.one_of(st.lists(st.sampled_from(_FEW_ATOMS), max_size=10).map("".join),
                   st.lists(st.sampled_from(_ATOMS), max_size=14).map("".join), st.text(max_size=40))


@pytest.mark.parametrize("pre", ["deepseek-llm", "deepseek-coder"])
@settings(max_examples=600, deadline=None)
@given(text=_TEXTS)
def test_fused_split_passes_equal_rule_by_rule(pre, text):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as hp

    from minillm.pretokenize import PRE_TOKENIZER_SPLITS, hf_split_passes, llama_cpp_categories

    def pieces(rules):
        return hp.Sequence([hp.Split(Regex(r), "isolated") for r in rules]).pre_tokenize_str(text)

    reference = pieces([llama_cpp_categories(r) for r in PRE_TOKENIZER_SPLITS[pre]])
    assert pieces(hf_split_passes(pre)) == reference
    if not any("\u0800" <= c <= "\ud7ff" for c in text):
        assert pieces(hf_split_passes(pre, skip_cjk=True)) == reference


# -- special-token partition vs a direct transcription of llama.cpp's loop ----------

def _partition_like_llama_cpp(text: str, specials: list[tuple[str, int]]) -> list:
    """tokenizer_st_partition: for each special token, longest first, cut every
    occurrence out of every still-raw fragment, left to right."""
    fragments: list = [text]
    for piece, tid in sorted(specials, key=lambda s: -len(s[0].encode("utf-8"))):
        out = []
        for frag in fragments:
            if not isinstance(frag, str):
                out.append(frag)
                continue
            pos = 0
            while True:
                hit = frag.find(piece, pos)
                if hit < 0:
                    break
                if hit > pos:
                    out.append(frag[pos:hit])
                out.append(tid)
                pos = hit + len(piece)
            if pos < len(frag):
                out.append(frag[pos:])
        fragments = out
    return fragments


_SPECIALS = [("ab", USER_DEFINED), ("bc", USER_DEFINED), ("abc", USER_DEFINED), ("ca", USER_DEFINED),
             ("b", USER_DEFINED), ("<c>", CONTROL), ("c>a", USER_DEFINED), ("éb", USER_DEFINED)]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abcé<> ", max_size=24))
def test_special_partition_matches_llama_cpp_order(text):
    tok = _CACHE.get("tiny") or _CACHE.setdefault("tiny", Tokenizer.from_metadata(
        _tiny_gpt2_meta([("<bos>", CONTROL), *_SPECIALS])))
    for special in (False, True):
        allowed = [(p, 257 + k) for k, (p, kind) in enumerate(_SPECIALS) if special or kind == USER_DEFINED]
        assert tok._partition(text, special) == [f for f in _partition_like_llama_cpp(text, allowed) if f != ""]


@pytest.mark.parametrize("pre", ["deepseek-llm", "deepseek-coder", "deepseek-v3"])
def test_chunked_long_text_equals_one_piece(pre):
    # The cuts _chunks() makes must not change the tokens: compare with one HF call.
    meta = read_gguf_metadata(vocab_path("deepseek-coder"))
    tok = Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": pre})
    rng = random.Random(3)
    parts = ["x = 1\n", "  \n", "\n\n", "~!\n", "  indented\n", "12345\n", "中文\n", "\t\r\n", "end. \n", "a\n b\n",
             "'s \n", "..\n\n  ", "é\u3000\n"]
    text = "".join(rng.choice(parts) for _ in range(12000))
    chunks = tok._chunks(text)
    assert len(chunks) > 3 and "".join(chunks) == text
    whole = tok._hf.encode(text, add_special_tokens=False).ids
    assert tok.tokenize(text, add_bos=False) == whole
