"""Perplexity and KL-divergence on a text, by llama-perplexity's method.

The text is tokenized once (with BOS), cut into consecutive chunks of ``n_ctx``
tokens, and each chunk is evaluated from an empty cache with its first token replaced
by BOS.  Only the second half of each chunk is scored (every scored token sees at
least n_ctx/2 tokens of context): the logits at positions n_ctx/2 .. n_ctx-2 against
the tokens that follow them.  The estimate is exp(mean NLL), its error
ppl * sd(NLL) / sqrt(n - 1).

KL-divergence: a base run saves the scored positions' log-probabilities
(``--kl-divergence-base FILE``); a later run of another model (a quantization of the
base) on the same text and n_ctx reads them back (``--kl-divergence``) and reports
the mean KL(base || model) with its error, percentiles of it, and how often both
models rank the same token first, as llama-perplexity does.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .reference import log_softmax

BASE_FORMAT = 1


@dataclass
class Estimate:
    mean: float
    err: float


def mean_and_error(values: np.ndarray) -> Estimate:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return Estimate(float(v.mean()) if len(v) else math.nan, 0.0)
    return Estimate(float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))))


@dataclass
class PerplexityResult:
    n_ctx: int
    n_chunks: int
    nll: np.ndarray                     # per scored token
    running_ppl: list = field(default_factory=list)   # after each chunk
    kld: Optional[np.ndarray] = None    # per scored token, when compared with a base
    same_top: Optional[np.ndarray] = None  # per scored token: the base's top token is this model's

    @property
    def ppl(self) -> Estimate:
        """exp(mean NLL) and llama-perplexity's error: ppl * standard error of the NLL."""
        e = mean_and_error(self.nll)
        ppl = math.exp(e.mean)
        return Estimate(ppl, ppl * e.err)

    def report(self) -> str:
        p = self.ppl
        lines = [f"Final estimate: PPL = {p.mean:.4f} +/- {p.err:.5f}"]
        if self.kld is not None:
            k = mean_and_error(self.kld)
            s = mean_and_error(self.same_top)
            q = np.percentile(self.kld, [50, 90, 95, 99, 99.9])
            lines += [f"Mean    KLD: {k.mean:10.6f} +/- {k.err:10.6f}",
                      f"Maximum KLD: {self.kld.max():10.6f}",
                      f"99.9%   KLD: {q[4]:10.6f}",
                      f"99.0%   KLD: {q[3]:10.6f}",
                      f"95.0%   KLD: {q[2]:10.6f}",
                      f"90.0%   KLD: {q[1]:10.6f}",
                      f"Median  KLD: {q[0]:10.6f}",
                      f"Same top p: {100 * s.mean:6.3f} +/- {100 * s.err:5.3f} %"]
        return "\n".join(lines)


class KLBase:
    """Log-probabilities of a base model at the scored positions, saved as float16 in an
    uncompressed .npz (n_scored x n_vocab x 2 bytes) with the tokens they were scored on."""

    def __init__(self, tokens: np.ndarray, n_ctx: int, logprobs: np.ndarray):
        self.tokens, self.n_ctx, self.logprobs = tokens, n_ctx, logprobs

    def save(self, path) -> None:
        with open(path, "wb") as f:       # np.savez would append .npz to a bare name
            np.savez(f, format=np.int64(BASE_FORMAT), tokens=self.tokens, n_ctx=np.int64(self.n_ctx),
                     logprobs=self.logprobs)

    @classmethod
    def load(cls, path) -> "KLBase":
        try:
            z = np.load(path, allow_pickle=False)
            if int(z["format"]) != BASE_FORMAT:
                raise ValueError(f"format {int(z['format'])}")
            return cls(z["tokens"], int(z["n_ctx"]), z["logprobs"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a minillm KL-divergence base file ({e})") from None


def scored_positions(n_ctx: int) -> tuple[int, int]:
    """First and end logit position scored in a chunk."""
    return n_ctx // 2, n_ctx - 1


def perplexity(model, text: str, n_ctx: int = 512, n_chunks: Optional[int] = None, progress: bool = True,
               save_base: Optional[str] = None, kl_base: Optional[str] = None) -> PerplexityResult:
    """llama-perplexity on ``text`` with ``model`` (a :class:`minillm.Model`)."""
    if n_ctx < 16 or n_ctx % 2:
        raise ValueError(f"n_ctx must be an even number >= 16, got {n_ctx}")
    if n_ctx > model.n_ctx:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's context size {model.n_ctx} (load it with n_ctx >= it)")
    tokens = np.asarray(model.tokenize(text, add_bos=True), np.int64)
    available = len(tokens) // n_ctx
    if available < 2:   # llama-perplexity's rule
        raise ValueError(f"the text has {len(tokens)} tokens: perplexity with a context of {n_ctx} "
                         f"needs at least {2 * n_ctx}")
    n = available if n_chunks is None or n_chunks <= 0 else min(n_chunks, available)
    tokens = tokens[:n * n_ctx]
    base = None
    if kl_base is not None:
        base = KLBase.load(kl_base)
        if base.n_ctx != n_ctx or not np.array_equal(base.tokens, tokens[:len(base.tokens)]) \
                or len(base.tokens) < len(tokens):
            raise ValueError(f"{kl_base} was made on other tokens or another n_ctx "
                             f"(base: n_ctx {base.n_ctx}, {len(base.tokens)} tokens)")
    first, end = scored_positions(n_ctx)
    per_chunk = end - first
    bos = model.tokenizer.bos_id
    nll = np.empty(n * per_chunk, np.float64)
    saved = np.empty((n * per_chunk, model.config.n_vocab), np.float16) if save_base else None
    kld = np.empty(n * per_chunk, np.float64) if base is not None else None
    same = np.empty(n * per_chunk, np.float64) if base is not None else None
    result = PerplexityResult(n_ctx, n, nll)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="chunk", desc="perplexity", file=sys.stderr)
    for i in range(n):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        model.reset()
        logits = model.eval(chunk.tolist(), logits_all=True)[first:end]
        logp = log_softmax(logits)
        targets = chunk[first + 1:end + 1]
        sl = slice(i * per_chunk, (i + 1) * per_chunk)
        nll[sl] = -logp[np.arange(per_chunk), targets]
        if saved is not None:
            saved[sl] = logp
        if base is not None:
            base_logp = base.logprobs[sl].astype(np.float64)
            kld[sl] = (np.exp(base_logp) * (base_logp - logp)).sum(1)
            # the top tokens compared at the base's float16 precision: a near-tie it rounded
            # together is no disagreement (the same model twice: 100 %)
            same[sl] = base_logp.argmax(1) == logp.astype(np.float16).argmax(1)
        result.running_ppl.append(math.exp(nll[:(i + 1) * per_chunk].mean()))
        if bar is not None:
            bar.set_postfix(ppl=f"{result.running_ppl[-1]:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    model.reset()
    if saved is not None:
        KLBase(tokens, n_ctx, saved).save(save_base)
    result.kld, result.same_top = kld, same
    return result


def main_file_text(path: str) -> str:
    """The text of ``-f``: UTF-8, or a clear error."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None
