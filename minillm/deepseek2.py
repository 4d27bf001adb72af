"""The DeepSeek2 forward pass on the kernels (MLA over a latent KV cache + MoE).

Read top to bottom it is the same model as ``minillm/reference.py`` (which defines it in
numpy), for a batch of N new tokens at positions pos0 .. pos0+N-1 after pos0 cached ones:

    x     = E[ids]                                             dequantize_rows
    for each layer:
      h     = RMSNorm(x) * w_attn_norm
      q     = h W_q   (or RMSNorm(h W_q_a) W_q_b)              matmul     [N, H, nope + rope]
      c, kp = h W_kv_a_mqa                                     matmul     [N, R], [N, rope]
      cache[pos0 .. pos0+N-1] = RMSNorm(c) | RoPE(kp)          kv_cache_store
      q_lat = (q_nope W_kb[h] for every head) | RoPE(q_pe)     matmul_batched (absorbed query)
      o_lat = softmax(q_lat cache^T * kq_scale, causal) c      mla_decode / mla_prefill
      x     = x + (o_lat W_vb[h] for every head) W_o            matmul_batched, matmul
      (prompts of mha_min_tokens() or more instead: k_nope | v = cache[:, :R] W_kv_b    matmul
       o = softmax(q k^T * kq_scale, causal) v per head, k = k_nope | k_pe             mha_prefill
       x = x + o W_o)
      h     = RMSNorm(x) * w_ffn_norm
      x     = x + FFN(h)       dense: one expert of moe_forward; MoE: router matmul, top-k,
                               moe_forward over the routed experts (+ one for the shared ones)
    logits = (RMSNorm(x) * w_out_norm) W_out                   matmul (last row only, unless asked)

Every weight operation is one kernel call for the whole batch and all heads/experts; the
per-token vector work (RMSNorm, RoPE, routing top-k) is in ``minillm_kernels.ops`` (in numpy
each of those cost more call overhead than work); residual adds and layout shuffles are numpy.
Weights are prepared once at load (:class:`Weight`): repacked to the kernels' faster layouts
(``matmul.REPACKED``), and a file that carries only ``attn_kv_b`` gets its absorbed
``W_kb`` / ``W_vb`` split off it (``W_kb`` transposed and, for a quantized ``attn_kv_b``,
re-quantized to Q8_0, as ik_llama.cpp does).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize as gguf_quantize

from minillm_kernels import attention, matmul, ops

from .config import DeepSeek2Config
from .kv_cache import KVCache
from .weights import LayerWeights, ModelWeights

# ----------------------------------------------------------------------------------------
# Weights as the kernels take them
# ----------------------------------------------------------------------------------------


@dataclass
class Weight:
    """Rows of one weight in a kernel type: ``raw`` uint8 [..., row_bytes], ``type`` the
    ggml (or internal repacked) type id."""

    raw: np.ndarray
    type: int


class WeightPreparer:
    """Turns mapped GGUF tensors into :class:`Weight` s, repacked where the kernels have a
    faster layout.  ``on_copied(t)`` is called once tensor t's bytes live in a private copy (so
    the caller can release its file pages at once: the peak memory stays one copy of the
    weights), ``on_tensor(t)`` after each tensor (progress)."""

    def __init__(self, n_threads: int, on_copied: Optional[Callable] = None,
                 on_tensor: Optional[Callable] = None):
        self.n_threads = n_threads
        self.on_copied = on_copied or (lambda t: None)
        self.on_tensor = on_tensor or (lambda t: None)

    def __call__(self, t, shape: Optional[tuple] = None) -> Weight:
        raw = t.raw if shape is None else t.raw.reshape(shape)
        w = self.fast(Weight(raw, int(t.type)))
        if w.raw is not raw:
            self.on_copied(t)
        self.on_tensor(t)
        return w

    def optional(self, t, shape=None) -> Optional[Weight]:
        return None if t is None else self(t, shape)

    def fast(self, w: Weight) -> Weight:
        """w in the kernels' faster layout (a private copy) when its type has one, else w."""
        if w.type in matmul.REPACKED:
            return Weight(*matmul.repack(w.raw, w.type, self.n_threads))
        return w


