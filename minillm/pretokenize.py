"""How llama.cpp cuts text into words before BPE, for DeepSeek vocabularies, as
Oniguruma regexes for HF ``tokenizers`` ``Split`` pre-tokenizers.

``PRE_TOKENIZER_SPLITS`` holds llama.cpp's rules for each ``tokenizer.ggml.pre``;
``hf_split_passes`` gives the regexes actually run: the same pieces in fewer
passes (each pass over the text costs about as much as the BPE itself).
tests/test_tokenizer.py checks the fused passes against the rules one by one,
tests/test_tokenizer_peer.py the result against ik_llama.cpp.
"""
from __future__ import annotations

import re

# The split regexes are those llama.cpp uses for each ``tokenizer.ggml.pre``
# (src/llama-vocab.cpp, llm_tokenizer_bpe; MIT licence, the llama.cpp authors);
# each is applied in turn to every piece the previous one produced, keeping both
# matches and the text between them.
#
# llama.cpp runs regexes without \p{..} on a copy of the text in which every
# non-ASCII whitespace character became U+000B, so such characters never match
# an explicit non-ASCII class (U+3000 in "\u3000-\u3002", U+2000..U+200A inside
# "\u0800-\u4e00", ...).  Oniguruma sees the real characters, so _cls() cuts
# them out of those classes.  Ranges are written as escapes: an editor
# normalising the source (NFC) would silently change some of them.

# llama.cpp's whitespace set (unicode_set_whitespace); Oniguruma's \s is the same set.
_WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                         0x202F, 0x205F, 0x3000])


def _spans(ranges: str) -> list[tuple[int, int]]:
    """Parse explicit class ranges ("a-zé...") into (first, last) code point pairs."""
    spans, i = [], 0
    while i < len(ranges):
        if i + 2 < len(ranges) and ranges[i + 1] == "-":
            spans.append((ord(ranges[i]), ord(ranges[i + 2])))
            i += 3
        else:
            spans.append((ord(ranges[i]), ord(ranges[i])))
            i += 1
    return spans


def _minus(spans: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in spans:
        for c_lo, c_hi in sorted(cut):
            if c_hi < lo or c_lo > hi:
                continue
            if lo < c_lo:
                out.append((lo, c_lo - 1))
            lo = max(lo, c_hi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(a_lo, b_lo), min(a_hi, b_hi)) for a_lo, a_hi in a for b_lo, b_hi in b
            if max(a_lo, b_lo) <= min(a_hi, b_hi)]


def _class(spans: list[tuple[int, int]]) -> str:
    body = "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in spans)
    return f"[{body}]"


def _class_char(cp: int) -> str:
    c = chr(cp)
    return "\\" + c if c in "\\[]^-&" else c


_NON_ASCII_WHITESPACE = [(w, w) for w in sorted(_WHITESPACE) if w > 0x7F]


def _cls(ranges: str) -> str:
    """A character class of explicit ranges ("a-z..."), minus llama.cpp's whitespace."""
    return _class(_minus(_spans(ranges), _NON_ASCII_WHITESPACE))


