"""Text <-> token ids from a GGUF file's own ``tokenizer.*`` metadata, exact to llama.cpp.

Two vocabulary kinds are supported, named by ``tokenizer.ggml.model``:

* ``gpt2``: byte-level BPE (every DeepSeek model).  The BPE merges run in HF
  ``tokenizers``; the pre-tokenizer (how text is cut into words before BPE) is
  chosen by ``tokenizer.ggml.pre`` and must reproduce llama.cpp's split regexes.
* ``llama``: SentencePiece-style vocabularies (scores, ``▁`` for spaces, byte
  fallback), run as a score-ranked BPE in HF ``tokenizers``.

Around the BPE, this module does what llama.cpp does itself: it cuts special
tokens out of the text first (``tokenizer_st_partition``), adds BOS/EOS as the
file asks, and turns ids back into bytes piece by piece.

Special tokens: control tokens (BOS, EOS, FIM markers...) are recognised in the
text only with ``special=True``.  "User-defined" tokens (type 4 in the file, e.g.
DeepSeek's ``ü`` or ``<|User|>``) are always recognised, as in llama.cpp and HF.
"""
from __future__ import annotations

import codecs
import os
import re
from bisect import bisect_left
from typing import Iterable, Sequence

from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre

from .errors import GGUFError
from .pretokenize import (CHUNKABLE, CJK_RULE, PRE_TOKENIZER_SPLITS, SPLITS_AT_NEWLINES, cjk_line_runs,
                         hf_split_passes)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Token texts llama.cpp marks as control (so never parsed from plain text, never
# printed) whatever type the file gives them: end-of-turn / fill-in-the-middle
# markers it finds by name (llama_vocab::impl::load in llama.cpp, MIT licence, the
# llama.cpp authors; the names are taken from there).  Only the DeepSeek and the
# common generic names are listed.
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
              "<｜end▁of▁sentence｜>")
_FIM_NAMES = {
    "tokenizer.ggml.fim_pre_token_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>",
                                        "<PRE>", "▁<PRE>"),
    "tokenizer.ggml.fim_suf_token_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>",
                                        "<SUF>", "▁<SUF>"),
    "tokenizer.ggml.fim_mid_token_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>",
                                        "<MID>", "▁<MID>"),
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}
_EOG_NAMES = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                        "<EOT>", "<|end_of_text|>", "<｜end▁of▁sentence｜>"))


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character map, as character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF_CHAR = _gpt2_byte_alphabet()


