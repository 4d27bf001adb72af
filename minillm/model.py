"""The model object users hold: file, config, prepared weights, tokenizer, KV cache and state.

    model = minillm.load("model.gguf", n_ctx=4096, cache_type="f16")
    logits = model.eval(model.tokenize("Hello"))       # [n_tokens, n_vocab], appended to the cache
    model.n_past                                       # tokens in the cache
    for tid in model.generate(ids, temp=0.0): ...      # token ids, llama-cpp-python style
    model.reset()
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Iterator, Optional, Sequence

import numpy as np

from . import runtime
from .config import DeepSeek2Config, config_from_metadata
from .errors import GGUFError
from .gguf_file import GGUFFile
from .kv_cache import CACHE_TYPES, KVCache, cache_row_bytes
from .weights import ModelWeights, load_weights

# prompt tokens at the end of a prompt are evaluated in aligned batches of this size (see prefill)
PREFILL_BLOCK = 64
# The built-in model: a small DeepSeek2 trained on the Python docs (models.md, tools/train_model.py).
BUILTIN_MODEL = os.path.join(os.path.dirname(__file__), "data", "minillm-docs-q8_0.gguf")
# show a progress bar when preparing the weights copies more than this many bytes
_PROGRESS_MIN_BYTES = 256 << 20


class Model:
    """A DeepSeek2 model loaded from a GGUF file, ready to evaluate tokens.

    ``n_ctx``: tokens the latent KV cache holds; ``cache_type``: f16, bf16, q8_0 or q8_KV;
    ``n_threads``: kernel threads (default: the cores this process may use); ``n_ubatch``:
    prompt tokens evaluated per batch.  ``prepare=False`` only maps and checks the file
    (enough for ``info`` and the tokenizer; ``eval`` then prepares on first use).
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int = 4096, cache_type: str = "f16",
                 n_threads: Optional[int] = None, n_ubatch: int = 512, prepare: bool = True,
                 progress: Optional[bool] = None):
        t0 = time.perf_counter()
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"unknown KV cache type {cache_type!r}; choose one of {', '.join(CACHE_TYPES)}")
        for name, v in (("n_ctx", n_ctx), ("n_ubatch", n_ubatch)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        if n_threads is not None and (not isinstance(n_threads, (int, np.integer)) or n_threads < 0):
            raise ValueError(f"n_threads must be an int >= 0 (0 or None: all cores), not {n_threads!r}")
        self.file = GGUFFile(path)
        self.path = self.file.path
        token_embd = self.file.tensors.get("token_embd.weight")
        self.config: DeepSeek2Config = config_from_metadata(
            self.file.metadata, n_vocab_fallback=token_embd.ne[1] if token_embd else 0)
        self.weights: ModelWeights = load_weights(self.file, self.config)
        self.n_threads = int(n_threads) if n_threads else runtime.available_cores()
        self.n_ctx = int(n_ctx)
        self.n_ubatch = int(n_ubatch)
        cache_row_bytes(cache_type, self.config.kv_latent_dim)  # validates the combination
        self.cache_type = cache_type
        self.progress = progress
        self._tokenizer = None
        self._engine = None
        self._cache: Optional[KVCache] = None
        self._tokens: list[int] = []       # the tokens whose rows are in the cache, in order
        # how the cached rows were computed (see prefill): [0, _rows_big) in whole n_ubatch-aligned
        # batches, [_rows_big, _rows_small) in whole PREFILL_BLOCK-aligned ones, the rest otherwise
        self._rows_big = 0
        self._rows_small = 0
        self.load_seconds = 0.0
        if prepare:
            self._prepare()
        self.load_seconds = time.perf_counter() - t0

    # -- engine -------------------------------------------------------------
    def _prepare(self) -> None:
        """Prepare the weights for the kernels and allocate the KV cache (once)."""
        if self._engine is not None:
            return
        from .deepseek2 import DeepSeek2, WeightPreparer

        need = self.kv_cache_bytes()
        avail = runtime.available_memory()
        if avail is not None and need > avail:
            raise ValueError(f"a {self.cache_type} KV cache of n_ctx={self.n_ctx} tokens needs "
                             f"{need / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of memory is available; "
                             f"use a smaller n_ctx or a q8_0 cache")
        runtime.configure_threads()
        to_copy = self.prepared_bytes()[0]
        bar = None
        show = self.progress if self.progress is not None else to_copy > _PROGRESS_MIN_BYTES
        if show:
            from tqdm import tqdm
            bar = tqdm(total=self.weight_bytes(), unit="B", unit_scale=True, desc="preparing weights",
                       leave=False)
        # the repacked originals are private copies now: their file pages leave this process
        prep = WeightPreparer(self.n_threads, on_copied=self.file.drop_pages,
                              on_tensor=(lambda t: bar.update(t.nbytes)) if bar else None)
        try:
            engine = DeepSeek2(self.weights, self.config, self.n_ctx, prep)
        finally:
            if bar is not None:
                bar.close()
        self._cache = KVCache(self.config.n_layer, self.n_ctx, self.cache_type, self.config.kv_latent_dim)
        self._engine = engine

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The token ids in the KV cache, in order."""
        return list(self._tokens)

    def reset(self) -> None:
        """Forget the cached tokens (the cache memory is kept)."""
        self.truncate(0)

    def truncate(self, n_keep: int) -> None:
        """Keep the first ``n_keep`` cached tokens and forget the rest (their rows are
        overwritten by the next eval)."""
        if not 0 <= n_keep <= self.n_past:
            raise ValueError(f"n_keep must be in 0..{self.n_past} (n_past), got {n_keep}")
        self._tokens = self._tokens[:n_keep]
        self._rows_big = min(self._rows_big, n_keep)
        self._rows_small = min(self._rows_small, n_keep)

    def common_prefix(self, ids: Sequence[int]) -> int:
        """How many of the cached tokens ``ids`` starts with."""
        n = 0
        for a, b in zip(self._tokens, ids):
            if a != b:
                break
            n += 1
        return n

    def _check_ids(self, ids) -> np.ndarray:
        try:
            a = np.asarray(ids)
        except Exception as e:  # ragged lists, objects
            raise ValueError(f"token ids must be a sequence of ints ({e})") from None
        if a.size == 0:
            raise ValueError("no tokens to evaluate (empty prompt)")
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"token ids must be a 1-D sequence of ints, got {a.dtype} shape {a.shape}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= self.config.n_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.n_vocab})")
        if self.n_past + a.size > self.n_ctx:
            raise ValueError(f"context full: {self.n_past} cached + {a.size} new tokens exceed n_ctx={self.n_ctx}")
        return a.astype(np.int64)

    def eval(self, ids: Sequence[int], logits_all: bool = True) -> np.ndarray:
        """Evaluate ``ids`` after the tokens already in the cache; return float32 logits
        [len(ids), n_vocab], or only the last token's [1, n_vocab] when ``logits_all`` is False
        (the output projection is then computed for that row only).  Prompts longer than
        ``n_ubatch`` are evaluated in batches of ``n_ubatch`` tokens."""
        a = self._check_ids(ids)
        self._prepare()
        out = []
        for start in range(0, a.size, self.n_ubatch):
            chunk = a[start:start + self.n_ubatch]
            last = start + self.n_ubatch >= a.size
            with runtime.kernel_threads():
                logits = self._engine.forward(chunk, self.n_past, self._cache, self.n_threads,
                                              logits_all=logits_all)
            self._tokens.extend(int(t) for t in chunk)
            if logits_all or last:
                out.append(logits)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def prompt_batches(self, n: int) -> list[tuple[int, int]]:
        """The batches a prompt of ``n`` tokens is evaluated in by :meth:`prefill`: whole
        ``n_ubatch``-aligned batches, then whole ``PREFILL_BLOCK``-aligned ones, then the rest."""
        big, small = self.n_ubatch, min(PREFILL_BLOCK, self.n_ubatch)
        n_big = n // big * big
        n_small = n_big + (n - n_big) // small * small
        return ([(s, s + big) for s in range(0, n_big, big)] + [(s, s + small) for s in range(n_big, n_small, small)]
                + ([(n_small, n)] if n_small < n else []))

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, int]:
        """Evaluate the prompt ``ids`` from the start of the context, reusing what the cache
        holds of it; return (the last token's logits [n_vocab], prompt tokens reused).

        The kernels round a row's result differently depending on the batch it was computed in
        (the float sums of a tile and of a single row run in another order), so a prompt is always
        evaluated in the same batches (:meth:`prompt_batches`), and a cached row is reused only if
        it was computed in the batch this prompt would compute it in.  The logits are then a
        function of the prompt alone, whatever the cache held: a fixed seed gives the same text
        with or without the prompt cache.  Rows written by decode steps or by :meth:`eval` are
        never reused (a multi-turn chat re-evaluates the last reply and at most one block before it).
        """
        ids = [int(t) for t in ids]
        batches = self.prompt_batches(len(ids))
        match = self.common_prefix(ids)
        keep = 0
        big, small = self.n_ubatch, min(PREFILL_BLOCK, self.n_ubatch)
        for start, end in batches[:-1]:                 # the last batch is evaluated for its logits
            size_ok = (end - start == big and end <= self._rows_big) or \
                      (end - start == small and start >= self._rows_big and end <= self._rows_small)
            if end > match or not size_ok:
                break
            keep = end
        self.truncate(keep)
        logits = None
        for start, end in batches:
            if end <= keep:
                continue
            logits = self.eval(ids[start:end], logits_all=False)
            if end - start == big and self._rows_big == start:
                self._rows_big = self._rows_small = end
            elif end - start == small and self._rows_small == start:
                self._rows_small = end
        return logits[-1], keep

    def generate(self, ids: Sequence[int], temp: float = 0.0, top_k: int = 40, top_p: float = 0.95,
                 seed: Optional[int] = None, reset: bool = True) -> Iterator[int]:
        """Yield sampled token ids after the prompt ``ids``, forever (the caller stops, or the
        context fills: then ValueError).  With ``reset`` the prompt is evaluated by
        :meth:`prefill` (reusing the cached prefix, as llama-cpp-python does); otherwise ``ids``
        are appended to the cache."""
        from .sampling import sample

        rng = np.random.default_rng(seed)
        if reset:
            logits = self.prefill(ids)[0]
        else:
            logits = self.eval(ids, logits_all=False)[-1]
        while True:
            tid = sample(logits, temp, top_k, top_p, rng)
            yield tid
            logits = self.eval([tid], logits_all=False)[-1]

    # -- OpenAI-shaped completions (llama-cpp-python's Llama methods) --------
    def create_completion(self, prompt, max_tokens: Optional[int] = 16, stream: bool = False, **options):
        """Complete ``prompt`` (text or token ids): an OpenAI ``text_completion`` dict, or an
        iterator of chunk dicts with ``stream=True``.  Options, llama.cpp's names and defaults:
        temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0, repeat_last_n 64,
        presence_penalty, frequency_penalty, seed, stop, logit_bias, logprobs (int), echo,
        response_format / grammar (GBNF) / json_schema.  ``max_tokens`` None or -1: until the
        context is full.  The KV cache is reused for the prefix shared with the last request."""
        from .openai_format import prepare_completion, respond
        job = prepare_completion(self, prompt, max_tokens=max_tokens, **options)
        return respond(self, job, chat=False, stream=stream, model_name=self.name)

    def __call__(self, prompt, max_tokens: Optional[int] = 16, stream: bool = False, **options):
        """Shorthand for :meth:`create_completion`."""
        return self.create_completion(prompt, max_tokens=max_tokens, stream=stream, **options)

    def create_chat_completion(self, messages, max_tokens: Optional[int] = None, stream: bool = False, **options):
        """Answer ``messages`` (OpenAI's ``[{"role", "content"}]``) through the GGUF's chat
        template: a ``chat.completion`` dict, or ``chat.completion.chunk`` dicts with
        ``stream=True``.  Options as :meth:`create_completion`, with ``logprobs`` (bool) and
        ``top_logprobs`` (int) as in OpenAI's chat API."""
        from .openai_format import prepare_chat, respond
        job = prepare_chat(self, messages, max_tokens=max_tokens, **options)
        return respond(self, job, chat=True, stream=stream, model_name=self.name)

    @property
    def name(self) -> str:
        """The model's id in API responses: the file name without ``.gguf``."""
        base = os.path.basename(self.path)
        return base[:-5] if base.endswith(".gguf") else base

    # -- tokenizer ----------------------------------------------------------
    @property
    def tensors(self):
        return self.file.tensors

    @property
    def metadata(self) -> dict:
        return self.file.metadata

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_metadata(self.file.metadata)
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.detokenize(ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    # -- reporting ----------------------------------------------------------
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.file.tensors.values())

    def prepared_bytes(self) -> tuple[int, int]:
        """(private, mapped): bytes of anonymous memory the prepared weights take (repacked
        copies of the tensors whose type has a faster kernel layout; W_kb / W_vb split off an
        attn_kv_b), and bytes of the file mapped and used in place (their pages are the OS's
        page cache; the copied tensors' pages are released)."""
        from minillm_kernels import matmul

        private = copied = 0
        for t in self.file.tensors.values():
            if int(t.type) in matmul.REPACKED and t.name != "token_embd.weight":
                bs, ts, _ = matmul.block_geometry(matmul.REPACKED[int(t.type)])
                sbs, sts, _ = matmul.block_geometry(int(t.type))
                private += t.nbytes // sts * sbs // bs * ts
                copied += t.nbytes
        for lw in self.weights.layers:
            if lw.attn_k_b is None or lw.attn_v_b is None:      # split at load, about its size
                private += lw.attn_kv_b.nbytes
                copied += lw.attn_kv_b.nbytes
        return private, self.weight_bytes() - copied

    def type_mixture(self) -> dict[str, tuple[int, int]]:
        """Tensor type -> (tensor count, bytes)."""
        count, size = Counter(), Counter()
        for t in self.file.tensors.values():
            count[t.type.name] += 1
            size[t.type.name] += t.nbytes
        return {k: (count[k], size[k]) for k in sorted(size, key=size.get, reverse=True)}

    def kv_cache_bytes(self, n_ctx: int | None = None, cache_type: str | None = None) -> int:
        c = self.config
        row = cache_row_bytes(cache_type or self.cache_type, c.kv_latent_dim)
        return c.n_layer * (n_ctx or self.n_ctx) * row

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({os.path.basename(self.path)!r}, {c.n_layer} layers, n_embd {c.n_embd}, "
                f"{c.n_expert} experts, {self.weight_bytes() / 1e9:.2f} GB, n_ctx {self.n_ctx}, "
                f"{self.cache_type} cache, n_past {self.n_past})")


def load(path: str | os.PathLike, **options) -> Model:
    """Open a DeepSeek2 GGUF file and prepare it for evaluation (see :class:`Model` for the
    options).  Raises :class:`minillm.GGUFError` on any problem with the file."""
    return Model(path, **options)


__all__ = ["Model", "load", "GGUFError"]