_DEEPSEEK_LETTERS = (
    "A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377"
    "\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_DEEPSEEK_PUNCT = "!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002"
_DEEPSEEK_CJK = "\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff"
_KANA_CJK = "\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff"

PRE_TOKENIZER_SPLITS: dict[str, list[str]] = {
    "deepseek-llm": [
        r"[\r\n]",
        r"\s?" + _cls(_DEEPSEEK_LETTERS) + "+",
        r"\s?" + _cls(_DEEPSEEK_PUNCT) + "+",
        r"\s+$",
        _cls(_DEEPSEEK_CJK) + "+",
        r"\p{N}+",
    ],
    "deepseek-coder": [
        r"[\r\n]",
        r"\s?\p{L}+",
        r"\s?\p{P}+",
        _cls(_DEEPSEEK_CJK) + "+",
        r"\p{N}",
    ],
    "deepseek-v3": [
        r"\p{N}{1,3}",
        f"[{_KANA_CJK}]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ],
}

# Code points Unicode 16.0 assigns (Oniguruma in HF tokenizers knows them) but the
# tables llama.cpp classifies with (src/unicode-data.cpp, Unicode 15.1) leave
# unassigned, so for llama.cpp they are in no \p{..} category.  Found by comparing
# the two tables; every \p{X} below is run as [\p{X}&&[^these]].
_UNASSIGNED_IN_LLAMA_CPP = (
    "\U00000897\U00001b4e-\U00001b4f\U00001b7f\U00001c89-\U00001c8a\U00002427-\U00002429"
    "\U000031e4-\U000031e5\U0000a7cb-\U0000a7cd\U0000a7da-\U0000a7dc\U000105c0-\U000105f3"
    "\U00010d40-\U00010d65\U00010d69-\U00010d85\U00010d8e-\U00010d8f\U00010ec2-\U00010ec4\U00010efc"
    "\U00011380-\U00011389\U0001138b\U0001138e\U00011390-\U000113b5\U000113b7-\U000113c0\U000113c2"
    "\U000113c5\U000113c7-\U000113ca\U000113cc-\U000113d5\U000113d7-\U000113d8\U000113e1-\U000113e2"
    "\U000116d0-\U000116e3\U00011bc0-\U00011be1\U00011bf0-\U00011bf9\U00011f5a\U00013460-\U000143fa"
    "\U00016100-\U00016139\U00016d40-\U00016d79\U00018cff\U0001cc00-\U0001ccf9\U0001cd00-\U0001ceb3"
    "\U0001e5d0-\U0001e5fa\U0001e5ff\U0001f8b2-\U0001f8bb\U0001f8c0-\U0001f8c1\U0001fa89\U0001fa8f"
    "\U0001fabe\U0001fac6\U0001fadc\U0001fadf\U0001fae9\U0001fbcb-\U0001fbef"
)


def llama_cpp_categories(regex: str) -> str:
    """Make each \\p{N|L|P|S|M} of ``regex`` mean what it means in llama.cpp.

    Besides the Unicode 16 additions: llama.cpp lists the ASCII members of each
    category by hand (k_ucat_map in src/unicode.cpp) and its symbol list lacks
    "~" (Unicode Sm), so for llama.cpp "~" is neither punctuation nor symbol.
    """
    def narrowed(m: re.Match) -> str:
        excluded = ("~" if m.group(1) == "S" else "") + _UNASSIGNED_IN_LLAMA_CPP
        return f"[\\p{{{m.group(1)}}}&&[^{excluded}]]"
    return re.sub(r"\\p\{([NLPSM])\}", narrowed, regex)


# Pre-tokenizers whose first split isolates every "\r" and "\n": long texts may be
# cut after any newline and the pieces encoded in parallel with identical results.
SPLITS_AT_NEWLINES = frozenset({"deepseek-llm", "deepseek-coder"})
CHUNKABLE = SPLITS_AT_NEWLINES | {"deepseek-v3"}  # see Tokenizer._chunks

# The DeepSeek CJK rule only ever matches characters in U+0800..U+D7FF: texts
# without any can skip that pass.
CJK_RULE = _cls(_DEEPSEEK_CJK) + "+"
_MAYBE_CJK = re.compile("[\u0800-\ud7ff]")


def hf_split_passes(pre: str, skip_cjk: bool = False) -> list[str]:
    r"""The regexes of PRE_TOKENIZER_SPLITS[pre] as run in HF ``tokenizers``: the same
    splits in fewer passes, since each pass costs ~0.1 s per MB whatever it does.

    For deepseek-llm/-coder the newline rule and the letter-run rule become one
    alternation: a letter run never holds a newline, and inside a line "\s?" is
    "[^\S\r\n]?" on the whole text.  For deepseek-llm the punctuation rule
    "\s?P+" and the trailing-space rule "\s+$" become one too: the only pieces
    that can end in whitespace are the gaps between punctuation runs, and a gap's
    trailing run is the whitespace before a punctuation run less the one character
    "\s?" takes, or the whitespace at the end.  A gap never starts inside a
    whitespace run, hence the "(?<!\s)" (which also keeps long runs linear).
    ``skip_cjk``: for texts without a character the CJK rule matches, which then
    need a single pass (``_single_pass_without_cjk``), or drop that rule.
    Unicode categories are narrowed to llama.cpp's (``llama_cpp_categories``).
    tests/test_tokenizer.py checks these passes against the rules one by one.
    """
    rules = list(PRE_TOKENIZER_SPLITS[pre])
    if pre in SPLITS_AT_NEWLINES:
        assert rules[0] == r"[\r\n]" and rules[1].startswith(r"\s?")
        rules = [r"[\r\n]|[^\S\r\n]?" + rules[1][3:], *rules[2:]]
    if pre == "deepseek-llm":
        punct, trailing = rules[1], rules[2]
        assert punct.startswith(r"\s?[") and punct.endswith("]+") and trailing == r"\s+$"
        rules[1:3] = [punct + r"|(?<!\s)\s+(?=\s" + punct[3:-1] + r")|(?<!\s)\s+$"]
    if skip_cjk:
        if pre in SPLITS_AT_NEWLINES:
            rules = [_single_pass_without_cjk(pre)]
        elif CJK_RULE in rules:
            rules.remove(CJK_RULE)
    return [llama_cpp_categories(r) for r in rules]


def cjk_line_runs(text: str) -> list[tuple[str, bool]]:
    """Cut ``text`` after newlines into runs of whole lines that may hold CJK (True)
    and runs that cannot (False)."""
    bounds: list[list[int]] = []  # [start, end) of the CJK runs
    pos = 0
    while (m := _MAYBE_CJK.search(text, pos)) is not None:
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        pos = end = len(text) if end < 0 else end + 1
        if bounds and bounds[-1][1] == start:
            bounds[-1][1] = end
        else:
            bounds.append([start, end])
    runs, done = [], 0
    for start, end in bounds:
        if start > done:
            runs.append((text[done:start], False))
        runs.append((text[start:end], True))
        done = end
    if done < len(text) or not runs:
        runs.append((text[done:], False))
    return runs


def _single_pass_without_cjk(pre: str) -> str:
    r"""One regex giving the pieces of all of PRE_TOKENIZER_SPLITS[pre] on text
    without CJK (no character the CJK rule matches).

    The rules then cut a line into letter runs (with one leading space, "\s?"),
    punctuation runs (idem), number runs, trailing whitespace, and what is left
    between.  deepseek-coder's letters and punctuation are disjoint Unicode
    categories, so its rules read directly as alternatives.  deepseek-llm's
    punctuation class holds the ASCII and full-width letters (Lp), so its letter
    runs split again into Lp and other-letter (Ln) runs, the leading space going
    to the first; and its "\s+$" rule cuts off a gap's trailing whitespace: the
    whitespace before a letter or punctuation run less the one character that
    run takes, or the whitespace before a newline or the end.  Such a run starts
    at a non-space or a newline, hence the look-behind.
    """
    sp = r"[^\S\r\n]"  # whitespace inside a line
    if pre == "deepseek-coder":
        return rf"[\r\n]|{sp}?\p{{L}}+|{sp}?\p{{P}}+|\p{{N}}"
    assert pre == "deepseek-llm"
    letters = _minus(_spans(_DEEPSEEK_LETTERS), _NON_ASCII_WHITESPACE)
    punct = _minus(_spans(_DEEPSEEK_PUNCT), _NON_ASCII_WHITESPACE)
    lp, ln, pn = _intersect(letters, punct), _minus(letters, punct), _minus(punct, letters)
    either = _class(letters + pn)
    return (rf"[\r\n]|{sp}?{_class(lp)}+|{sp}?{_class(ln)}+|{sp}?{_class(pn)}+"
            rf"|(?<!{sp}){sp}+(?={sp}{either})|(?<!{sp}){sp}+(?=[\r\n]|$)|\p{{N}}+")