def split_kv_b(t, H: int, nope: int, dv: int, R: int) -> tuple[Weight, Weight]:
    """attn_kv_b (per head: nope rows of W_k then dv rows of W_v, each R wide) -> absorbed
    W_kb [H, R, nope] (rows nope wide) and W_vb [H, dv, R].  W_kb is the transpose, so it is
    dequantized, transposed and stored as Q8_0 (float files keep their type); W_vb is a copy
    of the rows as they are."""
    raw = t.raw.reshape(H, nope + dv, t.row_bytes)
    v_b = Weight(np.ascontiguousarray(raw[:, nope:]), int(t.type))
    k = t.dequantize().reshape(H, nope + dv, R)[:, :nope]                 # [H, nope, R]
    k_t = np.ascontiguousarray(k.transpose(0, 2, 1))                     # [H, R, nope]
    if t.type in (T.F32, T.F16, T.BF16):
        k_type = t.type
    else:
        k_type = T.Q8_0 if nope % 32 == 0 else T.F16
    k_raw = np.ascontiguousarray(gguf_quantize(k_t, k_type)).view(np.uint8).reshape(H, R, -1)
    return Weight(k_raw, int(k_type)), v_b


def join_kv_b(k_b, v_b, H: int, nope: int, dv: int, R: int) -> Weight:
    """attn_kv_b rebuilt from a file's attn_k_b [H, R, nope] and attn_v_b [H, dv, R] (llama.cpp's
    current conversion carries only those): per head nope rows of W_k, then dv rows of W_v, R
    wide, as Q8_0 (float files: F32), for the decompressed prompt attention."""
    k = k_b.dequantize().reshape(H, R, nope).transpose(0, 2, 1)
    v = v_b.dequantize().reshape(H, dv, R)
    kv = np.ascontiguousarray(np.concatenate([k, v], axis=1).reshape(H * (nope + dv), R), np.float32)
    if k_b.type in (T.F32, T.F16, T.BF16) or R % 32:
        return Weight(kv.view(np.uint8), int(T.F32))
    return Weight(np.ascontiguousarray(gguf_quantize(kv, T.Q8_0)).view(np.uint8), int(T.Q8_0))


def _norm_weight(t) -> np.ndarray:
    return np.ascontiguousarray(t.dequantize().reshape(-1), dtype=np.float32)


# ----------------------------------------------------------------------------------------
# RoPE angles (at load)
# ----------------------------------------------------------------------------------------


