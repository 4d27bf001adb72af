"""Quantize a model's float weights to the GGUF types of a mixture: llama-quantize's job.

``minillm quantize model-f16.gguf model-iq4_nl.gguf iq4_nl --imatrix imatrix.gguf``
reads every tensor of a float (F32/F16/BF16) DeepSeek2 file, picks each tensor's type
with the mixture rules of :mod:`minillm.synthetic` (ik_llama.cpp's choices for this
architecture, with its block-size fallbacks) and writes the quantized file with the
same metadata and vocabulary.

Quantizers:

* F16, BF16, Q8_0, Q4_0, Q5_0 through ``gguf.quants``; Q2_K..Q6_K round to nearest
  (:mod:`minillm.synthetic_blocks`).
* IQ4_NL (:func:`quantize_iq4_nl`): per 32-block, the scale that minimizes the
  importance-weighted squared error over a small search around max|x| / 127.
* IQ1_S (:func:`quantize_iq1_s`): per group of 8 the grid point, per 32-block a 3-bit
  scale and the sign of the 0.125 offset, per 256-block an f16 scale; alternating
  "best grid point for this scale" (a brute-force search over the 2048 points as two
  matrix products) and "best scale for these points".  Needs an importance matrix, as
  llama-quantize does: at 1.56 bits a weight, which inputs matter decides the result.

Importance weights follow llama.cpp's rule: w_j = imatrix_j * sqrt(sigma^2 + x_j^2)
(sigma^2: mean x^2 of the row, times 2), or x_j^2 without an imatrix.  Block layouts and
the IQ1_S grid and offset are facts of the ggml format (``ggml-common.h``, MIT,
the ggml authors); every result is decoded by ``gguf.quants`` in the tests.

The importance matrix file is llama.cpp's GGUF imatrix format: per weight tensor
``NAME.in_sum2`` (sum of squared inputs per input column, one row per expert) and
``NAME.counts`` (how many input rows were summed).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Callable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from .config import DeepSeek2Config, config_from_metadata
from .errors import GGUFError
from .gguf_file import GGUFFile
from .synthetic import FLOAT_ROLES, MIXTURES, PlannedTensor, plan_tensors, write_gguf
from .synthetic_blocks import IQ4NL_VALUES, QUANTIZABLE, quantize_rows

IQ1S_DELTA = 0.125                     # ggml's IQ1S_DELTA
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
NEEDS_IMATRIX = frozenset({T.IQ1_S})   # llama-quantize refuses these without one


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def importance_weights(x: np.ndarray, imatrix: Optional[np.ndarray]) -> np.ndarray:
    """Per-weight importance of rows ``x`` (n_rows, n_per_row)."""
    if imatrix is None:
        return x * x
    sigma2 = 2.0 * np.mean(x * x, axis=1, keepdims=True)
    return np.asarray(imatrix, np.float32)[None, :] * np.sqrt(sigma2 + x * x)


# ----------------------------------------------------------------------------------------
# IQ4_NL
# ----------------------------------------------------------------------------------------

def _nearest_iq4nl(v: np.ndarray) -> np.ndarray:
    mids = (IQ4NL_VALUES[1:] + IQ4NL_VALUES[:-1]) / 2
    return np.searchsorted(mids, v).astype(np.uint8)


def quantize_iq4_nl(x: np.ndarray, weights: np.ndarray, n_try: int = 7) -> np.ndarray:
    """Rows ``x`` (n, k*32) to IQ4_NL blocks (18 bytes: f16 scale, 16 bytes of nibbles)."""
    n_rows, n_per_row = x.shape
    xb = x.reshape(-1, 32).astype(np.float32)
    wb = weights.reshape(-1, 32).astype(np.float32) + 1e-12
    amax_at = np.abs(xb).argmax(1)
    vmax = np.take_along_axis(xb, amax_at[:, None], 1)[:, 0]
    best_err = np.full(len(xb), np.inf, np.float32)
    best_d = np.zeros(len(xb), np.float32)
    best_q = np.zeros(xb.shape, np.uint8)
    safe = np.where(vmax == 0, 1.0, vmax)
    for i_try in range(-n_try, n_try + 1):
        inv = (IQ4NL_VALUES[0] + 0.5 * i_try) / safe          # candidate 1/d: the extreme lands near -127
        q = _nearest_iq4nl(xb * inv[:, None])
        v = IQ4NL_VALUES[q]
        d = (wb * xb * v).sum(1) / np.maximum((wb * v * v).sum(1), 1e-30)   # best scale for these levels
        d = _f16(d)
        err = (wb * (xb - d[:, None] * v) ** 2).sum(1)
        better = err < best_err
        best_err[better], best_d[better], best_q[better] = err[better], d[better], q[better]
    best_d[vmax == 0] = 0.0
    qs = best_q[:, :16] | (best_q[:, 16:] << 4)
    out = np.concatenate([best_d.astype(np.float16).view(np.uint8).reshape(-1, 2), qs], axis=1)
    return out.reshape(n_rows, -1)


# ----------------------------------------------------------------------------------------
# IQ1_S
# ----------------------------------------------------------------------------------------

def iq1s_grid() -> np.ndarray:
    """The 2048 IQ1_S grid points (2048, 8) in {-1, 0, 1}, as gguf.quants holds them."""
    from gguf.quants import IQ1_S
    IQ1_S.init_grid()
    return IQ1_S.grid.reshape(2048, 8).astype(np.float32)


def _best_points(xw: np.ndarray, w: np.ndarray, scale: np.ndarray, shifted: np.ndarray,
                 shifted_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For groups of 8 (rows of xw = w*x and w) and their scale, the grid point minimizing
    sum w (x - scale (g + delta))^2, with that point's sum w x (g+delta) and sum w (g+delta)^2."""
    a = xw @ shifted.T                                   # (n_groups, 2048)
    b = w @ shifted_sq.T
    err = scale[:, None] * (scale[:, None] * b - 2.0 * a)
    idx = err.argmin(1)
    rows = np.arange(len(idx))
    return idx, a[rows, idx], b[rows, idx]


