"""Constrained sampling through llguidance: JSON (any object, or a JSON schema) and llama.cpp's
GBNF grammars.  Each step the grammar gives the set of allowed next tokens (a mask the sampler
applies before anything else); when the grammar is complete only the end token remains.

llguidance (the Rust library behind guidance, on PyPI) was picked by measured per-token cost:
``tools/bench_grammar.py`` times it against outlines-core on the DeepSeek vocabulary.  It is the
optional ``serve`` extra; without it, requests that ask for structured output get a clear error.
"""
from __future__ import annotations

import json
import weakref
from typing import Optional

import numpy as np

# llguidance marks special tokens (BOS, EOS...) with a leading 0xff byte
_SPECIAL_MARK = b"\xff"
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# whitespace between JSON tokens: llama.cpp's json-schema-to-grammar rule (a space, or a newline
# and up to 20 indent characters), so that a model cannot stall in unbounded whitespace
_JSON_OPTIONS = {"whitespace_pattern": r"(?: |\n[ \t]{0,20})?"}


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ValueError("structured output needs llguidance: pip install 'minillm[serve]'") from None
    return llguidance


def ll_tokenizer(tok):
    """llguidance's view of a :class:`minillm.tokenizer.Tokenizer` (built once per tokenizer:
    every token's bytes, special tokens marked, and our tokenize for its lexer)."""
    if tok in _tokenizers:
        return _tokenizers[tok]
    llg = _llguidance()

    class _Vocab:   # the duck type llguidance.TokenizerWrapper reads
        eos_token_id = tok.eos_id
        bos_token_id = tok.bos_id
        tokens = [(_SPECIAL_MARK + tok.tokens[i].encode()) if tok.is_special(i) else tok.token_to_piece(i)
                  for i in range(tok.n_vocab)]
        special_token_ids = [i for i in range(tok.n_vocab) if tok.is_special(i)]

        def __call__(self, text: str) -> list[int]:
            return tok.tokenize(text, add_bos=False)

    eos = sorted(tok.eog_ids) or None
    ll = llg.LLTokenizer(llg.TokenizerWrapper(_Vocab()), eos_token=eos)
    _tokenizers[tok] = ll
    return ll


def grammar_for(response_format: Optional[dict] = None, grammar: Optional[str] = None,
                json_schema: Optional[dict] = None) -> Optional[str]:
    """The llguidance grammar for a request (None: unconstrained).  ``response_format`` is
    OpenAI's (``text``, ``json_object``, ``json_schema``); ``grammar`` llama.cpp's GBNF (or
    Lark); ``json_schema`` llama-server's field.  ValueError on anything malformed."""
    given = [x for x in (response_format, grammar, json_schema) if x is not None]
    if len(given) > 1:
        raise ValueError("give at most one of response_format, grammar and json_schema")
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            raise ValueError("grammar must be a non-empty GBNF (or Lark) string")
        try:
            return _llguidance().grammar_from("grammar", grammar)
        except ValueError as e:
            raise ValueError(f"grammar: {e}") from None
    if json_schema is not None:
        return _from_schema(json_schema)
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise ValueError("response_format must be an object with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema", {"type": "object"})   # llama-server accepts a schema here too
        return _from_schema(schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format.json_schema must be an object with a 'schema'")
        return _from_schema(spec.get("schema", {}))
    raise ValueError(f"response_format.type must be text, json_object or json_schema, not {kind!r}")


def _from_schema(schema) -> str:
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    try:
        return _llguidance().LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise ValueError(f"JSON schema: {e}") from None


class Constraint:
    """One generation's grammar state: ``mask()`` before sampling, ``consume(token)`` after."""

    def __init__(self, tok, grammar: str):
        llg = _llguidance()
        self._ll = ll_tokenizer(tok)
        self._n_vocab = tok.n_vocab
        error = llg.LLMatcher.validate_grammar(grammar, self._ll)
        if error:
            raise ValueError(f"grammar: {error}")
        self._matcher = llg.LLMatcher(self._ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"grammar: {self._matcher.get_error()}")

    def mask(self) -> np.ndarray:
        """bool [n_vocab]: True where the token is allowed next."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[:self._n_vocab].astype(bool)

    def consume(self, token_id: int) -> None:
        if not self._matcher.consume_token(int(token_id)):
            raise RuntimeError(f"grammar rejected a token it allowed: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """True once the grammar accepts nothing more (only the end token is left)."""
        return self._matcher.is_stopped()