def rope_tables(c: DeepSeek2Config, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [n_ctx, rope/2] of the rotation llama.cpp's deepseek2 graph applies.

    Pair i turns by theta_i = pos * base^(-2i/d).  With YaRN, the slow pairs are
    interpolated (theta * freq_scale) and the fast ones keep theta, with a linear ramp between
    the pair indices where the original context holds beta_fast and beta_slow turns; the graph
    cancels ggml's YaRN magnitude factor, so this is a pure rotation (the magnitude correction
    is in kq_scale)."""
    d = c.qk_rope_head_dim
    yarn = c.rope_scaling_type == "yarn"
    scale = c.rope_freq_scale if c.rope_scaling_type != "none" else 1.0
    i = np.arange(d // 2, dtype=np.float64)
    theta = np.arange(n_ctx, dtype=np.float64)[:, None] * c.rope_freq_base ** (-2.0 * i / d)
    if yarn:
        # ggml computes these pair indices in float32
        def pair_of(beta: float) -> float:
            f = np.float32
            return float(f(d) * np.log(f(c.rope_orig_ctx) / (f(beta) * f(2 * math.pi)))
                         / (f(2) * np.log(f(c.rope_freq_base))))
        lo = max(0.0, math.floor(pair_of(c.rope_yarn_beta_fast)))
        hi = min(d - 1.0, math.ceil(pair_of(c.rope_yarn_beta_slow)))
        keep = 1.0 - np.clip((i - lo) / max(0.001, hi - lo), 0.0, 1.0)     # 1: extrapolate
        theta = theta * (scale * (1.0 - keep) + keep)
    else:
        theta = theta * scale
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------


# Prompts of at least this many tokens attend on decompressed rows (attention.mha_prefill), as
# ik_llama.cpp's -mla 3 does: keys 192 and values 128 wide instead of 576 and 512 (3.4x fewer
# FLOPs per token and row) for one GEMM per ubatch of every cached row through attn_kv_b.  At
# 512 tokens on Zen 4 (2 threads, f16 cache; attention plus the kv_b GEMM against mla_prefill)
# 1.5x faster at depth 0 and 1.7-1.8x at 2048-8192; at 256 tokens even at depth 8192; at 64
# tokens 2-3x slower at depth (the GEMM over every cached row dominates).  Since then the heads run
# on int16 rows (AVX2 and up), 1.7-1.9x faster again at 2048-8192, and whole prompts (the engine,
# IQ4_NL mixture) of 128 tokens are 1.13-1.16x faster decompressed at depths 1024-8192, of 192
# 1.17-1.39x, of 64 0.69-0.88x: the threshold went from 256 to 128.  The float32 k | v rows are
# transient: 16 KiB per cached row and layer (277 MB at 16k rows); their int16 copy, 10 KiB a row,
# stays in the attention kernels' arena between calls (170 MB at 16k rows).  The AMX level keeps the
# absorbed form: its tiles run the absorbed FLOPs at 1.6-2.5x the FMA peak (not measured against
# this path: no AMX CPU here).
MHA_MIN_TOKENS = 128
# Where the absorbed tiles multiply int16 rows too (attention.tile_int16: the 8-bit caches, and on
# AVX2 and up f16/bf16, 1.2-1.3x faster there than on float rows) they hold out longer: with an f16 cache
# on Zen 4 (engine, IQ4_NL mixture, 2 threads, depths 1024 / 4096 / 8192), absorbed over decompressed
# time was 1.05 / 0.83 / 0.78 for 128-token prompts, 1.07 / 1.01 / 0.96 for 192, 1.14 / 1.10 / 1.10
# for 256 and 1.24 / 1.32 for 384; with a q8_0 cache 0.98 / 1.00 / 1.02 for 128, 0.92 / 0.99 / 0.99
# for 192.
MHA_MIN_TOKENS_INT16 = 192


@functools.cache  # the ISA level is fixed at import: one kernel query per cache type, not per layer and step
def mha_min_tokens(cache_type: str) -> int:
    """Prompt tokens from which a batch attends on decompressed rows (off the AMX level)."""
    return MHA_MIN_TOKENS_INT16 if attention.tile_int16(cache_type) else MHA_MIN_TOKENS


class Attention:
    """MLA over one layer of the latent cache: absorbed for decode and short batches, on
    decompressed rows for long prompts."""

    def __init__(self, lw: LayerWeights, c: DeepSeek2Config, prep: WeightPreparer):
        self.c = c
        H, nope, R, dv = c.n_head, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim
        self.norm = _norm_weight(lw.attn_norm)
        self.q = prep.optional(lw.attn_q)
        self.q_a = prep.optional(lw.attn_q_a)
        self.q_a_norm = None if lw.attn_q_a_norm is None else _norm_weight(lw.attn_q_a_norm)
        self.q_b = prep.optional(lw.attn_q_b)
        self.kv_a = prep(lw.attn_kv_a_mqa)
        self.kv_a_norm = _norm_weight(lw.attn_kv_a_norm)
        if lw.attn_k_b is not None and lw.attn_v_b is not None:
            self.k_b = prep(lw.attn_k_b, (H, R, lw.attn_k_b.row_bytes))
            self.v_b = prep(lw.attn_v_b, (H, dv, lw.attn_v_b.row_bytes))
        else:
            # (attn_kv_b's file pages are kept, not dropped: long prompts multiply by it as it is)
            k_b, v_b = split_kv_b(lw.attn_kv_b, H, nope, dv, R)
            self.k_b, self.v_b = k_b, prep.fast(v_b)
        if lw.attn_kv_b is not None:
            self.kv_b = Weight(lw.attn_kv_b.raw, int(lw.attn_kv_b.type))
        else:
            self.kv_b = join_kv_b(lw.attn_k_b, lw.attn_v_b, H, nope, dv, R)
        self.output = prep(lw.attn_output)
        self.kq_scale = c.kq_scale

    def forward(self, x: np.ndarray, pos0: int, cache: np.ndarray, cache_type: str,
                rope_cs: tuple[np.ndarray, np.ndarray], nt: int) -> np.ndarray:
        c = self.c
        N, H, nope, rope_d, R, dv = x.shape[0], c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, \
            c.kv_lora_rank, c.v_head_dim
        eps = c.rms_eps
        cos, sin = rope_cs
        h = ops.rms_norm(x, self.norm, eps)
        if self.q is not None:
            q = matmul.matmul(self.q.raw, self.q.type, h, n_threads=nt)
        else:
            qa = ops.rms_norm(matmul.matmul(self.q_a.raw, self.q_a.type, h, n_threads=nt), self.q_a_norm, eps)
            q = matmul.matmul(self.q_b.raw, self.q_b.type, qa, n_threads=nt)
        q = q.reshape(N, H, nope + rope_d)
        kv = matmul.matmul(self.kv_a.raw, self.kv_a.type, h, n_threads=nt)       # [N, R + rope]
        rows = np.empty((N, R + rope_d), np.float32)
        ops.rms_norm(kv[:, :R], self.kv_a_norm, eps, out=rows[:, :R])
        ops.rope(kv[:, None, R:], cos, sin, rows[:, None, R:])
        attention.kv_cache_store(cache, cache_type, pos0, rows)
        if N >= mha_min_tokens(cache_type) and not attention.amx_on():
            return self.output_of(self.decompressed_attention(q, pos0, cache, cache_type, rope_cs, nt), nt)
        # absorbed query: q_nope W_kb for all heads in one batched call
        q_lat = np.empty((N, H, R + rope_d), np.float32)
        q_nope = np.ascontiguousarray(q[:, :, :nope].transpose(1, 0, 2))                   # [H, N, nope]
        q_lat[:, :, :R] = matmul.matmul_batched(self.k_b.raw, self.k_b.type, q_nope, n_threads=nt).transpose(1, 0, 2)
        ops.rope(q[:, :, nope:], cos, sin, q_lat[:, :, R:])
        o_lat = np.empty((N, H, R), np.float32)
        if N == 1:
            # kparallel at every depth: its result does not depend on the thread count
            attention.mla_decode(q_lat[0], cache, cache_type, pos0 + 1, self.kq_scale, o_lat[0], "kparallel", nt)
        else:
            attention.mla_prefill(q_lat, cache, cache_type, pos0, self.kq_scale, o_lat, nt)
        o = matmul.matmul_batched(self.v_b.raw, self.v_b.type, np.ascontiguousarray(o_lat.transpose(1, 0, 2)),
                                  n_threads=nt)                                           # [H, N, dv]
        return self.output_of(o.transpose(1, 0, 2), nt)

    def decompressed_attention(self, q: np.ndarray, pos0: int, cache: np.ndarray, cache_type: str,
                               rope_cs: tuple[np.ndarray, np.ndarray], nt: int) -> np.ndarray:
        """softmax(q k^T * kq_scale, causal) v per head, with k_nope | v = c W_kv_b for every cached
        row c and k_pe the rows' shared roped part: [N, H, dv]."""
        c = self.c
        N, H, nope, R, dv = q.shape[0], c.n_head, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim
        cos, sin = rope_cs
        rows = attention.kv_cache_load(cache, cache_type, 0, pos0 + N, R + c.qk_rope_head_dim)  # [n_kv, R + rope]
        kvb = matmul.matmul(self.kv_b.raw, self.kv_b.type, np.ascontiguousarray(rows[:, :R]), n_threads=nt)
        q_full = np.empty_like(q)
        q_full[:, :, :nope] = q[:, :, :nope]
        ops.rope(q[:, :, nope:], cos, sin, q_full[:, :, nope:])
        o = np.empty((N, H, dv), np.float32)
        attention.mha_prefill(q_full, kvb.reshape(-1, H, nope + dv), rows[:, R:], pos0, self.kq_scale, o, nt)
        return o

    def output_of(self, o: np.ndarray, nt: int) -> np.ndarray:
        """the attention output [N, H, dv] through W_o"""
        o = np.ascontiguousarray(o).reshape(o.shape[0], -1)
        return matmul.matmul(self.output.raw, self.output.type, o, n_threads=nt)


