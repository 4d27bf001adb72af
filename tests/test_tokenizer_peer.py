"""Tokenizer vs ik_llama.cpp (through the ik-llama-cpp-python wheel) on the same GGUF files.

Hundreds of varied strings (code, CJK, emoji, whitespace runs, digits, mixed scripts,
special-token look-alikes, random code points; generated deterministically) must
tokenize to exactly the ids llama.cpp produces, with and without BOS and special-token
parsing, and must round-trip through detokenize.  Besides the two DeepSeek files this
covers the deepseek-v3 pre-tokenizer and a SentencePiece ('llama') vocabulary, each
written here as a vocab-only GGUF.
"""
from __future__ import annotations

import ctypes
import io
import os
import random

import pytest

from minillm.tokenizer import CONTROL, USER_DEFINED, Tokenizer, read_gguf_metadata

pytestmark = pytest.mark.peer

VOCAB_DIR = os.path.join(os.path.dirname(__file__), "data", "vocab")

CODE = [
    "def f(x):\n    return x**2 + 1\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
    "<div class=\"x\">&nbsp;Hello&amp;bye</div>\r\n",
    "SELECT name, COUNT(*) FROM t WHERE id >= 42 GROUP BY name;",
    "x = lambda a, *args, **kw: (a, args, kw)  # comment",
    "fn main() -> Result<(), Box<dyn Error>> { println!(\"{:?}\", v); Ok(()) }",
    "    if (a && b || !c) { return a ?: b; }\n\n\n    // done",
    "#include <stdio.h>\nint main(void){printf(\"%d\\n\", 0x7fff);}",
    "$ ls -la | grep '^d' > out.txt 2>&1 && echo $?",
    "a[i][j] += b[j][k]*c[k][i]; // O(n^3)",
    "@decorator\nclass A(B, metaclass=M):\n    '''doc'''\n    pass",
]
CJK = [
    "我想在apple工作1314151天～", "你好，世界！这是一个测试。", "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다. 안녕하세요!", "東京タワーは333メートル", "繁體中文與简体中文混合",
    "「引用」『二重』【括弧】", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３", "中文English混合mixed文本",
]
EMOJI = [
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅", "👩‍👩‍👧‍👦 family", "🇺🇸🇯🇵 flags", "👍🏽👍🏿 skin",
    "🦙.cpp", "❤️🔥💯", "a😀b😃c", "🧑‍💻 coding",
]
WHITESPACE = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\t\n", " \n ", "\u00a0", "\u3000", "\u2003", "\u2009x",
    "\u200b", "end   ", "  lead", "a \t b", "\n\n\n\n", "x\u3000\u3000y", "!\u3000!", "\u0085", "\x0b\x0c",
    "\u2028line\u2029",
]
DIGITS = [
    "3", "33", "333", "3333", "33333", "1234567890", "3.14159", "1e-10", "v1.2.3", "w048 7tuijk dsdfhu",
    "٠١٢٣٤٥", "²³¹", "①②③", "ⅫⅣ", "１２３４", "12,345,678.90", "0x1F", "-0", "१२३",
]
SCRIPTS = [
    "нещо на Български", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "हिन्दी भाषा",
    "ภาษาไทย", "កាន់តែពិសេសអាចខលចេញ", "Führer", "naïve café résumé", "Ærøskøbing", "ǅemal ǈ",
    "Ünïcödé ÀÁÂ", "ẞtraße", "İstanbul ı", "tiếng Việt", "ქართული", "Հայերեն", "ꙮ", "𐐷𐐸 deseret",
    "ﬁ ﬂ ligatures", "e\u0301 combining", "a\u0308\u0304", "Ω K Å",
]
SPECIALS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>hi",
    "x<｜end▁of▁sentence｜>y", "<｜begin▁of▁sentence", "｜end▁of▁sentence｜>", "<|User|>", "<|Assistant|>",
    "<|EOT|>", "<｜fim▁hole｜>", "<｜fim▁begin｜>a<｜fim▁end｜>", "[PAD100015]", "[PAD100015", "[PAD32022]",
    "<s>", "</s>", "<unk>", "<|im_start|>", "<pad>", "<<｜end▁of▁sentence｜>>", "ü", "üü", "öäü", "ÿþý",
]
PLAIN = [
    "Hello world", " Hello World!", "Hello, y'all! How are you 😁 ?", "'s 've 're 'll 'd 'M",
    "there, 'RE you sure? 'M not sure I'll make it", "ied 4 ½ months", "The quick brown fox.",
    "   Hello\n    Hello", "\n =", "' era", " (", "...", "!!!???", "a-b_c.d/e\\f", "~`@#$%^&*",
    "“quotes” ‘single’ — dash… ellipsis", "CamelCaseWord snake_case_word kebab-case-word",
]
POOLS = [CODE, CJK, EMOJI, WHITESPACE, DIGITS, SCRIPTS, SPECIALS, PLAIN]


