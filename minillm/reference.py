"""The DeepSeek2 forward pass in plain numpy: the oracle every fast kernel is checked against.

Read top to bottom it is the model's definition, one equation per line, for a
sequence of token ids at positions 0..T-1 (T tokens, H heads, R = kv_lora_rank):

    x      = E[ids]                                       token embeddings
    for each layer:
      h    = RMSNorm(x) * w_attn_norm
      q    = h W_q            (or  RMSNorm(h W_q_a) W_q_b  with a q LoRA)   -> [T, H, nope + rope]
      c,kp = h W_kv_a_mqa                                 latent [T, R] and shared k_pe [T, rope]
      c    = RMSNorm(c) * w_kv_a_norm
      q_pe, k_pe = RoPE(q[..., nope:]), RoPE(kp)          YaRN rope, adjacent pairs (ggml NORM mode)
      k_nope, v  = per head: c W_kb[h], c W_vb[h]         from attn_kv_b rows [k_nope | v] per head
      k    = [k_nope | k_pe]  (k_pe shared by all heads),  q = [q_nope | q_pe]
      o    = softmax(q k^T * kq_scale + causal mask) v    kq_scale = mscale^2 / sqrt(nope + rope)
      x    = x + o W_o
      h    = RMSNorm(x) * w_ffn_norm
      x    = x + FFN(h)     dense SwiGLU in the leading layers, else
                            sum_{e in top-k} w_e SwiGLU_e(h) + SwiGLU_shared(h)
    logits = (RMSNorm(x) * w_out_norm) W_out

Facts of ggml/llama.cpp this follows (not of the paper):
  * RoPE: ggml's ``rope_yarn`` mixes interpolated and extrapolated angles with a linear
    ramp between the YaRN correction dims (beta_fast 32, beta_slow 1, n_ctx_orig) and
    multiplies cos/sin by (1 + 0.1 ln(1/freq_scale)); llama.cpp's deepseek2 graph passes
    attn_factor = 1/(1 + 0.1 ln(1/freq_scale)), which cancels it: q_pe/k_pe are pure
    rotations.  The YaRN magnitude correction goes into the score scale instead:
    kq_scale = mscale^2 / sqrt(key_length), mscale = 1 + yarn_log_multiplier ln(1/freq_scale).
  * MoE routing: F32 router logits -> softmax or sigmoid over all experts ->
    (+ exp_probs_b, for selection only) -> top-k (group-limited when the file asks) ->
    weights are the unbiased probabilities of the chosen experts -> normalized when
    expert_weights_norm -> times expert_weights_scale.

Everything is float32; the default plain-float mode is the mathematical definition.  The pieces are plain functions that kernel tests can reuse:
:func:`rms_norm`, :func:`rope` (:func:`rope_cos_sin`, :func:`apply_rope`,
:func:`deepseek2_rope_params`), :func:`causal_attention`, :func:`route_experts`,
:func:`swiglu_ffn`, :func:`quantize_activations_like_ik`, :func:`logit_distance`.
``ReferenceModel(path, quantize_activations=True)`` additionally emulates the rounding
ik_llama.cpp applies around each quantized-weight matmul: activations to 8-bit blocks
(:func:`quantize_activations_like_ik`) and, for batches of many rows, the 8-bit repacked
weights ik multiplies instead of the file's (:func:`ik_repacked_weight`); ``f16_kv=True``
rounds K and V to f16 as ik's f16 cache does on its plain (mla=0) path.  Small configs only:
this is written to be read, not to be fast.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from .config import GATING_SIGMOID, GATING_SOFTMAX, DeepSeek2Config, config_from_metadata
from .errors import GGUFError
from .gguf_file import GGUFFile, Tensor
from .weights import LayerWeights, ModelWeights, load_weights

# ----------------------------------------------------------------------------------------
# Elementary operations
# ----------------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    x = x.astype(np.float32, copy=False)
    mean_sq = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(mean_sq + eps)).astype(np.float32)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def swiglu_ffn(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """down(silu(x gate^T) * (x up^T)); weights in numpy order [n_out, n_in]."""
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


# ----------------------------------------------------------------------------------------
# RoPE (ggml's rope_yarn, NORM mode: adjacent pairs)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeParams:
    """The arguments llama.cpp hands to ggml_rope_ext."""

    n_dims: int
    freq_base: float
    freq_scale: float     # 1 / scaling factor
    ext_factor: float     # 1 for YaRN, 0 otherwise
    attn_factor: float    # magnitude applied to cos/sin (before ggml's YaRN mscale)
    beta_fast: float
    beta_slow: float
    n_ctx_orig: int


def yarn_corr_dims(p: RopeParams) -> tuple[float, float]:
    """First and last pair dimension of YaRN's interpolation ramp (ggml_rope_yarn_corr_dims).

    corr_dim(beta) = n_dims ln(n_ctx_orig / (2 pi beta)) / (2 ln base) is the dimension whose
    wavelength fits ``beta`` times into the original context.  Computed in float32 as ggml does.
    """
    f32 = np.float32

    def corr_dim(beta: float) -> np.float32:
        return f32(p.n_dims) * np.log(f32(p.n_ctx_orig) / (f32(beta) * f32(2) * f32(math.pi))) / (
            f32(2) * np.log(f32(p.freq_base)))

    low = max(0.0, math.floor(corr_dim(p.beta_fast)))
    high = min(p.n_dims - 1.0, math.ceil(corr_dim(p.beta_slow)))
    return float(low), float(high)


def rope_cos_sin(positions: np.ndarray, p: RopeParams) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [len(positions), n_dims/2] of ggml's YaRN rope.

    theta_i = pos * base^(-2i/n_dims) ("extrapolated"); the interpolated angle is
    freq_scale * theta_i; YaRN blends them with ramp(i) = 1 - clamp((i - low)/(high - low), 0, 1):
    fast-rotating dims (small i) keep their angle, slow ones are interpolated.
    """
    i = np.arange(p.n_dims // 2, dtype=np.float64)
    theta_extrap = np.asarray(positions, dtype=np.float64)[:, None] * p.freq_base ** (-2.0 * i / p.n_dims)
    theta = p.freq_scale * theta_extrap
    mscale = p.attn_factor
    if p.ext_factor != 0.0:
        low, high = yarn_corr_dims(p)
        ramp = (1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)) * p.ext_factor
        theta = theta * (1.0 - ramp) + theta_extrap * ramp
        mscale *= 1.0 + 0.1 * math.log(1.0 / p.freq_scale)
    return (np.cos(theta) * mscale).astype(np.float32), (np.sin(theta) * mscale).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the last axis by the angle of row t.

    ``x`` is [T, ..., n_dims]; ``cos``/``sin`` are [T, n_dims/2] (broadcast over the middle axes).
    """
    shape = (cos.shape[0],) + (1,) * (x.ndim - 2) + (cos.shape[1],)
    c, s = cos.reshape(shape), sin.reshape(shape)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x, dtype=np.float32)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def rope(x: np.ndarray, positions: np.ndarray, p: RopeParams) -> np.ndarray:
    cos, sin = rope_cos_sin(positions, p)
    return apply_rope(x, cos, sin)


def deepseek2_rope_params(c: DeepSeek2Config) -> RopeParams:
    """What llama.cpp's (and ik_llama.cpp's) deepseek2 graph passes to ggml_rope_ext."""
    freq_scale = c.rope_freq_scale if c.rope_scaling_type != "none" else 1.0
    return RopeParams(
        n_dims=c.qk_rope_head_dim,
        freq_base=c.rope_freq_base,
        freq_scale=freq_scale,
        ext_factor=1.0 if c.rope_scaling_type == "yarn" else 0.0,
        # cancels ggml's YaRN magnitude factor (1 + 0.1 ln(1/freq_scale)): a pure rotation
        attn_factor=1.0 / (1.0 + 0.1 * math.log(1.0 / freq_scale)),
        beta_fast=c.rope_yarn_beta_fast,
        beta_slow=c.rope_yarn_beta_slow,
        n_ctx_orig=c.rope_orig_ctx,
    )


def deepseek2_kq_scale(c: DeepSeek2Config) -> float:
    """mscale^2 / sqrt(key_length), mscale = 1 + yarn_log_multiplier ln(1/freq_scale).

    llama.cpp computes mscale from freq_scale whatever the scaling type, so this equals
    ``DeepSeek2Config.kq_scale`` for the YaRN and unscaled files that exist.
    """
    freq_scale = c.rope_freq_scale if c.rope_scaling_type != "none" else 1.0
    mscale = 1.0 + c.rope_yarn_log_mul * math.log(1.0 / freq_scale)
    return mscale * mscale / math.sqrt(c.qk_head_dim)


# ----------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """softmax(q k^T * scale, masked to j <= i) v, per head.

    q, k: [T, H, Dk]; v: [T, H, Dv] -> [T, H, Dv].  Query i sits at position i.
    """
    n = q.shape[0]
    qh, kh, vh = (np.ascontiguousarray(a.transpose(1, 0, 2), dtype=np.float32) for a in (q, k, v))
    scores = (qh @ kh.transpose(0, 2, 1)) * np.float32(scale)                  # [H, T, T]
    scores = np.where(np.tri(n, dtype=bool)[None], scores, -np.inf)
    return (softmax(scores, axis=-1) @ vh).transpose(1, 0, 2)


# ----------------------------------------------------------------------------------------
# MoE routing
# ----------------------------------------------------------------------------------------


@dataclass
class Routing:
    experts: np.ndarray        # [T, k] int: chosen experts, best first
    weights: np.ndarray        # [T, k] float32: their mixing weights
    margin: np.ndarray         # [T] float32: selection score of the k-th minus the (k+1)-th choice


def route_experts(logits: np.ndarray, n_used: int, gating: int = GATING_SOFTMAX,
                  bias: Optional[np.ndarray] = None, norm: bool = False, scale: float = 1.0,
                  n_group: int = 0, n_group_used: int = 0) -> Routing:
    """Choose ``n_used`` experts per token from router ``logits`` [T, n_expert].

    probs = softmax(logits) or sigmoid(logits); selection uses probs + bias (bias: DeepSeek-V3's
    exp_probs_b, which never enters the weights); with expert groups only the
    ``n_group_used`` groups with the highest sum of their two best selection scores compete
    (DeepSeek-V3's group-limited routing); weights = probs of the chosen experts, divided by
    their sum when ``norm``, times ``scale``.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if gating == GATING_SOFTMAX:
        probs = softmax(logits)
    elif gating == GATING_SIGMOID:
        probs = sigmoid(logits)
    else:
        raise ValueError(f"unknown gating function {gating}")
    select = probs + bias if bias is not None else probs
    if n_group and n_group_used < n_group:
        n_tok, n_exp = select.shape
        grouped = select.reshape(n_tok, n_group, n_exp // n_group)
        group_score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)            # [T, n_group]
        keep = np.argsort(-group_score, axis=-1, kind="stable")[:, :n_group_used]
        mask = np.zeros((n_tok, n_group), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        select = np.where(np.repeat(mask, n_exp // n_group, axis=-1), select, -np.inf)
    order = np.argsort(-select, axis=-1, kind="stable")
    experts = order[:, :n_used]
    ranked = np.take_along_axis(select, order[:, :n_used + 1], axis=-1)
    margin = (ranked[:, n_used - 1] - ranked[:, n_used]) if ranked.shape[1] > n_used else \
        np.full(len(ranked), np.inf, dtype=np.float32)
    weights = np.take_along_axis(probs, experts, axis=-1)
    if norm:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    weights = (weights * np.float32(scale)).astype(np.float32)
    return Routing(experts, weights, margin.astype(np.float32))


# ----------------------------------------------------------------------------------------
# ggml's activation quantization (emulated)
# ----------------------------------------------------------------------------------------

# ik_llama.cpp (AVX2 build, ggml.c type_traits vec_dot_type and iqk_mul_mat) quantizes the
# activations of a matmul by the weight type:
#   Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K -> Q8_2_X4: blocks of 32 int8, scale amax/127
#                                                rounded to bf16
#   Q2_K, Q3_K, IQ1_S                          -> Q8_K: blocks of 256 int8, float scale amax/127
#   F32, F16, BF16                             -> float activations, no rounding
_Q8_BLOCK32 = frozenset({T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K})
_Q8_BLOCK256 = frozenset({T.Q2_K, T.Q3_K, T.IQ1_S})


def _round_to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000     # round to nearest even
    return rounded.astype(np.uint32).view(np.float32)


def quantize_q8_blocks(x: np.ndarray, block: int, bf16_scale: bool) -> np.ndarray:
    """Round x (last axis a multiple of ``block``) to int8 blocks and back: q = rint(x/d), d = amax/127."""
    shape = x.shape
    xb = x.reshape(-1, block).astype(np.float32)
    d = np.max(np.abs(xb), axis=1, keepdims=True) / np.float32(127)
    if bf16_scale:
        d = _round_to_bf16(d)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(xb * inv), -128, 127)
    return (q * d).astype(np.float32).reshape(shape)


def quantize_activations_like_ik(x: np.ndarray, weight_type: T) -> np.ndarray:
    """The activation rounding ik_llama.cpp applies before a matmul with a ``weight_type`` weight."""
    n = x.shape[-1]
    if weight_type in _Q8_BLOCK32 and n % 32 == 0:
        return quantize_q8_blocks(x, 32, bf16_scale=True)
    if weight_type in _Q8_BLOCK256 and n % 256 == 0:
        return quantize_q8_blocks(x, 256, bf16_scale=False)
    return x


# For batches of many rows ik_llama.cpp does not multiply some weight types directly but first
# converts ("repacks") them to an 8-bit form (iqk_mul_mat.cpp, is_dequant_better and the
# iqk_convert_* functions); for these types the conversion rounds, so the weights it multiplies
# differ slightly from the file's.  Types not listed (Q8_0, Q4_0, Q5_0, IQ4_NL) convert exactly.
# type -> minimum number of activation rows for which ik converts
IK_REPACK_MIN_ROWS = {T.Q2_K: 32, T.Q4_K: 32, T.Q5_K: 32, T.Q6_K: 64, T.IQ1_S: 32}


def _f16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def _k_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit sub-block scales and mins of Q4_K/Q5_K blocks (bytes 4..15), [..., 8] each."""
    s = raw[..., 4:16].astype(np.int32)
    sc = np.empty(s.shape[:-1] + (8,), np.int32)
    mn = np.empty_like(sc)
    sc[..., :4], mn[..., :4] = s[..., 0:4] & 63, s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def ik_repacked_weight(t: Tensor, w: np.ndarray) -> np.ndarray:
    """The weights ik_llama.cpp actually multiplies after converting ``t`` for a large batch.

    ``w`` is ``t`` dequantized (numpy order).  Block layouts are ggml's (ggml-common.h);
    the conversions follow ik's iqk_convert_* functions:
      Q4_K, Q5_K -> Q8_1: per 32-block, scale d*sc and offset dmin*m rounded to fp16;
      Q6_K -> Q8_0: per 32-block, the integers sc*q rescaled to +-127, scale in fp16;
      IQ1_S -> Q8_K: per 256-block, the integers ls*(8g+-1) rescaled to +-126 when they exceed it;
      Q2_K -> Q8_K: per 256-block, the values requantized to +-127 with an fp16 scale.
    """
    n = t.ne[0]
    nb = n // 256
    raw = t.raw.reshape(-1, nb, t.row_bytes // nb)        # [rows, blocks, block bytes]
    f32 = np.float32
    if t.type in (T.Q4_K, T.Q5_K):
        d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(f32)
        dmin = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(f32)
        sc, mn = _k_scales(raw)
        a = d[..., None] * sc.astype(f32)                  # [rows, blocks, 8]
        b = dmin[..., None] * mn.astype(f32)
        wb = w.reshape(-1, nb, 8, 32)
        q = np.rint(np.divide(wb + b[..., None], a[..., None], out=np.zeros_like(wb), where=a[..., None] > 0))
        out = _f16(a)[..., None] * q - _f16(b)[..., None]
    elif t.type == T.Q6_K:
        d = raw[..., 208:210].copy().view(np.float16)[..., 0].astype(f32)
        iv = np.rint(np.divide(w.reshape(-1, nb, 8, 32), d[..., None, None],
                               out=np.zeros(raw.shape[:2] + (8, 32), f32), where=d[..., None, None] != 0))
        mx = np.abs(iv).max(axis=-1, keepdims=True) / f32(127)
        inv = np.divide(f32(1), mx, out=np.zeros_like(mx), where=mx > 1e-9)
        out = _f16(d[..., None, None] * mx) * np.clip(np.rint(iv * inv), -128, 127)
    elif t.type == T.IQ1_S:
        d = f32(0.125) * raw[..., 0:2].copy().view(np.float16)[..., 0].astype(f32)
        iv = np.rint(np.divide(w.reshape(-1, nb, 256), d[..., None],
                               out=np.zeros(raw.shape[:2] + (256,), f32), where=d[..., None] != 0))
        dnew = np.abs(iv).max(axis=-1, keepdims=True) * f32(1.0 / 126)
        scaled = dnew >= 1
        dnew = np.where(scaled, dnew, f32(1))
        ints = np.where(scaled, np.clip(np.rint(iv * (f32(1) / dnew)), -128, 127), iv)
        out = _f16(d[..., None] * dnew) * ints
    elif t.type == T.Q2_K:
        wb = w.reshape(-1, nb, 256)
        dd = np.abs(wb).max(axis=-1, keepdims=True) / f32(127)
        inv = np.divide(f32(1), dd, out=np.zeros_like(dd), where=dd > 0)
        out = _f16(dd) * np.clip(np.rint(wb * inv), -128, 127)
    else:
        return w
    return out.astype(f32).reshape(w.shape)


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


@dataclass
class LayerTrace:
    """Per-layer intermediate results kept by :meth:`ReferenceModel.eval` when asked."""

    routing: Optional[Routing] = None          # this model's own choice at this layer
    used_experts: Optional[np.ndarray] = None  # the experts actually evaluated (forced or own)
    attn_out: Optional[np.ndarray] = None      # [T, n_embd] attention block output (before the residual add)
    ffn_out: Optional[np.ndarray] = None       # [T, n_embd] FFN block output (before the residual add)
    hidden: Optional[np.ndarray] = None        # [T, n_embd] residual stream after the layer


class ReferenceModel:
    """Evaluate a DeepSeek2 GGUF file in numpy float32: ``eval(ids) -> [len(ids), n_vocab]``.

    ``kv_source`` picks the decompression weights when a file has both forms:
    "auto" (attn_kv_b when present, else attn_k_b/attn_v_b), "kv_b" or "k_b_v_b".
    ``quantize_activations`` / ``f16_kv`` switch on the emulation of ik_llama.cpp's roundings
    (module docstring).  Dequantized weights are cached per instance (and shared with the
    views :meth:`with_options` returns).
    """

    def __init__(self, path: str | os.PathLike, quantize_activations: bool = False,
                 kv_source: str = "auto", f16_kv: bool = False):
        self.file = GGUFFile(path)
        token_embd = self.file.tensors.get("token_embd.weight")
        self.config: DeepSeek2Config = config_from_metadata(
            self.file.metadata, n_vocab_fallback=token_embd.ne[1] if token_embd else 0)
        self.weights: ModelWeights = load_weights(self.file, self.config)
        if kv_source not in ("auto", "kv_b", "k_b_v_b"):
            raise ValueError(f"kv_source must be 'auto', 'kv_b' or 'k_b_v_b', not {kv_source!r}")
        self.kv_source = kv_source
        self.quantize_activations = quantize_activations
        self.f16_kv = f16_kv
        self.rope_params = deepseek2_rope_params(self.config)
        self.kq_scale = deepseek2_kq_scale(self.config)
        self._cache: dict[str, np.ndarray] = {}
        self.trace: list[LayerTrace] = []

    def with_options(self, quantize_activations: Optional[bool] = None,
                     kv_source: Optional[str] = None, f16_kv: Optional[bool] = None) -> "ReferenceModel":
        """A view of the same file with other options, sharing the dequantized-weight cache."""
        other = object.__new__(ReferenceModel)
        other.__dict__.update(self.__dict__)
        if quantize_activations is not None:
            other.quantize_activations = quantize_activations
        if f16_kv is not None:
            other.f16_kv = f16_kv
        if kv_source is not None:
            if kv_source not in ("auto", "kv_b", "k_b_v_b"):
                raise ValueError(f"kv_source must be 'auto', 'kv_b' or 'k_b_v_b', not {kv_source!r}")
            other.kv_source = kv_source
        other.trace = []
        return other

    def matmul_weights(self) -> list[Tensor]:
        """The tensors this model multiplies activations with (norms, router, embedding lookup excluded)."""
        out = [self.weights.output]
        skip = ("attn_norm", "attn_kv_a_norm", "attn_q_a_norm", "ffn_norm", "ffn_gate_inp", "exp_probs_b")
        for lw in self.weights.layers:
            out += [t for name, t in vars(lw).items() if t is not None and name not in skip]
        return out

    def has_quantized_matmuls(self) -> bool:
        """Whether any matmul weight is of a type whose activations ik quantizes."""
        return any(t.type in _Q8_BLOCK32 or t.type in _Q8_BLOCK256 for t in self.matmul_weights())

    # -- weights ------------------------------------------------------------------------
    def w(self, t: Tensor) -> np.ndarray:
        """Dequantized float32 weight in numpy order (reversed ne), cached."""
        a = self._cache.get(t.name)
        if a is None:
            a = self._cache[t.name] = t.dequantize()
        return a

    def w_as_ik(self, t: Tensor, n_rows: int) -> np.ndarray:
        """The weight as ik multiplies it for ``n_rows`` activation rows (emulation mode only)."""
        if not self.quantize_activations or n_rows < IK_REPACK_MIN_ROWS.get(t.type, 1 << 62):
            return self.w(t)
        key = t.name + "#ik"
        a = self._cache.get(key)
        if a is None:
            a = self._cache[key] = ik_repacked_weight(t, self.w(t))
        return a

    def mm(self, x: np.ndarray, t: Tensor) -> np.ndarray:
        """x @ W^T for a 2-D weight ``t`` (ne [n_in, n_out]); x is [..., n_in]."""
        if self.quantize_activations:
            x = quantize_activations_like_ik(x, t.type)
            return x @ self.w_as_ik(t, int(np.prod(x.shape[:-1]))).T
        return x @ self.w(t).T

    def embed(self, ids: np.ndarray) -> np.ndarray:
        t = self.weights.token_embd
        return np.asarray(dequantize(t.raw[ids], t.type), dtype=np.float32).reshape(len(ids), t.ne[0])

    # -- blocks -------------------------------------------------------------------------
    def attention(self, lw: LayerWeights, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        c = self.config
        n_tok, H, nope, R = h.shape[0], c.n_head, c.qk_nope_head_dim, c.kv_lora_rank
        eps = c.rms_eps
        if c.q_lora_rank:
            q = self.mm(rms_norm(self.mm(h, lw.attn_q_a), self.w(lw.attn_q_a_norm), eps), lw.attn_q_b)
        else:
            q = self.mm(h, lw.attn_q)
        q = q.reshape(n_tok, H, c.qk_head_dim)
        kv_a = self.mm(h, lw.attn_kv_a_mqa)                              # [T, R + rope]
        latent = rms_norm(kv_a[:, :R], self.w(lw.attn_kv_a_norm), eps)   # c_kv: what MLA caches
        k_pe = rope(kv_a[:, None, R:], positions, self.rope_params)      # [T, 1, rope], shared by heads
        q_pe = rope(q[..., nope:], positions, self.rope_params)
        k_nope, v = self.decompress(lw, latent)                          # [T, H, nope], [T, H, v]
        q_full = np.concatenate([q[..., :nope], q_pe], axis=-1)
        k_full = np.concatenate([k_nope, np.broadcast_to(k_pe, (n_tok, H, c.qk_rope_head_dim))], axis=-1)
        if self.f16_kv:      # what ik stores in an f16 K/V cache (its mla=0 path)
            k_full, v = (a.astype(np.float16).astype(np.float32) for a in (k_full, v))
        o = causal_attention(q_full, k_full, v, self.kq_scale)
        return self.mm(o.reshape(n_tok, H * c.v_head_dim), lw.attn_output)

    def decompress(self, lw: LayerWeights, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-head K (no-rope part) and V from the latent: attn_kv_b, or attn_k_b/attn_v_b."""
        c = self.config
        n_tok, H, nope, R, dv = latent.shape[0], c.n_head, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim
        use_kv_b = lw.attn_kv_b is not None and self.kv_source != "k_b_v_b"
        if self.kv_source == "kv_b" and lw.attn_kv_b is None:
            raise GGUFError("kv_source='kv_b' but the file has no attn_kv_b")
        if use_kv_b:
            kv = self.mm(latent, lw.attn_kv_b).reshape(n_tok, H, nope + dv)  # rows per head: [k_nope | v]
            return kv[..., :nope], kv[..., nope:]
        if lw.attn_k_b is None or lw.attn_v_b is None:
            raise GGUFError("kv_source='k_b_v_b' but the file lacks attn_k_b/attn_v_b")
        # 3-D ne [nope, R, H] or ik's 2-D [nope, R*H]: numpy [H, R, nope]; V: [H, dv, R]
        k_b = self.w(lw.attn_k_b).reshape(H, R, nope)
        v_b = self.w(lw.attn_v_b).reshape(H, dv, R)
        xk = quantize_activations_like_ik(latent, lw.attn_k_b.type) if self.quantize_activations else latent
        xv = quantize_activations_like_ik(latent, lw.attn_v_b.type) if self.quantize_activations else latent
        k_nope = (xk @ k_b.transpose(1, 0, 2).reshape(R, H * nope)).reshape(n_tok, H, nope)
        v = (xv @ v_b.reshape(H * dv, R).T).reshape(n_tok, H, dv)
        return k_nope, v

    def dense_ffn(self, lw: LayerWeights, h: np.ndarray) -> np.ndarray:
        return self.mm(silu(self.mm(h, lw.ffn_gate)) * self.mm(h, lw.ffn_up), lw.ffn_down)

    def expert_weights(self, lw: LayerWeights, e: int, n_rows: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gate, up and down matrices of expert ``e`` (as ik multiplies them for ``n_rows`` rows
        in emulation mode)."""
        F = self.config.n_ff_exp
        if lw.ffn_gate_up_exps is not None:      # merged: per expert, gate rows then up rows
            gu = self.w_as_ik(lw.ffn_gate_up_exps, n_rows)[e]
            gate, up = gu[:F], gu[F:]
        else:
            gate, up = self.w_as_ik(lw.ffn_gate_exps, n_rows)[e], self.w_as_ik(lw.ffn_up_exps, n_rows)[e]
        return gate, up, self.w_as_ik(lw.ffn_down_exps, n_rows)[e]

    def moe_ffn(self, lw: LayerWeights, h: np.ndarray, trace: Optional[LayerTrace] = None,
                forced_experts: Optional[np.ndarray] = None) -> np.ndarray:
        c = self.config
        logits = h @ self.w(lw.ffn_gate_inp).T                           # router: F32, never quantized
        bias = self.w(lw.exp_probs_b) if lw.exp_probs_b is not None else None
        r = route_experts(logits, c.n_expert_used, c.expert_gating_func, bias, c.expert_weights_norm,
                          c.expert_weights_scale, c.expert_group_count, c.expert_group_used_count)
        if trace is not None:
            trace.routing = r
        if forced_experts is not None:           # replay another engine's choice, same weight rule
            r = _weights_for(logits, forced_experts, c, own=r)
        if trace is not None:
            trace.used_experts = r.experts
        gate_t = lw.ffn_gate_up_exps if lw.ffn_gate_up_exps is not None else lw.ffn_gate_exps
        out = np.zeros_like(h)
        for e in np.unique(r.experts):
            rows, slot = np.nonzero(r.experts == e)
            gate, up, down = self.expert_weights(lw, int(e), len(rows))
            x = h[rows]
            if self.quantize_activations:
                x = quantize_activations_like_ik(x, gate_t.type)
            y = silu(x @ gate.T) * (x @ up.T)
            if self.quantize_activations:
                y = quantize_activations_like_ik(y, lw.ffn_down_exps.type)
            out[rows] += r.weights[rows, slot][:, None] * (y @ down.T)
        if lw.ffn_gate_shexp is not None:
            out += self.mm(silu(self.mm(h, lw.ffn_gate_shexp)) * self.mm(h, lw.ffn_up_shexp), lw.ffn_down_shexp)
        return out

    # -- whole model --------------------------------------------------------------------
    def eval(self, ids, keep_trace: bool = False, forced_experts: Optional[dict] = None) -> np.ndarray:
        """Logits [len(ids), n_vocab] float32 for tokens at positions 0..len(ids)-1.

        ``forced_experts``: optional {layer: [T, k] expert ids} replacing this model's own
        top-k choice (the mixing weights still follow the routing rule); used to compare
        with an engine whose near-tie choices went the other way.  With ``keep_trace``,
        ``self.trace`` holds a :class:`LayerTrace` per layer afterwards (routing, block
        outputs, residual stream), for tests of single layers.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        c = self.config
        if ids.size == 0:
            raise ValueError("eval needs at least one token")
        if ids.min() < 0 or ids.max() >= c.n_vocab:
            raise ValueError(f"token ids must lie in [0, {c.n_vocab})")
        positions = np.arange(len(ids))
        self.trace = [LayerTrace() for _ in range(c.n_layer)] if keep_trace else []
        x = self.embed(ids)
        for il, lw in enumerate(self.weights.layers):
            attn = self.attention(lw, rms_norm(x, self.w(lw.attn_norm), c.rms_eps), positions)
            x = x + attn
            h = rms_norm(x, self.w(lw.ffn_norm), c.rms_eps)
            if c.is_moe_layer(il):
                forced = None if forced_experts is None else forced_experts.get(il)
                ffn = self.moe_ffn(lw, h, self.trace[il] if keep_trace else None, forced)
            else:
                ffn = self.dense_ffn(lw, h)
            x = x + ffn
            if keep_trace:
                self.trace[il].attn_out, self.trace[il].ffn_out, self.trace[il].hidden = attn, ffn, x
        x = rms_norm(x, self.w(self.weights.output_norm), c.rms_eps)
        return self.mm(x, self.weights.output).astype(np.float32)


def _weights_for(logits: np.ndarray, experts: np.ndarray, c: DeepSeek2Config, own: Routing) -> Routing:
    """Routing with given experts and the mixing weights the routing rule gives them."""
    experts = np.asarray(experts, dtype=np.int64)
    if experts.shape != own.experts.shape:
        raise ValueError(f"forced experts shape {experts.shape} != {own.experts.shape}")
    probs = softmax(logits) if c.expert_gating_func == GATING_SOFTMAX else sigmoid(logits)
    w = np.take_along_axis(probs, experts, axis=-1)
    if c.expert_weights_norm:
        w = w / w.sum(axis=-1, keepdims=True)
    return Routing(experts, (w * np.float32(c.expert_weights_scale)).astype(np.float32), own.margin)


# ----------------------------------------------------------------------------------------
# Comparing logits
# ----------------------------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass
class LogitDistance:
    """Per-position distances of logits ``x`` from target logits ``y`` (both [T, n_vocab])."""

    rel_rms: np.ndarray     # [T] sqrt(mean((x - y)^2) / mean(y^2))
    logprob: np.ndarray     # [T] max |log p_x - log p_y| over y's top tokens
    top1: np.ndarray        # [T] bool: argmax x == argmax y

    def summary(self, mask: Optional[np.ndarray] = None) -> dict:
        m = np.ones(len(self.rel_rms), bool) if mask is None else np.asarray(mask, bool)
        return dict(n=int(m.sum()),
                    rel_rms_median=float(np.median(self.rel_rms[m])), rel_rms_max=float(self.rel_rms[m].max()),
                    logprob_median=float(np.median(self.logprob[m])), logprob_max=float(self.logprob[m].max()),
                    top1=float(self.top1[m].mean()))


def logit_distance(x: np.ndarray, y: np.ndarray, n_top: int = 10) -> LogitDistance:
    """How far logits ``x`` are from the target ``y``, position by position."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    rel = np.sqrt(np.mean(np.square(x - y, dtype=np.float64), axis=-1) /
                  np.mean(np.square(y, dtype=np.float64), axis=-1))
    top = np.argsort(-y, axis=-1)[:, :n_top]
    lp = np.abs(np.take_along_axis(log_softmax(x), top, -1) - np.take_along_axis(log_softmax(y), top, -1))
    return LogitDistance(rel, lp.max(axis=-1), x.argmax(-1) == y.argmax(-1))