class FeedForward:
    """SwiGLU FFN(s) as moe_forward runs them: routed experts, or one always-on expert (a dense
    layer's FFN, or the shared experts)."""

    def __init__(self, gate: Weight, up: Optional[Weight], down: Weight, merged: bool = False):
        self.gate, self.up, self.down, self.merged = gate, up, down, merged

    @classmethod
    def single(cls, prep: WeightPreparer, gate, up, down) -> "FeedForward":
        """One FFN as an expert set of size one (rows [1, M, row_bytes])."""
        g, u, d = (prep(t, (1,) + t.raw.shape) for t in (gate, up, down))
        return cls(g, u, d)

    def __call__(self, h: np.ndarray, ids: np.ndarray, weights: np.ndarray, nt: int) -> np.ndarray:
        up = self.up
        return matmul.moe_forward(h, ids, weights, self.gate.raw, self.gate.type,
                                  None if self.merged else up.raw, self.gate.type if self.merged else up.type,
                                  self.down.raw, self.down.type, n_threads=nt, merged_gate_up=self.merged)


class MoE:
    def __init__(self, lw: LayerWeights, c: DeepSeek2Config, prep: WeightPreparer):
        self.c = c
        # the router multiplies float32 activations (F16 / BF16 router weights are widened)
        r = lw.ffn_gate_inp
        raw = r.raw if r.type == T.F32 else np.ascontiguousarray(r.dequantize(), np.float32).view(np.uint8)
        self.router = Weight(raw, int(T.F32))
        self.bias = None if lw.exp_probs_b is None else _norm_weight(lw.exp_probs_b)
        if lw.ffn_gate_up_exps is not None:
            self.experts = FeedForward(prep(lw.ffn_gate_up_exps), None, prep(lw.ffn_down_exps), merged=True)
        else:
            self.experts = FeedForward(prep(lw.ffn_gate_exps), prep(lw.ffn_up_exps), prep(lw.ffn_down_exps))
        self.shared = None
        self.trace: Optional[list] = None       # the chosen experts of each call, when recording
        if lw.ffn_gate_shexp is not None:
            self.shared = FeedForward.single(prep, lw.ffn_gate_shexp, lw.ffn_up_shexp, lw.ffn_down_shexp)

    def forward(self, h: np.ndarray, nt: int, only_expert: tuple) -> np.ndarray:
        logits = matmul.matmul(self.router.raw, self.router.type, h, n_threads=nt)
        c = self.c
        ids, weights = ops.route(logits, c.n_expert_used, c.expert_gating_func, self.bias, c.expert_weights_norm,
                                 c.expert_weights_scale, c.expert_group_count, c.expert_group_used_count)
        if self.trace is not None:
            self.trace.append(ids)
        out = self.experts(h, ids, weights, nt)
        if self.shared is not None:
            out += self.shared(h, *only_expert, nt)
        return out


