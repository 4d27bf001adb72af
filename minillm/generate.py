"""The generation loop on the engine: tokenize, evaluate, sample, detokenize as a stream,
with llama.cpp's timings (:class:`GenerationStats`)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from .config import config_from_metadata
from .model import Model
from .sampling import sample

DEFAULT_N_CTX = 4096


@dataclass
class GenerationStats:
    """Timings of one generation, filled in as it goes.  As in llama.cpp, ``prompt`` is the
    prefill that yields the first token's logits and ``eval`` the single-token steps after it
    (sampling and detokenizing count only in ``total``)."""
    load_s: float = 0.0
    n_prompt: int = 0
    prompt_s: float = 0.0
    n_eval: int = 0
    eval_s: float = 0.0
    n_generated: int = 0
    total_s: float = 0.0

    def format(self) -> str:
        """llama.cpp's perf lines (without their function-name prefix)."""
        def rate(seconds: float, n: int) -> str:
            ms = 1e3 * seconds / n if n else 0.0
            tps = n / seconds if seconds > 0 else 0.0
            return f"({ms:8.2f} ms per token, {tps:8.2f} tokens per second)"

        return "\n".join([
            f"       load time = {1e3 * self.load_s:10.2f} ms",
            f"prompt eval time = {1e3 * self.prompt_s:10.2f} ms / {self.n_prompt:5d} tokens "
            f"{rate(self.prompt_s, self.n_prompt)}",
            f"       eval time = {1e3 * self.eval_s:10.2f} ms / {self.n_eval:5d} runs   "
            f"{rate(self.eval_s, self.n_eval)}",
            f"      total time = {1e3 * self.total_s:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ])


def context_size(n_needed: int, n_ctx_train: int, n_ctx: Optional[int] = None) -> int:
    """The cache size for ``n_needed`` tokens: ``n_ctx`` if given, else DEFAULT_N_CTX grown to
    fit, within the trained context.  ValueError when the tokens do not fit."""
    limit = n_ctx or n_ctx_train
    if n_needed > limit:
        what = f"n_ctx={n_ctx}" if n_ctx else f"the model's trained context of {n_ctx_train}"
        raise ValueError(f"{n_needed} tokens (prompt + max_tokens) exceeds {what}")
    return n_ctx or min(max(DEFAULT_N_CTX, n_needed), n_ctx_train)


def prompt_ids(tok, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids, wrapped in the chat template when ``chat``."""
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = tok.tokenize(text, add_bos=False, special=True)
    else:
        ids = tok.tokenize(prompt, add_bos=True)
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    return ids


def _open(path, n_ctx: Optional[int], cache_type: str, n_threads: Optional[int], max_tokens: int,
          prompt: str, chat: bool):
    """(model, tokenizer, prompt ids) for a file: the metadata alone sizes the cache from the
    prompt before the weights are prepared."""
    from .tokenizer import Tokenizer, read_gguf_metadata

    meta = read_gguf_metadata(path)
    tok = Tokenizer.from_metadata(meta)
    ids = prompt_ids(tok, prompt, chat)
    n_ctx_train = config_from_metadata(meta, n_vocab_fallback=tok.n_vocab).n_ctx_train
    size = context_size(len(ids) + max_tokens, n_ctx_train, n_ctx)
    return Model(path, n_ctx=size, cache_type=cache_type, n_threads=n_threads), tok, ids


def generate_text(model: Model | str | os.PathLike, prompt: str, max_tokens: int = 16, chat: bool = False,
                  temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95, seed: int = 0,
                  n_threads: Optional[int] = None, n_ctx: Optional[int] = None, cache_type: str = "f16",
                  stats: Optional[GenerationStats] = None) -> Iterator[str]:
    """Yield the text generated after ``prompt`` piece by piece (complete UTF-8 characters
    only), stopping after ``max_tokens`` tokens or at an end-of-generation token.

    ``model``: a loaded :class:`Model` (its cache is reset; ``n_ctx``, ``cache_type`` and
    ``n_threads`` are then its own) or a GGUF path, loaded with a cache of ``n_ctx`` tokens
    (default: see :func:`context_size`).  ``stats`` is filled in with the timings."""
    stats = stats if stats is not None else GenerationStats()
    if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an int >= 0, not {max_tokens!r}")
    t0 = time.perf_counter()
    if isinstance(model, Model):
        tok = model.tokenizer
        ids = prompt_ids(tok, prompt, chat)
        context_size(len(ids) + max_tokens, model.config.n_ctx_train, model.n_ctx)
        stats.load_s = model.load_seconds
    else:
        model, tok, ids = _open(model, n_ctx, cache_type, n_threads, max_tokens, prompt, chat)
        stats.load_s = time.perf_counter() - t0
    t_gen = time.perf_counter()
    try:
        yield from _decode(model, tok, ids, max_tokens, (temperature, top_k, top_p),
                           np.random.default_rng(seed), stats)
    finally:
        stats.total_s = stats.load_s + time.perf_counter() - t_gen


def _decode(model: Model, tok, ids: list[int], max_tokens: int, sampling: tuple,
            rng: np.random.Generator, stats: GenerationStats) -> Iterator[str]:
    """The loop: the prompt's prefill, then one eval per sampled token, timed apart."""
    if max_tokens == 0:
        return
    model.reset()
    stream = tok.stream()
    t0 = time.perf_counter()
    logits = model.eval(ids, logits_all=False)[-1]
    stats.prompt_s, stats.n_prompt = time.perf_counter() - t0, len(ids)
    while True:
        tid = sample(logits, *sampling, rng)
        if tok.is_eog(tid):
            break
        stats.n_generated += 1
        piece = stream.feed(tid)
        if piece:
            yield piece
        if stats.n_generated == max_tokens:
            break
        t0 = time.perf_counter()
        logits = model.eval([tid], logits_all=False)[-1]
        stats.eval_s += time.perf_counter() - t0
        stats.n_eval += 1
    tail = stream.flush()
    if tail:
        yield tail