class Tokenizer:
    """A GGUF vocabulary: ``tokenize`` / ``detokenize`` exactly as llama.cpp does.

    Build it with :meth:`from_gguf` (a vocab-only GGUF is enough) or
    :meth:`from_metadata` (the decoded ``tokenizer.*`` keys of a GGUF file).
    """

    def __init__(self, metadata: dict):
        meta = metadata
        self.model: str = _require(meta, "tokenizer.ggml.model", str)
        tokens = _require(meta, "tokenizer.ggml.tokens", list)
        if not tokens:
            raise GGUFError("tokenizer.ggml.tokens is empty")
        self.tokens: list[str] = tokens
        types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise GGUFError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        self.token_types: list[int] = [int(t) for t in types]
        self.chat_template: str | None = meta.get("tokenizer.chat_template")

        if self.model == "gpt2":
            self.pre: str | None = meta.get("tokenizer.ggml.pre", "default")
            if self.pre not in PRE_TOKENIZER_SPLITS:
                raise GGUFError(
                    f"tokenizer.ggml.pre = {self.pre!r} is not supported (known: "
                    f"{', '.join(sorted(PRE_TOKENIZER_SPLITS))}); tokenizing with another "
                    f"pre-tokenizer would silently produce different tokens than the model was trained on")
            defaults = dict(bos=11, eos=11, add_bos=False, add_space_prefix=False)
        elif self.model == "llama":
            self.pre = None
            defaults = dict(bos=1, eos=2, add_bos=True, add_space_prefix=True)
        else:
            raise GGUFError(f"tokenizer.ggml.model = {self.model!r} is not supported (known: gpt2, llama)")

        self._bos = _token_id(meta, "tokenizer.ggml.bos_token_id", defaults["bos"], len(tokens))
        self._eos = _token_id(meta, "tokenizer.ggml.eos_token_id", defaults["eos"], len(tokens))
        self.add_bos: bool = bool(meta.get("tokenizer.ggml.add_bos_token", defaults["add_bos"]))
        self.add_eos: bool = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix: bool = bool(meta.get("tokenizer.ggml.add_space_prefix",
                                                    defaults["add_space_prefix"]))
        self._promote_control_names(meta)
        self.eog_ids: frozenset[int] = frozenset(
            {i for i in (self._eos,) if i is not None}
            | {i for i, t in enumerate(tokens) if t in _EOG_NAMES})

        if self.model == "gpt2":
            self._hf = _build_byte_level_bpe(tokens, _require(meta, "tokenizer.ggml.merges", list))
            self._hf.pre_tokenizer = _byte_level_pre_tokenizer(hf_split_passes(self.pre))
            self._hf_no_cjk = None
            if CJK_RULE in PRE_TOKENIZER_SPLITS[self.pre]:  # same BPE, pre-tokenizer without the CJK pass
                self._hf_no_cjk = _HFTokenizer(self._hf.model)
                self._hf_no_cjk.pre_tokenizer = _byte_level_pre_tokenizer(hf_split_passes(self.pre, True))
        else:
            scores = meta.get("tokenizer.ggml.scores")
            if scores is None or len(scores) != len(tokens):
                raise GGUFError("a 'llama' vocabulary needs tokenizer.ggml.scores, one per token")
            self._hf = _build_score_bpe(tokens, scores, self.token_types)
            self._hf_no_cjk = None
        self._init_special_matcher()
        self._pieces: list[bytes] | None = None  # id -> bytes, built on first decode

    # -- construction -------------------------------------------------------
    @classmethod
    def from_metadata(cls, metadata: dict) -> "Tokenizer":
        return cls(metadata)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load the vocabulary of a GGUF file (a vocab-only file is enough)."""
        return cls(read_gguf_metadata(path))

    def _promote_control_names(self, meta: dict) -> None:
        """Mark as control the tokens llama.cpp recognises by name (EOT, FIM, EOG)."""
        by_text = {t: i for i, t in enumerate(self.tokens)}
        groups = [("tokenizer.ggml.eot_token_id", _EOT_NAMES), *_FIM_NAMES.items()]
        for key, names in groups:
            if key in meta:
                continue
            found = sorted(by_text[n] for n in names if n in by_text)
            if found:
                self.token_types[found[0]] = CONTROL
        for name in _EOG_NAMES:
            if name in by_text:
                self.token_types[by_text[name]] = CONTROL

    # -- properties ---------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (BOS, EOS, FIM...), which plain text never tokenizes to."""
        return self.token_types[token_id] in (CONTROL, UNKNOWN, UNUSED)

    def is_eog(self, token_id: int) -> bool:
        """True for tokens that end generation (EOS, end-of-turn...)."""
        return token_id in self.eog_ids

    # -- text -> ids ----------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``.

        ``add_bos``: prepend BOS (and append EOS) when the file asks for them
        (``tokenizer.ggml.add_bos_token`` / ``add_eos_token``), like llama.cpp's
        ``add_special``.  ``special``: recognise control tokens written in the text
        (e.g. ``<｜begin▁of▁sentence｜>``); never do this for untrusted user text.
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes str, not {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not encodable as UTF-8 (lone surrogate at index {e.start})") from None
        out: list[int] = []
        if add_bos and self.add_bos:
            if self._bos is None:
                raise GGUFError("tokenizer.ggml.add_bos_token is true but the vocabulary has no BOS token")
            out.append(self._bos)
        raw_pieces: list[str] = []
        layout: list[int | None] = []  # a token id, or None for "next raw piece"
        for item in self._partition(text, special):
            if isinstance(item, str):
                chunks = self._chunks(item)
                raw_pieces.extend(chunks)
                layout.extend([None] * len(chunks))
            else:
                layout.append(item)
        encoded = iter(self._encode_raw(raw_pieces))
        for item in layout:
            if item is None:
                out.extend(next(encoded))
            else:
                out.append(item)
        if add_bos and self.add_eos and self._eos is not None:
            out.append(self._eos)
        return out

    def _encode_raw(self, pieces: list[str]) -> list[list[int]]:
        if not pieces:
            return []
        if self.model == "llama":  # SentencePiece: escape spaces, one leading space per piece
            prefix = "▁" if self.add_space_prefix else ""
            pieces = [prefix + p.replace(" ", "▁") for p in pieces]
        if self._hf_no_cjk is None:
            return self._encode_batch(self._hf, pieces)
        # Lines without CJK take the one-pass pre-tokenizer (cutting at newlines is exact here).
        segments = [(k, text, cjk) for k, piece in enumerate(pieces) for text, cjk in cjk_line_runs(piece)]
        plain = iter(self._encode_batch(self._hf_no_cjk, [t for _, t, cjk in segments if not cjk]))
        mixed = iter(self._encode_batch(self._hf, [t for _, t, cjk in segments if cjk]))
        out: list[list[int]] = [[] for _ in pieces]
        for k, _, cjk in segments:
            out[k].extend(next(mixed if cjk else plain))
        return out

    @staticmethod
    def _encode_batch(hf: _HFTokenizer, pieces: list[str]) -> list[list[int]]:
        if not pieces:
            return []
        if len(pieces) == 1:
            return [hf.encode(pieces[0], add_special_tokens=False).ids]
        encode_batch = getattr(hf, "encode_batch_fast", hf.encode_batch)  # _fast: tokenizers >= 0.21
        return [e.ids for e in encode_batch(pieces, add_special_tokens=False)]

    def _chunks(self, text: str, size: int = 1 << 14) -> list[str]:
        """Cut a long raw text after newlines where that cannot change the result,
        so that HF tokenizers encodes the pieces in parallel.

        deepseek-llm/-coder isolate every newline first: any newline will do.
        deepseek-v3: no split rule matches across a newline followed by a
        non-space character (matches may end with newlines, never go past them),
        so cut only there.  ``str.isspace`` covers all of llama.cpp's whitespace.
        """
        if len(text) <= size or self.pre not in CHUNKABLE:
            return [text]
        any_newline = self.pre in SPLITS_AT_NEWLINES
        chunks, start = [], 0
        pos = start + size
        while len(text) - start > size:
            cut = text.find("\n", pos)
            if cut < 0 or cut + 1 == len(text):
                break
            if not any_newline and text[cut + 1].isspace():
                pos = cut + 1
                continue
            chunks.append(text[start:cut + 1])
            start = cut + 1
            pos = start + size
        chunks.append(text[start:])
        return chunks

    def _init_special_matcher(self) -> None:
        """Index the tokens llama.cpp cuts out of text before BPE.

        llama.cpp takes them longest first (by UTF-8 length); each one is found,
        left to right, in the text not yet claimed by a longer one.
        """
        cands = [i for i, t in enumerate(self.token_types) if t in (CONTROL, USER_DEFINED, UNKNOWN)
                 and self.tokens[i]]
        cands.sort(key=lambda i: -len(self.tokens[i].encode("utf-8")))
        self._special_rank = {tid: r for r, tid in enumerate(cands)}
        self._special_trie: dict[bool, dict] = {}
        self._special_first: dict[bool, re.Pattern | None] = {}
        for parse_control in (False, True):
            trie: dict = {}
            for tid in cands:
                if not parse_control and self.token_types[tid] != USER_DEFINED:
                    continue
                node = trie
                for ch in self.tokens[tid]:
                    node = node.setdefault(ch, {})
                node[""] = tid if "" not in node else node[""]  # duplicate texts: the first id wins
            self._special_trie[parse_control] = trie
            firsts = "".join(re.escape(c) for c in sorted(trie))
            self._special_first[parse_control] = re.compile(f"[{firsts}]") if firsts else None

    def _partition(self, text: str, special: bool) -> list:
        """Split ``text`` into raw strings and special-token ids (llama.cpp's order)."""
        first = self._special_first[special]
        if not text:
            return []
        if first is None:
            return [text]
        trie = self._special_trie[special]
        found = []  # (start, end, token id)
        for m in first.finditer(text):
            start = m.start()
            node, pos = trie, start
            while True:
                node = node.get(text[pos]) if pos < len(text) else None
                if node is None:
                    break
                pos += 1
                if "" in node:
                    found.append((start, pos, node[""]))
        if not found:
            return [text]
        found.sort()
        if any(found[k][1] > found[k + 1][0] for k in range(len(found) - 1)):
            found = self._resolve_overlaps(found)
        parts: list = []
        at = 0
        for start, end, tid in found:
            if start > at:
                parts.append(text[at:start])
            parts.append(tid)
            at = end
        if at < len(text):
            parts.append(text[at:])
        return parts

    def _resolve_overlaps(self, found: list) -> list:
        """Keep the matches llama.cpp would: longer tokens first, then left to right."""
        rank = self._special_rank
        kept_starts: list[int] = []
        kept: list = []
        for start, end, tid in sorted(found, key=lambda f: (rank[f[2]], f[0])):
            k = bisect_left(kept_starts, start)
            if k > 0 and kept[k - 1][1] > start:
                continue
            if k < len(kept) and kept[k][0] < end:
                continue
            kept_starts.insert(k, start)
            kept.insert(k, (start, end, tid))
        return kept

    # -- ids -> text ----------------------------------------------------------
    def _piece_table(self) -> list[bytes]:
        if self._pieces is None:
            self._pieces = [self._piece_bytes(i) for i in range(len(self.tokens))]
        return self._pieces

    def _piece_bytes(self, tid: int) -> bytes:
        text, kind = self.tokens[tid], self.token_types[tid]
        if kind in (CONTROL, UNKNOWN, USER_DEFINED) or kind not in (NORMAL, BYTE):
            return text.encode("utf-8")
        if self.model == "gpt2":
            byte_of = _BYTE_OF_CHAR
            if all(c in byte_of for c in text):
                return bytes(byte_of[c] for c in text)
            return text.encode("utf-8")  # not byte-level text: keep as written
        if kind == BYTE:  # "<0xAB>"
            m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", text)
            return bytes([int(m.group(1), 16)]) if m else text.encode("utf-8")
        return text.replace("▁", " ").encode("utf-8")

    def _renders(self, tid: int, special: bool) -> bool:
        kind = self.token_types[tid]
        if kind in (CONTROL, UNKNOWN):
            return special
        return kind in (NORMAL, USER_DEFINED, BYTE)

    def _check_id(self, tid) -> int:
        if not 0 <= tid < len(self.tokens):
            raise ValueError(f"token id {tid} is out of range for a vocabulary of {len(self.tokens)} tokens")
        return tid

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes token ``token_id`` stands for (may be part of a UTF-8 character).

        Control tokens give their text with ``special=True``, nothing otherwise.
        """
        tid = self._check_id(int(token_id))
        return self._piece_table()[tid] if self._renders(tid, special) else b""

    def detokenize_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """Concatenated piece bytes of ``ids`` (see :meth:`detokenize`)."""
        table = self._piece_table()
        n = len(table)
        out = []
        for tid in ids:
            tid = int(tid)
            if not 0 <= tid < n:
                self._check_id(tid)
            if self._renders(tid, special):
                out.append(table[tid])
        data = b"".join(out)
        if self.model == "llama" and self.add_space_prefix and data.startswith(b" "):
            data = data[1:]  # the space tokenize() put in front
        return data

    def detokenize(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of ``ids``.  Control tokens (BOS, EOS...) are left out unless
        ``special=True``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.detokenize_bytes(ids, special).decode("utf-8", errors="replace")

    def stream(self, special: bool = False) -> "StreamDecoder":
        """An incremental decoder for generated tokens; see :class:`StreamDecoder`."""
        return StreamDecoder(self, special)

    # -- chat -----------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` with the file's ``tokenizer.chat_template`` (DeepSeek-V2
        format when it has none).  Tokenize the result with ``special=True``:
        it contains the BOS text itself, see :meth:`encode_chat`."""
        from .chat import render_chat
        return render_chat(messages, template=self.chat_template, add_generation_prompt=add_generation_prompt,
                           bos_token=self._text_of(self._bos), eos_token=self._text_of(self._eos))

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat prompt: special tokens parsed, one BOS."""
        prompt = self.apply_chat_template(messages, add_generation_prompt)
        bos_text = self._text_of(self._bos)
        starts_with_bos = bool(bos_text) and prompt.startswith(bos_text)
        return self.tokenize(prompt, add_bos=not starts_with_bos, special=True)

    def _text_of(self, tid: int | None) -> str:
        return self.tokens[tid] if tid is not None else ""

    def __repr__(self) -> str:
        kind = f"{self.model}/{self.pre}" if self.pre else self.model
        return f"Tokenizer({kind}, {self.n_vocab} tokens, bos={self._bos}, eos={self._eos})"


class StreamDecoder:
    """Turns generated token ids into text as they come.

    ``feed(id)`` returns the text that became complete with this token ("" while
    a UTF-8 character is still cut in the middle); ``flush()`` returns what is
    left at the end (U+FFFD for an unfinished character) and resets.  Invalid
    bytes become U+FFFD, never an exception.  The concatenation of everything
    returned equals ``tokenizer.detokenize(ids)`` for the same ids.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._strip_space = tokenizer.model == "llama" and tokenizer.add_space_prefix
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def feed(self, token_id: int) -> str:
        piece = self._tok.token_to_piece(token_id, special=self._special)
        if not self._started and piece:
            self._started = True
            if self._strip_space and piece.startswith(b" "):
                piece = piece[1:]
        return self._decoder.decode(piece)

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._started = False
        return text


# ---------------------------------------------------------------------------
# Builders for the HF tokenizers models
# ---------------------------------------------------------------------------

def _byte_level_pre_tokenizer(split_regexes: list[str]):
    splits = [hf_pre.Split(Regex(r), behavior="isolated") for r in split_regexes]
    return hf_pre.Sequence([*splits, hf_pre.ByteLevel(add_prefix_space=False, use_regex=False)])


def _build_byte_level_bpe(tokens: list[str], merges: list[str]) -> _HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}  # duplicate texts: the last id wins, as in llama.cpp
    pairs = []
    for m in merges:
        cut = m.find(" ", 1)  # llama.cpp splits at the first space after the first character
        if cut < 0:
            raise GGUFError(f"tokenizer.ggml.merges entry {m!r} has no space")
        left, right = m[:cut], m[cut + 1:]
        if left in vocab and right in vocab and left + right in vocab:
            pairs.append((left, right))
    return _HFTokenizer(hf_models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=False))