def quantize_iq1_s(x: np.ndarray, weights: np.ndarray, n_iter: int = 3, chunk: int = 4096) -> np.ndarray:
    """Rows ``x`` (n, k*256) to IQ1_S blocks (50 bytes: f16 d, 32 bytes of low index
    bits, 8 uint16 of high index bits / 3-bit scale / offset sign)."""
    grid = iq1s_grid()
    n_rows, n_per_row = x.shape
    xs = x.reshape(-1, 32).astype(np.float32)            # 32-blocks: 4 groups of 8
    ws = weights.reshape(-1, 32).astype(np.float32) + 1e-12
    n_sub = len(xs)
    idx = np.zeros((n_sub, 4), np.int64)
    scale = np.zeros(n_sub, np.float32)
    negative = np.zeros(n_sub, bool)
    for lo in range(0, n_sub, chunk):                    # chunks bound the (groups, 2048) products
        sl = slice(lo, min(lo + chunk, n_sub))
        xc, wc = xs[sl], ws[sl]
        xg, wg = xc.reshape(-1, 8), wc.reshape(-1, 8)
        best_err = np.full(len(xc), np.inf, np.float32)
        for sign in (1.0, -1.0):
            shifted = grid + sign * IQ1S_DELTA
            shifted_sq = shifted * shifted
            s = np.abs(xc).max(1) / (1.0 + IQ1S_DELTA)    # start: the largest weight on a +-1 point
            s = np.maximum(s, 1e-30)
            for _ in range(n_iter):
                i, a, b = _best_points(xg * wg, wg, np.repeat(s, 4), shifted, shifted_sq)
                a, b = a.reshape(-1, 4).sum(1), b.reshape(-1, 4).sum(1)
                s = np.where(b > 0, a / np.maximum(b, 1e-30), s)   # least-squares scale of these points
            s = np.maximum(s, 0.0)
            pts = shifted[i].reshape(-1, 32)
            err = (wc * (xc - s[:, None] * pts) ** 2).sum(1)
            better = err < best_err
            best_err[better] = err[better]
            idx[sl][better] = i.reshape(-1, 4)[better]
            scale[sl][better] = s[better]
            negative[sl][better] = sign < 0
    # Scales: d per 256-block (8 sub-blocks), odd multiples 1..15 of it per sub-block.
    sub_scale = scale.reshape(-1, 8)
    d = _f16(sub_scale.max(1) / 15.0)
    ratio = np.divide(sub_scale, d[:, None], out=np.zeros_like(sub_scale), where=d[:, None] > 0)
    code = np.clip(np.rint((ratio - 1.0) / 2.0), 0, 7).astype(np.uint16)
    # Points again for the scale the block will really have.
    eff = (d[:, None] * (2 * code + 1)).reshape(-1).astype(np.float32)
    for sign in (1.0, -1.0):
        sel = negative == (sign < 0)
        if sel.any():
            shifted = grid + sign * IQ1S_DELTA
            for lo in range(0, int(sel.sum()), chunk):
                rows = np.nonzero(sel)[0][lo:lo + chunk]
                xg, wg = xs[rows].reshape(-1, 8), ws[rows].reshape(-1, 8)
                i, _, _ = _best_points(xg * wg, wg, np.repeat(eff[rows], 4), shifted, shifted * shifted)
                idx[rows] = i.reshape(-1, 4)
    qs = (idx & 0xFF).astype(np.uint8).reshape(-1, 32)                      # 8 sub-blocks x 4 groups
    high = (idx >> 8).astype(np.uint16)                                      # 3 bits per group
    qh = (high[:, 0] | (high[:, 1] << 3) | (high[:, 2] << 6) | (high[:, 3] << 9)
          | (code.reshape(-1) << 12) | (negative.astype(np.uint16) << 15)).astype("<u2")
    out = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), qs,
                          qh.reshape(-1, 8).view(np.uint8)], axis=1)
    return out.reshape(n_rows, -1)


