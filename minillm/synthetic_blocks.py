"""Random-but-valid quantized blocks, and simple float -> block quantizers.

Used by :mod:`minillm.synthetic` to fill synthetic GGUF files.  Two ways to
make a tensor's bytes:

* :func:`random_rows` draws the quant bits uniformly at random and sets the
  fp16 scale fields (``d``, ``dmin``, sub-block scales) so that the
  dequantized weights have a chosen standard deviation and about zero mean.
  It touches each byte a few times only, so the 9 GB DeepSeek-Lite file is
  written in minutes.
* :func:`quantize_rows` quantizes float values: through ``gguf.quants`` for
  F16, BF16, Q8_0, Q4_0, Q5_0, and through the small round-to-nearest
  quantizers below for Q2_K, Q4_K, Q5_K, Q6_K and IQ4_NL (no search for
  optimal scales: the goal is valid blocks close to the input, not quality).
  IQ1_S has no float quantizer here (its 2048-entry grid needs a search);
  callers generate IQ1_S blocks at random and use their dequantized values.

Block layouts follow ggml (``ggml-common.h``) as decoded by ``gguf.quants``;
the IQ4_NL value table is ggml's ``kvalues_iq4nl``.  Every result is checked
in the tests by dequantizing with ``gguf.quants``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

QK_K = 256
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                        dtype=np.float32)  # ggml kvalues_iq4nl

GGUF_QUANTIZABLE = frozenset((T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q5_0))
OWN_QUANTIZABLE = frozenset((T.Q2_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL))
QUANTIZABLE = GGUF_QUANTIZABLE | OWN_QUANTIZABLE


def row_bytes(qtype: T, n: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    if n % block:
        raise ValueError(f"row length {n} is not a multiple of the {qtype.name} block size {block}")
    return n // block * size


# --------------------------------------------------------------------------
# random blocks
# --------------------------------------------------------------------------

def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and mins per super-block into ggml's 12-byte Q4_K/Q5_K layout."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.empty(sc.shape[:-1] + (12,), np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 0x3F) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (mn[..., 0:4] & 0x3F) | ((mn[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0x0F) | ((mn[..., 4:8] & 0x0F) << 4)
    return out


def _random_blocks(qtype: T, n_blocks: int, rng: np.random.Generator, dscale: float) -> np.ndarray:
    """``n_blocks`` random blocks of ``qtype`` whose scale fields are multiplied by ``dscale``."""
    size = GGML_QUANT_SIZES[qtype][1]
    b = np.frombuffer(rng.bytes(n_blocks * size), np.uint8).reshape(n_blocks, size).copy()
    # per-block scale jitter within a factor sqrt(2), as real scales vary block to block
    d = (dscale * np.exp2(rng.random(n_blocks, dtype=np.float32) - 0.5)).astype(np.float32)
    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0, T.IQ4_NL, T.IQ1_S):
        b[:, 0:2] = _f16_bytes(d)           # d is the leading fp16 in these blocks
        if qtype == T.Q8_0:                 # keep int8 quants in [-127, 127] like ggml's quantizer
            q = b[:, 2:].view(np.int8)
            q[q == -128] = -127
    elif qtype == T.Q2_K:                   # scales[16] qs[64] d dmin; value = d*sc*q - dmin*m, q in 0..3
        sc = rng.integers(4, 11, size=(n_blocks, 16), dtype=np.uint8)
        m = np.rint(1.5 * sc).astype(np.uint8)            # m ≈ mean(q)*sc: zero-mean sub-blocks
        b[:, 0:16] = sc | (m << 4)
        b[:, 80:82] = _f16_bytes(d)
        b[:, 82:84] = _f16_bytes(d)
    elif qtype in (T.Q4_K, T.Q5_K):         # d dmin scales[12] (qh[32]) qs[128]
        nmax = 15 if qtype == T.Q4_K else 31
        sc = rng.integers(16, 64, size=(n_blocks, 8), dtype=np.uint8)
        ratio = 8.0 if qtype == T.Q4_K else 16.0          # dmin = ratio*d keeps m within 6 bits
        m = np.rint(nmax / 2 * sc / ratio).astype(np.uint8)
        b[:, 0:2] = _f16_bytes(d)
        b[:, 2:4] = _f16_bytes(d * ratio)
        b[:, 4:16] = _pack_k_scales(sc, m)
    elif qtype == T.Q6_K:                   # ql[128] qh[64] scales[16] (int8) d
        sc = rng.integers(4, 17, size=(n_blocks, 16)) * rng.choice(np.array([-1, 1]), size=(n_blocks, 16))
        b[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        b[:, 208:210] = _f16_bytes(d)
    else:
        raise ValueError(f"no random block generator for {qtype.name}")
    return b


@lru_cache(maxsize=None)
def _unit_std(qtype: T) -> float:
    """Std of dequantized random blocks made with dscale=1 (fixed calibration sample)."""
    blocks = _random_blocks(qtype, 4096, np.random.default_rng(1234), 1.0)
    return float(np.std(quants.dequantize(blocks, qtype)))


def random_rows(qtype: T, n_rows: int, n_per_row: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random valid rows of ``qtype`` (uint8, shape ``(n_rows, row_bytes)``) with about this std."""
    if qtype in (T.F32, T.F16, T.BF16):
        x = rng.standard_normal((n_rows, n_per_row), dtype=np.float32)
        x *= np.float32(std)
        return quantize_rows(x, qtype)
    block = GGML_QUANT_SIZES[qtype][0]
    nb = row_bytes(qtype, n_per_row) // GGML_QUANT_SIZES[qtype][1]
    blocks = _random_blocks(qtype, n_rows * nb, rng, std / _unit_std(qtype))
    assert block * nb == n_per_row
    return blocks.reshape(n_rows, -1)