def unicode16_strings() -> list[str]:
    """Characters new in Unicode 16 (letters, digits, marks, punctuation, symbols):
    Oniguruma puts them in categories, llama.cpp's tables do not."""
    chars = [0x897, 0x1B4E, 0x1C89, 0x2427, 0x31E4, 0xA7CB, 0x105C0, 0x10D40, 0x10D69, 0x11380, 0x116D0,
             0x11BF0, 0x13460, 0x16100, 0x16D40, 0x1CC00, 0x1E5D0, 0x1FA89, 0x1FBCB]
    out = []
    for c in map(chr, chars):
        out += [" " + c, "  " + c * 3, "ab" + c + "cd", "1" + c + "2", "!" + c + "?", "x " + c + c, c + "\n"]
    return out


def corpus(n: int = 400, seed: int = 1234) -> list[str]:
    """Every listed fragment, then ``n`` random concatenations of them."""
    rng = random.Random(seed)
    out = [s for pool in POOLS for s in pool] + unicode16_strings()
    while len(out) < n:
        parts = [rng.choice(rng.choice(POOLS)) for _ in range(rng.randint(2, 6))]
        glue = rng.choice(["", " ", "\n", "  ", "\t"])
        s = glue.join(parts)
        if rng.random() < 0.2:  # random code points, mostly from busy blocks
            s += "".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                                         rng.randint(0x3000, 0xD7FF), rng.randint(0xE000, 0xFFFD),
                                         rng.randint(0x10000, 0x1FAFF)]))
                         for _ in range(rng.randint(1, 12)))
        out.append(s)
    return out


# -- ik_llama.cpp -------------------------------------------------------------------

class IkVocab:
    """A vocab-only model loaded in ik_llama.cpp, for llama_tokenize."""

    def __init__(self, path: str):
        self.api = pytest.importorskip("ik_llama_cpp._ctypes_api")
        self.api.llama_backend_init()
        params = self.api.llama_model_default_params()
        params.vocab_only = True
        self.model = self.api.llama_model_load_from_file(os.fspath(path).encode(), params)
        assert self.model, f"ik_llama.cpp could not load {path}"
        # ik's llama_tokenize takes the model (the wheel's stub names it "vocab")
        self._tokenize = self.api._lib.llama_tokenize
        self._tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                   ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
        self._tokenize.restype = ctypes.c_int32

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self._tokenize(self.model, data, len(data), buf, cap, add_special, parse_special)
        assert n >= 0, "token buffer too small"
        return list(buf[:n])

    def close(self):
        self.api.llama_free_model(self.model)


MODES = [(False, False), (True, False), (True, True), (False, True)]


def compare_with_ik(tok: Tokenizer, ik: IkVocab, texts: list[str]) -> None:
    mismatches = []
    for text in texts:
        for add_bos, special in MODES:
            ours = tok.tokenize(text, add_bos=add_bos, special=special)
            theirs = ik.tokenize(text, add_bos, special)
            if ours != theirs:
                mismatches.append((text, add_bos, special, ours, theirs))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"


@pytest.mark.parametrize("name", ["deepseek-llm", "deepseek-coder"])
def test_matches_ik_llama_cpp(name):
    path = os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf")
    tok, ik = Tokenizer.from_gguf(path), IkVocab(path)
    texts = corpus(400)
    compare_with_ik(tok, ik, texts)
    long_text = "\n".join(texts * 6)  # > 16k characters: encoded in newline-cut chunks
    assert len(tok._chunks(long_text)) > 1
    assert tok.tokenize(long_text) == ik.tokenize(long_text, True, False)
    for text in texts:
        assert tok.detokenize(tok.tokenize(text)) == text
        assert tok.detokenize(tok.tokenize(text, add_bos=False, special=True), special=True) == text
    ik.close()