# ----------------------------------------------------------------------------------------
# tensors and files
# ----------------------------------------------------------------------------------------

def quantize_tensor(x: np.ndarray, qtype: T, imatrix: Optional[np.ndarray] = None) -> np.ndarray:
    """Float rows ``x`` (n_rows, n_per_row) as uint8 rows of ``qtype``.  ``imatrix``:
    importance per input column (n_per_row,), used by the types that search."""
    x = np.ascontiguousarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite weights")
    if x.shape[1] % GGML_QUANT_SIZES[qtype][0]:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {GGML_QUANT_SIZES[qtype][0]}")
    if qtype == T.IQ1_S:
        if imatrix is None:
            raise ValueError("IQ1_S needs an importance matrix")
        return quantize_iq1_s(x, importance_weights(x, imatrix))
    if qtype == T.IQ4_NL:
        return quantize_iq4_nl(x, importance_weights(x, imatrix))
    if qtype in QUANTIZABLE:
        return quantize_rows(x, qtype)
    raise ValueError(f"no quantizer for {qtype.name}")


def config_dict(c: DeepSeek2Config, name: str) -> dict:
    """A :class:`DeepSeek2Config` as the config dict :mod:`minillm.synthetic` writes from."""
    d = {k: v for k, v in asdict(c).items() if k != "extra"}
    d.update(name=name, context_length=c.n_ctx_train,
             rope_scaling_factor=c.rope_scaling_factor if c.rope_scaling_type == "yarn" else 0.0)
    return d


def _vocab_fields_of(f: GGUFFile) -> list[tuple]:
    """The file's tokenizer.* fields as (key, value, type, element type) for :func:`write_gguf`."""
    out = []
    for key in f.metadata:
        if not key.startswith("tokenizer."):
            continue
        out.append((key, f.metadata[key]) + f.value_type(key))
    return out