class DecoderLayer:
    def __init__(self, il: int, lw: LayerWeights, c: DeepSeek2Config, prep: WeightPreparer):
        self.c = c
        self.attention = Attention(lw, c, prep)
        self.ffn_norm = _norm_weight(lw.ffn_norm)
        if c.is_moe_layer(il):
            self.moe, self.dense = MoE(lw, c, prep), None
        else:
            self.moe, self.dense = None, FeedForward.single(prep, lw.ffn_gate, lw.ffn_up, lw.ffn_down)

    def forward(self, x: np.ndarray, pos0: int, cache: np.ndarray, cache_type: str, rope_cs, nt: int,
                only_expert: tuple) -> np.ndarray:
        x = x + self.attention.forward(x, pos0, cache, cache_type, rope_cs, nt)
        h = ops.rms_norm(x, self.ffn_norm, self.c.rms_eps)
        x += self.moe.forward(h, nt, only_expert) if self.moe is not None else self.dense(h, *only_expert, nt)
        return x


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


class DeepSeek2:
    """The prepared weights of a DeepSeek2 file and its forward pass over a :class:`KVCache`."""

    def __init__(self, weights: ModelWeights, c: DeepSeek2Config, n_ctx: int, prep: WeightPreparer):
        self.c = c
        self.token_embd = Weight(weights.token_embd.raw, int(weights.token_embd.type))
        self.layers = [DecoderLayer(il, lw, c, prep) for il, lw in enumerate(weights.layers)]
        self.output_norm = _norm_weight(weights.output_norm)
        self.output = prep(weights.output) if weights.output is not weights.token_embd else self.token_embd
        self.cos, self.sin = rope_tables(c, n_ctx)

    def record_routing(self, on: bool = True) -> None:
        """Start (or stop) recording the experts each MoE layer chooses (for tests)."""
        for layer in self.layers:
            if layer.moe is not None:
                layer.moe.trace = [] if on else None

    def routing(self) -> dict[int, np.ndarray]:
        """{layer: [tokens, n_expert_used]} experts chosen since record_routing()."""
        return {il: np.concatenate(layer.moe.trace) for il, layer in enumerate(self.layers)
                if layer.moe is not None and layer.moe.trace}

    def forward(self, ids: np.ndarray, pos0: int, cache: KVCache, nt: int, logits_all: bool) -> np.ndarray:
        """Logits [N, n_vocab] (or [1, n_vocab], the last token's, unless logits_all) of the
        tokens ids [N] at positions pos0 .. pos0+N-1; their cache rows are written."""
        N = len(ids)
        x = matmul.dequantize_rows(self.token_embd.raw, self.token_embd.type, ids, n_threads=nt)
        rope_cs = (self.cos[pos0:pos0 + N], self.sin[pos0:pos0 + N])
        only_expert = (np.zeros((N, 1), np.int32), np.ones((N, 1), np.float32))  # ids, weights of a single FFN
        for il, layer in enumerate(self.layers):
            x = layer.forward(x, pos0, cache.buffers[il], cache.cache_type, rope_cs, nt, only_expert)
        if not logits_all:
            x = x[-1:]
        x = ops.rms_norm(x, self.output_norm, self.c.rms_eps)
        return matmul.matmul(self.output.raw, self.output.type, np.ascontiguousarray(x), n_threads=nt)


__all__ = ["DeepSeek2", "Weight", "WeightPreparer", "rope_tables"]
