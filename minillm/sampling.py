"""Pick the next token from logits, with llama.cpp's samplers in llama.cpp's order.

    logit bias -> grammar mask -> penalties (repeat, frequency, presence over the last
    ``repeat_last_n`` tokens) -> top-k -> top-p -> min-p -> temperature -> draw

top-p and min-p look at the distribution at temperature 1, as in llama.cpp (temperature comes
after them).  ``temperature <= 0`` takes the most likely remaining token (greedy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


@dataclass
class SamplingParams:
    """The sampling knobs, llama.cpp's names and defaults (``llama-server``)."""
    temperature: float = 0.8
    top_k: int = 40                 # <= 0: all tokens
    top_p: float = 0.95             # 1.0: off
    min_p: float = 0.05             # 0.0: off
    repeat_penalty: float = 1.0     # 1.0: off
    repeat_last_n: int = 64         # tokens of history the penalties look at (-1: all, 0: none)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: Optional[int] = None      # None: a fresh random seed

    def check(self, n_vocab: int) -> "SamplingParams":
        """Raise ValueError on values llama.cpp would refuse or that make no sense."""
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(what)

        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v),
                 f"{name} must be a finite number, not {v!r}")
        for name in ("top_k", "repeat_last_n"):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool), f"{name} must be an int, not {v!r}")
        need(0.0 <= self.temperature <= 100.0, f"temperature must be in [0, 100], not {self.temperature}")
        need(0.0 <= self.top_p <= 1.0, f"top_p must be in [0, 1], not {self.top_p}")
        need(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], not {self.min_p}")
        need(0.0 < self.repeat_penalty <= 100.0, f"repeat_penalty must be in (0, 100], not {self.repeat_penalty}")
        need(-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], not {self.presence_penalty}")
        need(-2.0 <= self.frequency_penalty <= 2.0,
             f"frequency_penalty must be in [-2, 2], not {self.frequency_penalty}")
        need(self.repeat_last_n >= -1, f"repeat_last_n must be >= -1, not {self.repeat_last_n}")
        need(self.seed is None or (isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool)
                                   and self.seed >= -1), f"seed must be an int >= -1 (-1: random), not {self.seed!r}")
        for tid, bias in self.logit_bias.items():
            need(isinstance(tid, (int, np.integer)) and 0 <= tid < n_vocab,
                 f"logit_bias: token id {tid!r} is outside the vocabulary [0, {n_vocab})")
            need(isinstance(bias, (int, float)) and not isinstance(bias, bool) and -100.0 <= bias <= 100.0,
                 f"logit_bias for token {tid} must be a number in [-100, 100], not {bias!r}")
        return self


class Sampler:
    """One generation's sampler: the parameters, a seeded random generator and the token
    history the penalties look at (the prompt's tokens count, as in llama.cpp)."""

    def __init__(self, params: SamplingParams, history: Sequence[int] = (),
                 rng: Optional[np.random.Generator] = None):
        self.params = params
        if rng is None:
            seed = params.seed if params.seed is not None and params.seed != -1 else np.random.SeedSequence().entropy
            rng = np.random.default_rng(seed)
        self.rng = rng
        self.history: list[int] = list(history)
        self._bias_ids = np.array(list(params.logit_bias), dtype=np.int64)
        self._bias = np.array(list(params.logit_bias.values()), dtype=np.float32)

    def accept(self, token_id: int) -> None:
        self.history.append(int(token_id))

    def adjust(self, logits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """The logits after logit bias, the grammar's ``mask`` (bool, True = allowed) and the
        penalties: a float32 copy."""
        z = np.array(logits, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(z)):
            raise ValueError("logits contain NaN or infinity")
        if self._bias_ids.size:
            z[self._bias_ids] += self._bias
        if mask is not None:
            z[~mask[:z.size]] = -np.inf
        self._penalize(z)
        return z

    def _penalize(self, z: np.ndarray) -> None:
        p = self.params
        if p.repeat_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0:
            return
        last = self.history if p.repeat_last_n == -1 else self.history[-p.repeat_last_n:] if p.repeat_last_n else []
        if not last:
            return
        ids, counts = np.unique(np.asarray(last, dtype=np.int64), return_counts=True)
        ids, counts = ids[ids < z.size], counts[ids < z.size]
        v = z[ids]
        v = np.where(v <= 0, v * p.repeat_penalty, v / p.repeat_penalty)
        z[ids] = v - counts * p.frequency_penalty - p.presence_penalty

    def sample(self, logits: np.ndarray, mask: Optional[np.ndarray] = None) -> int:
        """The next token for ``logits`` (one row); it joins the history."""
        tid = self.choose(self.adjust(logits, mask))
        self.accept(tid)
        return tid

    def choose(self, z: np.ndarray) -> int:
        """Apply top-k, top-p, min-p and temperature to adjusted logits ``z`` and draw."""
        p = self.params
        best = int(np.argmax(z))
        if not np.isfinite(z[best]):
            raise ValueError("no token is allowed (every logit is -inf)")
        if p.temperature <= 0.0:
            return best
        n_ok = int(np.count_nonzero(np.isfinite(z)))
        k = min(p.top_k, n_ok) if p.top_k > 0 else n_ok
        if k < z.size:                       # candidates: the k largest, sorted descending
            cand = np.argpartition(-z, k - 1)[:k]
        else:
            cand = np.arange(z.size)
        cand = cand[np.argsort(-z[cand], kind="stable")]
        logit = z[cand].astype(np.float64)
        prob = np.exp(logit - logit[0])
        prob /= prob.sum()
        if p.top_p < 1.0:                    # the smallest prefix whose mass reaches top_p
            keep = int(np.searchsorted(np.cumsum(prob), p.top_p)) + 1
            cand, logit, prob = cand[:keep], logit[:keep], prob[:keep]
        if p.min_p > 0.0:                    # tokens at least min_p times as likely as the best
            keep = max(1, int(np.count_nonzero(prob >= p.min_p * prob[0])))
            cand, logit = cand[:keep], logit[:keep]
        scaled = logit / p.temperature
        w = np.exp(scaled - scaled[0])
        return int(cand[self.rng.choice(cand.size, p=w / w.sum())])


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
           rng: np.random.Generator | None = None, min_p: float = 0.0) -> int:
    """One draw with top-k / top-p / min-p / temperature and no history (greedy at
    ``temperature`` 0)."""
    s = Sampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
                rng=rng or np.random.default_rng())
    return s.choose(s.adjust(logits))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of one row of logits (what ``logprobs`` reports: the model's
    own distribution, before any sampler)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum()))
