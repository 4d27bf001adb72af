"""One completion on the engine: a validated :class:`Job` (prompt ids, limits, sampler,
stop strings, grammar) and the loop that runs it, yielding :class:`Piece` s of text.

The loop reuses the KV cache for the longest prefix the new prompt shares with what the cache
holds (only the new suffix is evaluated), stops at an end-of-generation token, a stop string
(matched across token boundaries and never emitted), the grammar's end, ``max_tokens`` or a
full context, and emits only whole UTF-8 characters.  OpenAI-shaped dicts are made from the
pieces in :mod:`minillm.openai_format`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .sampling import Sampler, SamplingParams, log_softmax

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20


class StopMatcher:
    """Holds back text that may be the start of a stop string.

    ``push(text)`` returns ``(text safe to emit, stopped)``: when a stop string is complete the
    text before it is returned and nothing after it, ever.  ``flush()`` returns the text still
    held at the end of a generation that did not stop on a string.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._held + text
        # the stop that ends first (then the longest of those): what a character-by-character
        # scan finds, so the cut does not depend on how the text was split into tokens
        hits = [(i + len(s), i) for s, i in ((s, buf.find(s)) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[:min(hits)[1]], True
        keep = 0                  # the longest end of buf that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass
class Job:
    """A validated request: everything the loop needs, nothing HTTP-specific."""
    prompt_ids: list[int]
    max_tokens: int                              # tokens to generate at most (already fitted to n_ctx)
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    logprobs: Optional[int] = None               # None: no logprobs; k: the k most likely alternatives too
    constraint: object = None                    # a grammar.Constraint, or None
    echo_text: str = ""                          # the prompt text, emitted first when echo is on


@dataclass
class Piece:
    """Text that became final with one sampled token, and that token's log-probabilities."""
    text: str
    token: int
    logprob: Optional[float] = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Outcome:
    """How a run ended and what it cost (filled in as the run goes)."""
    finish_reason: Optional[str] = None          # "stop" or "length"; None while running
    n_prompt: int = 0
    n_cached: int = 0                            # prompt tokens reused from the KV cache
    n_generated: int = 0
    prompt_s: float = 0.0
    gen_s: float = 0.0
    cancelled: bool = False

    def usage(self) -> dict:
        return {"prompt_tokens": self.n_prompt, "completion_tokens": self.n_generated,
                "total_tokens": self.n_prompt + self.n_generated,
                "prompt_tokens_details": {"cached_tokens": self.n_cached}}

    def timings(self) -> dict:
        """llama-server's ``timings`` object."""
        n_eval = self.n_prompt - self.n_cached
        return {"prompt_n": n_eval, "prompt_ms": 1e3 * self.prompt_s,
                "prompt_per_second": n_eval / self.prompt_s if self.prompt_s else 0.0,
                "predicted_n": self.n_generated, "predicted_ms": 1e3 * self.gen_s,
                "predicted_per_second": self.n_generated / self.gen_s if self.gen_s else 0.0,
                "cache_n": self.n_cached}


def fit_max_tokens(n_prompt: int, max_tokens: Optional[int], n_ctx: int) -> int:
    """The generation budget: ``max_tokens`` (None or -1: until the context is full), checked
    against the context like OpenAI does.  ValueError when the prompt or the request do not fit."""
    if n_prompt >= n_ctx:
        raise ValueError(f"the prompt has {n_prompt} tokens but the context holds {n_ctx}: "
                         f"shorten the prompt (at least one token must be left to generate)")
    room = n_ctx - n_prompt
    if max_tokens is None or max_tokens == -1:
        return room
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an int >= 0 (or -1/None: until the context is full), "
                         f"not {max_tokens!r}")
    if max_tokens > room:
        raise ValueError(f"the context holds {n_ctx} tokens, but {n_prompt} prompt tokens + max_tokens "
                         f"{max_tokens} = {n_prompt + max_tokens}; lower max_tokens")
    return int(max_tokens)


def check_stop(stop) -> list[str]:
    """OpenAI's ``stop``: a string or a list of strings (at most 16 here)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    return [s for s in stop if s]


def check_logprobs(n) -> Optional[int]:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_LOGPROBS:
        raise ValueError(f"logprobs must be an int in [0, {MAX_LOGPROBS}], not {n!r}")
    return int(n)


def run(model, job: Job, outcome: Outcome, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
    """Generate for ``job`` on ``model`` (its KV cache is reused for the common prefix),
    yielding pieces of text; ``outcome`` is filled in as it goes.  ``cancelled()`` is asked
    before each decode step: when it turns true the run ends at once."""
    tok = model.tokenizer
    ids = job.prompt_ids
    outcome.n_prompt = len(ids)
    t0 = time.perf_counter()
    if job.max_tokens == 0:
        outcome.finish_reason = "length"
        return
    logits, outcome.n_cached = model.prefill(ids)
    outcome.prompt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = Sampler(job.sampling, history=ids)
    decoder = tok.stream()
    stopper = StopMatcher(job.stop)
    constraint = job.constraint
    try:
        while True:
            mask = constraint.mask() if constraint is not None else None
            tid = sampler.sample(logits, mask)
            piece = Piece("", tid)
            if job.logprobs is not None:
                lp = log_softmax(logits)
                piece.logprob = float(lp[tid])
                if job.logprobs:
                    top = np.argpartition(-lp, job.logprobs - 1)[:job.logprobs]
                    top = top[np.argsort(-lp[top], kind="stable")]
                    piece.top_logprobs = [(int(t), float(lp[t])) for t in top]
            if tok.is_eog(tid):
                outcome.finish_reason = "stop"
                break
            if constraint is not None:
                constraint.consume(tid)
            outcome.n_generated += 1
            piece.text, stopped = stopper.push(decoder.feed(tid))
            done = outcome.n_generated == job.max_tokens or model.n_past >= model.n_ctx
            if not stopped and done:                 # the last piece carries all that is left
                piece.text += _drain(decoder, stopper)
            yield piece
            if stopped or (constraint is not None and constraint.done):
                outcome.finish_reason = "stop"
                return
            if done:
                outcome.finish_reason = "length"
                return
            if cancelled():
                outcome.cancelled = True
                return
            logits = model.eval([tid], logits_all=False)[-1]
        tail = _drain(decoder, stopper)              # an end-of-generation token ends the text
        if tail:
            yield Piece(tail, -1)
    finally:
        outcome.gen_s = time.perf_counter() - t0


def _drain(decoder, stopper: StopMatcher) -> str:
    """What the decoder and the stop matcher still hold at the end of a generation."""
    text, stopped = stopper.push(decoder.flush())
    return text if stopped else text + stopper.flush()