# -- GGUF files written here ------------------------------------------------------------

def write_vocab_gguf(path, meta: dict) -> None:
    """A vocab-only GGUF (llama architecture hyper-parameters are required by the loader)."""
    import gguf
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(64)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(meta["tokenizer.ggml.tokens"]))
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in meta:
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in meta:
        w.add_token_merges(meta["tokenizer.ggml.merges"])
    if "tokenizer.ggml.scores" in meta:
        w.add_token_scores(meta["tokenizer.ggml.scores"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    if "tokenizer.ggml.unknown_token_id" in meta:
        w.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
    w.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    w.add_add_eos_token(meta.get("tokenizer.ggml.add_eos_token", False))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


V3_MARKERS = {"<｜User｜>": USER_DEFINED, "<｜Assistant｜>": USER_DEFINED, "<think>": USER_DEFINED,
              "</think>": USER_DEFINED, "<｜tool▁calls▁begin｜>": USER_DEFINED, "<｜place▁holder▁no▁1｜>": CONTROL}


def test_deepseek_v3_pre_tokenizer_matches_ik(tmp_path):
    """The deepseek-v3 split rules, on the DeepSeek LLM vocabulary plus V3-style markers."""
    meta = read_gguf_metadata(os.path.join(VOCAB_DIR, "ggml-vocab-deepseek-llm.gguf"))
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    for k, (text, kind) in enumerate(V3_MARKERS.items()):
        slot = tokens.index(f"[PAD{100015 + k}]")
        tokens[slot], types[slot] = text, kind
    meta = {**meta, "tokenizer.ggml.pre": "deepseek-v3", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types}
    path = tmp_path / "v3-vocab.gguf"
    write_vocab_gguf(path, meta)
    tok, ik = Tokenizer.from_gguf(path), IkVocab(path)
    assert tok.pre == "deepseek-v3"
    extra = ["<｜User｜>Hi<｜Assistant｜><think>x</think>", "1234567 12 1", "abc,def...ghi!?\n\n  x",
             "<｜place▁holder▁no▁1｜>", "日本語カタカナ123漢字",
             # llama.cpp's \p{S} lacks "~" (its hand-written ASCII symbol list)
             "  ~`@#$%^&*", "a ~b", "x~~y", "1~2", " ~", "~\n", "~ok", "~~~ ~~"]
    texts = corpus(300, seed=99) + extra
    compare_with_ik(tok, ik, texts)
    long_text = "\n".join(texts * 6)
    assert len(tok._chunks(long_text)) > 1
    assert tok.tokenize(long_text) == ik.tokenize(long_text, True, False)
    assert tok.tokenize("<｜User｜>", add_bos=False) == [tokens.index("<｜User｜>")]
    for text in texts:
        assert tok.detokenize(tok.tokenize(text)) == text
    ik.close()


# -- SentencePiece ('llama') vocabulary ------------------------------------------------------

def _train_sentencepiece(vocab_size: int = 600):
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(5)
    lines = [rng.choice(PLAIN + CODE + SCRIPTS + DIGITS) for _ in range(3000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _sentencepiece_meta(sp) -> dict:
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True}


def test_sentencepiece_vocab_matches_ik_and_sentencepiece(tmp_path):
    sp = _train_sentencepiece()
    meta = _sentencepiece_meta(sp)
    path = tmp_path / "spm-vocab.gguf"
    write_vocab_gguf(path, meta)
    tok, ik = Tokenizer.from_gguf(path), IkVocab(path)
    assert tok.model == "llama" and tok.bos_id == 1
    texts = [t for t in corpus(250, seed=3) if t]
    compare_with_ik(tok, ik, texts)
    for text in texts:
        ids = tok.tokenize(text, add_bos=False)
        assert ids == sp.encode(text), text
        assert tok.detokenize(ids) == sp.decode(ids)
        if "▁" not in text:  # SentencePiece writes spaces as U+2581: that character cannot round-trip
            assert tok.detokenize(tok.tokenize(text)) == text
    ik.close()
