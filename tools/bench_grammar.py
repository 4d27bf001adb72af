"""Structured-output cost per token on the DeepSeek vocabulary: llguidance against outlines-core.

    python tools/bench_grammar.py [--vocab FILE.gguf] [--steps N] [--seed S] [--json]

For each library and grammar it times the one-time costs (the library's view of the
102400-token vocabulary; compiling the grammar: llguidance's grammar and matcher, outlines-core's
regex and token index) and the per-token cost over a random walk of --steps tokens: each step
computes the mask of allowed tokens as a numpy bool array of n_vocab (what the sampler needs),
draws the next token from random logits restricted to that mask, and advances the grammar.  A
finished generation (the end token drawn) starts a new one, with a fresh matcher or guide, as a
server does per request.  Both libraries see the same token bytes, the same end token, the same
whitespace rule between JSON tokens (the server's) and the same random logits step by step.

Grammars: (a) a JSON schema with a string (maxLength), an integer, an enum and an array of
numbers; (b) "any JSON object".  outlines-core has no unbounded-JSON grammar: its regex for
{"type": "object"} nests objects and arrays to a fixed depth, so its row for (b) is that
depth-limited approximation, not the same language.  Without outlines-core installed only
llguidance is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minillm import grammar as mgrammar  # noqa: E402
from minillm.tokenizer import Tokenizer  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "scores": {"type": "array", "items": {"type": "number"}},
    },
    "required": ["name", "age", "color", "scores"],
    "additionalProperties": False,     # outlines-core's regex never allows extra keys: the same language
}
ANY_OBJECT = {"type": "object"}
WHITESPACE = mgrammar._JSON_OPTIONS["whitespace_pattern"]   # the server's rule, given to both libraries


def _bool_mask(bits: np.ndarray, n_vocab: int) -> np.ndarray:
    """A little-endian bitmask (bytes) -> bool [n_vocab], the conversion the server does."""
    return np.unpackbits(bits.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


# -- the two libraries behind one small interface: new_state(), state.mask(), state.advance(t) --

class LLGuidance:
    name = "llguidance"

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        t0 = time.perf_counter()
        mgrammar.ll_tokenizer(tok)             # built once per tokenizer (the server does it at start)
        self.vocab_s = time.perf_counter() - t0

    def compile(self, schema: dict) -> float:
        t0 = time.perf_counter()
        self.grammar = mgrammar.grammar_for(json_schema=schema)
        mgrammar.Constraint(self.tok, self.grammar)    # validation and matcher: what a request pays
        return time.perf_counter() - t0

    def new_state(self):
        return _LLGState(mgrammar.Constraint(self.tok, self.grammar))


class _LLGState:
    def __init__(self, constraint):
        self.c = constraint

    def mask(self) -> np.ndarray:
        return self.c.mask()

    def advance(self, token: int) -> None:
        self.c.consume(token)

    @property
    def done(self) -> bool:
        return self.c.done


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok: Tokenizer):
        import outlines_core
        self.oc = outlines_core
        self.tok = tok
        self.n_vocab = tok.n_vocab
        t0 = time.perf_counter()
        # token bytes as the keys (outlines-core takes str or bytes; bytes keep the tokens that are
        # pieces of a UTF-8 character); several ids may share bytes; the end token goes apart and
        # the other special tokens are left out (llguidance marks them so that nothing matches them)
        pieces: dict[bytes, list[int]] = {}
        for i in range(tok.n_vocab):
            if i == tok.eos_id or tok.is_special(i):
                continue
            piece = tok.token_to_piece(i)
            if piece:
                pieces.setdefault(piece, []).append(i)
        self.vocab = outlines_core.Vocabulary(tok.eos_id, pieces)
        self.vocab_s = time.perf_counter() - t0

    def compile(self, schema: dict) -> float:
        t0 = time.perf_counter()
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern=WHITESPACE)
        self.index = self.oc.Index(regex, self.vocab)
        return time.perf_counter() - t0

    def new_state(self):
        return _OCState(self.oc.Guide(self.index), self.n_vocab)


class _OCState:
    def __init__(self, guide, n_vocab: int):
        self.g, self.n_vocab = guide, n_vocab
        self.words = (n_vocab + 31) // 32

    def mask(self) -> np.ndarray:
        bits = np.zeros(self.words, dtype=np.int32)
        self.g.write_mask_into(bits.ctypes.data, bits.size, bits.itemsize)
        return _bool_mask(bits, self.n_vocab)

    def advance(self, token: int) -> None:
        self.g.advance(int(token), return_tokens=False)

    @property
    def done(self) -> bool:
        return False      # ends when the end token is drawn (allowed in a final state)


# -- the walk ---------------------------------------------------------------------------

def walk(lib, tok: Tokenizer, steps: int, seed: int) -> dict:
    """``steps`` tokens of random constrained generation; per-step mask and advance times."""
    rng = np.random.default_rng(seed)
    eos = tok.eos_id
    mask_s, advance_s, allowed = [], [], []
    outputs, current = [], []
    state = lib.new_state()
    first_mask = None
    for _ in range(steps):
        t0 = time.perf_counter()
        m = state.mask()
        t1 = time.perf_counter()
        mask_s.append(t1 - t0)
        if first_mask is None:
            first_mask = t1 - t0
        n_allowed = int(m.sum())
        allowed.append(n_allowed)
        if n_allowed == 0:
            raise RuntimeError(f"{lib.name}: no token allowed after {tok.detokenize_bytes(current)!r}")
        logits = rng.standard_normal(tok.n_vocab, dtype=np.float32)
        logits[~m] = -np.inf
        token = int(np.argmax(logits))
        if token != eos:       # the end token finishes the generation; it is not fed to the grammar
            t2 = time.perf_counter()
            state.advance(token)
            advance_s.append(time.perf_counter() - t2)
            current.append(token)
        if token == eos or state.done:
            outputs.append(tok.detokenize_bytes(current))
            current, state = [], lib.new_state()
    valid = 0
    for text in outputs:
        try:
            json.loads(text.decode("utf-8"))
            valid += 1
        except (UnicodeDecodeError, ValueError):
            pass
    return {"steps": steps, "first_mask_ms": 1e3 * first_mask,
            "mask_median_ms": 1e3 * statistics.median(mask_s), "mask_p99_ms": 1e3 * _percentile(mask_s, 99),
            "advance_median_ms": 1e3 * statistics.median(advance_s) if advance_s else 0.0,
            "allowed_median": int(statistics.median(allowed)), "generations_finished": len(outputs),
            "finished_valid_json": valid, "unfinished_tail_tokens": len(current),
            "example": (outputs[0] if outputs else tok.detokenize_bytes(current)).decode("utf-8", "replace")[:120]}


def _percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(xs), q))


def bench(lib, tok, grammar_name: str, schema: dict, steps: int, seed: int, note: str = "") -> dict:
    compile_s = lib.compile(schema)
    rec = {"library": lib.name, "grammar": grammar_name, "vocab_build_s": lib.vocab_s, "compile_s": compile_s}
    rec.update(walk(lib, tok, steps, seed))
    if note:
        rec["note"] = note
    return rec


def print_table(records: list[dict], notes: list[str]) -> None:
    cols = [("library", "library", "{}"), ("grammar", "grammar", "{}"), ("vocab s", "vocab_build_s", "{:.2f}"),
            ("compile s", "compile_s", "{:.3f}"), ("1st mask ms", "first_mask_ms", "{:.2f}"),
            ("mask p50 ms", "mask_median_ms", "{:.3f}"), ("mask p99 ms", "mask_p99_ms", "{:.3f}"),
            ("advance p50 ms", "advance_median_ms", "{:.3f}"), ("allowed p50", "allowed_median", "{}"),
            ("done/valid", None, None)]
    rows = []
    for r in records:
        row = []
        for _, key, fmt in cols:
            row.append(f"{r['generations_finished']}/{r['finished_valid_json']}" if key is None else fmt.format(r[key]))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(cols, widths))))
    for row in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for r in records:
        print(f"  {r['library']} / {r['grammar']}: e.g. {r['example']!r}")
    for n in notes:
        print(f"note: {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", default=os.path.join(ROOT, "minillm", "data", "ggml-vocab-deepseek-llm.gguf"),
                    help="GGUF file whose vocabulary to use (default: DeepSeek-LLM's, 102400 tokens)")
    ap.add_argument("--steps", type=int, default=200, help="tokens generated per measurement (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-outlines-any", action="store_true",
                    help="skip outlines-core's depth-limited 'any object' regex (its index takes seconds)")
    ap.add_argument("--json", action="store_true", help="print one JSON record per line instead of the table")
    args = ap.parse_args()
    if not 1 <= args.steps <= 100_000:
        ap.error("--steps must be in 1..100000")

    tok = Tokenizer.from_gguf(args.vocab)
    libs = [LLGuidance(tok)]
    notes = []
    try:
        libs.append(OutlinesCore(tok))
    except ImportError:
        notes.append("outlines-core is not installed (pip install outlines-core): only llguidance was measured")
    notes.append("outlines-core has no unbounded-JSON grammar: its 'any object' row is the fixed-depth regex that "
                 "build_regex_from_schema makes for {\"type\": \"object\"} (nested objects/arrays only a few levels "
                 "deep), a smaller language than llguidance's")
    notes.append("times include turning the mask into a numpy bool array of n_vocab; 'vocab s' is the one-time "
                 "vocabulary build, 'compile s' the grammar (llguidance: grammar + matcher; outlines-core: "
                 "regex + token index); 'done/valid' counts finished generations and how many parse as JSON")

    records = []
    for lib in libs:
        records.append(bench(lib, tok, "schema", SCHEMA, args.steps, args.seed))
        if lib.name == "llguidance":
            records.append(bench(lib, tok, "any object", ANY_OBJECT, args.steps, args.seed))
        elif not args.no_outlines_any:
            records.append(bench(lib, tok, "any object (depth-limited)", ANY_OBJECT, args.steps, args.seed,
                                 note="outlines-core: fixed-depth regex approximation"))
    context = {"n_vocab": tok.n_vocab, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
               "steps": args.steps, "seed": args.seed}
    if args.json:
        for r in records:
            print(json.dumps({**r, **context}))
        return
    print(f"vocabulary: {tok!r}; {args.steps} steps per row, seed {args.seed}; {os.cpu_count()} cores, "
          f"load average {context['load_average']:.1f}")
    print_table(records, notes)


if __name__ == "__main__":
    main()