def read_imatrix(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{weight name: mean squared input per column, (n_mat, n_per_row)} from a GGUF imatrix."""
    f = GGUFFile(path)
    out = {}
    for name, t in f.tensors.items():
        if name.endswith(".in_sum2"):
            base = name[:-len(".in_sum2")]
            counts = f.tensors.get(base + ".counts")
            if counts is None:
                raise GGUFError(f"imatrix {path}: {name} has no {base}.counts")
            s = np.asarray(t.dequantize(), np.float32).reshape(-1, t.ne[0])
            n = np.asarray(counts.dequantize(), np.float32).reshape(-1, 1)
            out[base] = s / np.maximum(n, 1.0)
    return out


def write_imatrix(path: str | os.PathLike, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray],
                  dataset: str, chunk_count: int, chunk_size: int) -> None:
    """llama.cpp's GGUF imatrix: NAME.in_sum2 (n_mat, n_per_row) and NAME.counts (n_mat, 1)."""
    from gguf import GGUFWriter
    w = GGUFWriter(os.fspath(path), "imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(sums):
        s = np.asarray(sums[name], np.float32)
        w.add_tensor(name + ".in_sum2", s.reshape(-1, s.shape[-1]))
        w.add_tensor(name + ".counts", np.asarray(counts[name], np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_from_floats(path, c: dict, floats: Callable[[str], np.ndarray], mixture: str, vocab: list,
                      imatrix: Optional[dict[str, np.ndarray]] = None, progress: bool = False) -> str:
    """Write a DeepSeek2 GGUF (layout k_b_v_b_2d) whose tensors are ``floats(name)``
    (numpy order, float32) quantized to ``mixture``'s types."""
    plan = plan_tensors(c, mixture, "k_b_v_b_2d")
    missing = [t.name for t in plan if t.type in NEEDS_IMATRIX and t.name not in (imatrix or {})]
    if missing:
        raise ValueError(f"mixture {mixture} needs an importance matrix for {len(missing)} tensors "
                         f"(first: {missing[0]}); make one with tools/train_model.py imatrix")

    def tensor_bytes(t: PlannedTensor) -> np.ndarray:
        x = np.asarray(floats(t.name), np.float32)
        if x.size != math.prod(t.ne):
            raise ValueError(f"{t.name}: {x.size} values for shape {t.ne}")
        rows = x.reshape(-1, t.n_per_row)
        im = (imatrix or {}).get(t.name)
        if im is None or t.role in FLOAT_ROLES:
            return quantize_tensor(rows, t.type)
        per_matrix = rows.reshape(im.shape[0], -1, t.n_per_row) if im.shape[0] > 1 else rows[None]
        return np.concatenate([quantize_tensor(m, t.type, im[i]) for i, m in enumerate(per_matrix)])

    return write_gguf(path, c, mixture, "k_b_v_b_2d", plan, tensor_bytes, vocab, progress=progress)


def quantize_model(src, dst, mixture: str, imatrix_path=None, progress: bool = False) -> str:
    """Requantize a float DeepSeek2 GGUF ``src`` to ``mixture`` at ``dst``."""
    if mixture not in MIXTURES:
        raise ValueError(f"unknown mixture {mixture!r}; choose from {', '.join(MIXTURES)}")
    f = GGUFFile(src)
    token_embd = f.tensors.get("token_embd.weight")
    cfg = config_from_metadata(f.metadata, n_vocab_fallback=token_embd.ne[1] if token_embd else 0)
    for t in f.tensors.values():
        if t.type not in FLOAT_TYPES:
            raise GGUFError(f"{src}: {t.name} is {t.type.name}; quantize from an F32/F16/BF16 file")
    c = config_dict(cfg, f.metadata.get("general.name", "DeepSeek2"))
    imatrix = read_imatrix(imatrix_path) if imatrix_path else None

    def floats(name: str) -> np.ndarray:
        if name not in f.tensors:
            raise GGUFError(f"{src} has no tensor {name} (quantize expects ik's k_b_v_b_2d layout)")
        return f.tensors[name].dequantize()

    return write_from_floats(dst, c, floats, mixture, _vocab_fields_of(f), imatrix, progress)