# --------------------------------------------------------------------------
# float -> blocks
# --------------------------------------------------------------------------

def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(a.shape, b.shape), np.float32), where=b != 0)


def _affine_subblocks(x: np.ndarray, nmax: int, scale_max: int):
    """Scales/mins for ``value = d*sc*q - dmin*m`` over sub-blocks (last axis).

    ``x``: (n, n_sub, sub_len).  Returns d, dmin (n,), sc, m (n, n_sub) integers
    and q (n, n_sub, sub_len) in 0..nmax.
    """
    lo = np.minimum(x.min(-1), 0.0)
    hi = x.max(-1)
    scale = (hi - lo) / nmax
    minv = -lo
    d = _f16_round(scale.max(-1) / scale_max)
    dmin = _f16_round(minv.max(-1) / scale_max)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, scale_max)
    m = np.clip(np.rint(_safe_div(minv, dmin[:, None])), 0, scale_max)
    eff_scale = (d[:, None] * sc)[..., None]
    eff_min = (dmin[:, None] * m)[..., None]
    q = np.clip(np.rint(_safe_div(x + eff_min, eff_scale)), 0, nmax).astype(np.uint8)
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), q


def _quantize_q2_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _affine_subblocks(x.reshape(n, 16, 16), 3, 15)
    q = q.reshape(n, 2, 4, 32)              # element h*128 + s*32 + l -> byte h*32 + l, bits 2s
    qs = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([sc | (m << 4), qs, _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _quantize_q45_k(x: np.ndarray, qtype: T) -> np.ndarray:
    n = x.shape[0]
    nmax = 15 if qtype == T.Q4_K else 31
    d, dmin, sc, m, q = _affine_subblocks(x.reshape(n, 8, 32), nmax, 63)
    low = (q & 0x0F).reshape(n, 4, 2, 32)   # sub-blocks 2c, 2c+1 share bytes c*32..c*32+31
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    parts = [_f16_bytes(d), _f16_bytes(dmin), _pack_k_scales(sc, m)]
    if qtype == T.Q5_K:                     # bit i of qh[l]: high bit of sub-block i, element l
        high = (q >> 4) & 1
        qh = np.zeros((n, 32), np.uint8)
        for i in range(8):
            qh |= high[:, i, :] << i
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1)


def _quantize_q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    scale = np.abs(sub).max(-1) / 31.0
    d = _f16_round(scale.max(-1) / 127.0)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 127)
    eff = (d[:, None] * sc)[..., None]
    q = (np.clip(np.rint(_safe_div(sub, eff)), -32, 31) + 32).astype(np.uint8).reshape(n, 256)
    # element e = h*128 + s*64 + k*32 + l: low nibble in ql[h*64 + k*32 + l] at bit 4s,
    # high 2 bits in qh[h*32 + l] at bit 2*((e // 32) % 4)
    e = q.reshape(n, 2, 2, 2, 32)           # (h, s, k, l)
    lo = e & 0x0F
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)      # (h, group of 32 within the half, l)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=1)


def _quantize_iq4_nl(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    idx = np.abs(x).argmax(-1)
    vmax = np.take_along_axis(x, idx[:, None], -1)[:, 0]
    d = _f16_round(vmax / IQ4NL_VALUES[0])  # the largest magnitude maps onto -127
    mids = (IQ4NL_VALUES[1:] + IQ4NL_VALUES[:-1]) / 2
    q = np.searchsorted(mids, _safe_div(x, d[:, None])).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([_f16_bytes(d), qs], axis=1)


def quantize_rows(x: np.ndarray, qtype: T) -> np.ndarray:
    """Quantize float rows ``x`` (n_rows, n_per_row) to uint8 rows of ``qtype``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n_per_row = x.shape
    rb = row_bytes(qtype, n_per_row)
    if qtype == T.F32:
        return x.view(np.uint8).reshape(n_rows, rb)
    if qtype == T.BF16:   # round to nearest even, like gguf.quants (inputs are finite)
        u = x.view(np.uint32)
        return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16).view(np.uint8).reshape(n_rows, rb)
    if qtype in GGUF_QUANTIZABLE:
        out = quants.quantize(x, qtype)
        return out.view(np.uint8).reshape(n_rows, rb)
    block = GGML_QUANT_SIZES[qtype][0]
    blocks = x.reshape(-1, block)
    if qtype == T.Q2_K:
        out = _quantize_q2_k(blocks)
    elif qtype in (T.Q4_K, T.Q5_K):
        out = _quantize_q45_k(blocks, qtype)
    elif qtype == T.Q6_K:
        out = _quantize_q6_k(blocks)
    elif qtype == T.IQ4_NL:
        out = _quantize_iq4_nl(blocks)
    else:
        raise NotImplementedError(f"no float quantizer for {qtype.name}")
    return np.ascontiguousarray(out).reshape(n_rows, rb)


def dequantize_rows(raw: np.ndarray, qtype: T, n_per_row: int) -> np.ndarray:
    """Float32 (n_rows, n_per_row) values of uint8 rows, via ``gguf.quants``."""
    return np.asarray(quants.dequantize(raw, qtype), np.float32).reshape(-1, n_per_row)
