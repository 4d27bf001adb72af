"""The generation loop: tokenize, evaluate, sample, detokenize as a stream.

The forward pass is the numpy reference model (minillm.reference) until the
kernel engine lands; the loop does not care which one it drives.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import numpy as np

from . import load
from .sampling import sample


def _forward(path: str):
    from .reference import ReferenceModel
    return ReferenceModel(path), "reference (numpy)"


def generate_text(path: str, prompt: str, max_tokens: int = 16, chat: bool = False, temperature: float = 0.0,
                  top_k: int = 40, top_p: float = 0.95, seed: int = 0, n_threads: int = 0) -> Iterator[str]:
    """Yield the generated text piece by piece (complete UTF-8 characters only)."""
    model = load(path)
    tok = model.tokenizer
    if chat:
        prompt = model.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = tok.tokenize(prompt, add_bos=False, special=True)
    else:
        ids = tok.tokenize(prompt, add_bos=True)
    if len(ids) + max_tokens > model.config.n_ctx_train:
        raise ValueError(f"prompt of {len(ids)} tokens + {max_tokens} new tokens exceeds the model's "
                         f"context of {model.config.n_ctx_train}")
    forward, _ = _forward(path)
    rng = np.random.default_rng(seed)
    stream = tok.stream()
    for _ in range(max_tokens):
        logits = forward.eval(ids)[-1]
        next_id = sample(logits, temperature, top_k, top_p, rng)
        if next_id == tok.eos_id:
            break
        ids.append(next_id)
        piece = stream.feed(next_id)
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail


def bench_decode(path: str, n_gen: int = 8, depth: int = 0, n_threads: int = 0, reps: int = 1) -> dict:
    """Decode speed of n_gen tokens after `depth` tokens of context (prompt time excluded); median of reps."""
    forward, engine = _forward(path)
    n_vocab = load(path).config.n_vocab
    rng = np.random.default_rng(0)
    times = []
    for _ in range(reps):
        ids = [int(i) for i in rng.integers(0, n_vocab, size=max(depth, 1))]
        t_total = 0.0
        for _ in range(n_gen):
            t0 = time.perf_counter()
            logits = forward.eval(ids)[-1]
            t_total += time.perf_counter() - t0
            ids.append(int(np.argmax(logits)))
        times.append(t_total)
    return {"model": os.path.basename(path), "engine": engine, "tps": n_gen / float(np.median(times))}