def _build_score_bpe(tokens: list[str], scores: list[float], types: list[int]) -> _HFTokenizer:
    """SentencePiece-style vocabulary as a BPE: llama.cpp merges the adjacent pair
    whose concatenation is the highest-scoring token, which is a BPE whose merge
    ranks follow the merged token's score."""
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    mergeable = {t for t, i in vocab.items() if types[i] in (NORMAL, USER_DEFINED, UNUSED)}
    ranked = []
    for t in mergeable:
        i = vocab[t]
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            if left in vocab and right in vocab:
                ranked.append((-float(scores[i]), i, cut, left, right))
    ranked.sort()
    has_bytes = all(f"<0x{b:02X}>" in vocab for b in range(256))
    unk = next((t for t, i in vocab.items() if types[i] == UNKNOWN), None)
    model = hf_models.BPE(vocab=vocab, merges=[(r[3], r[4]) for r in ranked], unk_token=unk,
                          byte_fallback=has_bytes, fuse_unk=True)
    return _HFTokenizer(model)


# ---------------------------------------------------------------------------
# A direct reader for the metadata section of a GGUF file.  gguf.GGUFReader
# builds a numpy view per array element, which takes many seconds for the
# 100k-string vocabularies; this walks the bytes once.  Layout: "GGUF", u32
# version, u64 tensor count, u64 key count, then (string key, u32 type, value).
# ---------------------------------------------------------------------------
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """All metadata key/values of a GGUF file (strings, numbers, lists)."""
    import mmap
    import struct

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise GGUFError(f"{path}: cannot read ({e})") from None
    try:
        if data[:4] != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is not supported")
        pos = 24
        unpack = struct.unpack_from

        def read_string(pos):
            (n,) = unpack("<Q", data, pos)
            end = pos + 8 + n
            if end > len(data):
                raise GGUFError(f"{path}: string at offset {pos} runs past the end of the file")
            return data[pos + 8:end].decode("utf-8", errors="replace"), end

        def read_value(kind, pos):
            if kind == _GGUF_STRING:
                return read_string(pos)
            fmt = _GGUF_SCALARS.get(kind)
            if fmt is None:
                raise GGUFError(f"{path}: unknown metadata value type {kind} at offset {pos}")
            return unpack(fmt, data, pos)[0], pos + struct.calcsize(fmt)

        meta = {}
        for _ in range(n_kv):
            key, pos = read_string(pos)
            (kind,) = unpack("<I", data, pos)
            pos += 4
            if kind == _GGUF_ARRAY:
                sub, n = unpack("<IQ", data, pos)
                pos += 12
                if sub == _GGUF_STRING:
                    items = []
                    for _ in range(n):
                        s, pos = read_string(pos)
                        items.append(s)
                elif sub in _GGUF_SCALARS:
                    fmt = _GGUF_SCALARS[sub]
                    size = struct.calcsize(fmt)
                    if pos + n * size > len(data):
                        raise GGUFError(f"{path}: array {key!r} runs past the end of the file")
                    items = list(struct.unpack_from(f"<{n}{fmt[1]}", data, pos))
                    pos += n * size
                else:
                    raise GGUFError(f"{path}: metadata key {key!r}: unsupported array element type {sub}")
                meta[key] = items
            else:
                meta[key], pos = read_value(kind, pos)
        return meta
    except struct.error as e:
        raise GGUFError(f"{path}: truncated or corrupt metadata ({e})") from None
    finally:
        data.close()


def _require(meta: dict, key: str, kind: type):
    value = meta.get(key)
    if value is None:
        raise GGUFError(f"metadata key {key!r} is missing: the file has no tokenizer")
    if not isinstance(value, kind):
        raise GGUFError(f"metadata key {key!r} should be a {kind.__name__}, not {type(value).__name__}")
    return value


def _token_id(meta: dict, key: str, default: int | None, n_vocab: int) -> int | None:
    value = meta.get(key, default)
    if value is None or int(value) < 0:
        return None
    if int(value) >= n_vocab:
        raise GGUFError(f"{key} = {value} is out of range for a vocabulary of {n_vocab} tokens")
    return int(value)
