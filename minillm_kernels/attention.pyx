"""MLA attention over the latent KV cache (Python API of csrc/attention.c).

A layer's cache is a C-contiguous uint8 array of shape (n_ctx, row_bytes);
each row holds one token's normalized c_kv followed by its roped k_pe
(``width`` values, 576 for DeepSeek2), stored as f16, bf16, q8_0 or q8_KV
(see ``minillm.kv_cache``).  Queries come absorbed: per head
q_lat = (q_nope · W_kb) ‖ q_pe.  Outputs are the latent (c_kv-space) outputs,
``dv`` wide (kv_lora_rank); the caller applies attn_v_b.

Every function checks its arguments and raises ValueError before the C code
runs; the C code runs without the GIL.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint32_t

from minillm_kernels.attention_c cimport *

cnp.import_array()

CACHE_TYPES = {"f16": ATTN_F16, "bf16": ATTN_BF16, "q8_0": ATTN_Q8_0, "q8_KV": ATTN_Q8_KV}
STRATEGIES = ("auto", "heads", "kparallel")
MAX_WIDTH = 2048
MAX_THREADS = 256

# "auto" decode strategy: kparallel from KPARALLEL_MIN_KV[n_threads] cached tokens on, heads below.
# Measured with tools/bench_attention.py's small-depth sweep (fastest of >= 20 calls, H=16, width 576,
# 2-vCPU Xeon shared with other jobs, 2026-11-22), ms heads / kparallel:
#   1 thread : f16 16: 0.032/0.031  32: 0.050/0.039   q8_0 8: 0.034/0.035  16: 0.048/0.040
#              q8_KV 8: 0.038/0.033  16: 0.046/0.037   bf16 16: 0.044/0.039
#   2 threads: f16 32: 0.048/0.056  48: 0.060/0.059  64: 0.078/0.060   q8_0 48: 0.059/0.063  64: 0.076/0.069
#              bf16 32: 0.044/0.044  64: 0.072/0.057   q8_KV 48: 0.059/0.050
# and kparallel won at every depth 128..16384 for every type at 1 and 2 threads (bench table).
# With more threads each needs at least one 32-row chunk to be busy: 32 per thread (not measured).
KPARALLEL_MIN_KV = {1: 16, 2: 64}


def set_amx(bint on):
    """Switch the AMX score and value tiles of prompt processing (mla_prefill) on or off
    (minillm_kernels.kernels does it for the level "amx").  They split each operand into two bf16 parts and stay within a quarter of an f16 cache's
    own rounding of the float path (csrc/amx_attention.h)."""
    attn_set_amx(on)
    if on and not attn_get_amx():
        raise ValueError("this build has no AMX attention")


def amx_on():
    """True when mla_prefill's score and value GEMMs run on AMX tiles."""
    return bool(attn_get_amx())


def tile_int16(cache_type):
    """True when the tiles (kparallel decode, prompt processing off AMX) multiply this cache type's rows
    as int16 values on one scale per row (the 8-bit caches, and f16/bf16 on the SIMD levels, AVX2 and up)."""
    return bool(attn_tile_int16(_type_id(cache_type)))


def tile_int8_keys(cache_type):
    """True when the tiles off AMX compute this cache type's scores from its int8 values with vpdpbusd
    against an int8 query (the AVX-512 levels): q8_KV's rows as they lie, the query per head; q8_0's
    per 32-value block, the query per block."""
    return bool(attn_tile_int8_keys(_type_id(cache_type)))


def choose_strategy(int n_kv, int n_threads):
    """The strategy "auto" uses for a decode step over n_kv cached rows with n_threads threads."""
    threshold = KPARALLEL_MIN_KV.get(n_threads, 32 * n_threads)
    return "kparallel" if n_kv >= threshold else "heads"


def _type_id(cache_type):
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r}; choose one of {', '.join(CACHE_TYPES)}")
    return CACHE_TYPES[cache_type]


def _threads(n_threads):
    if not isinstance(n_threads, (int, np.integer)) or n_threads < 0 or n_threads > MAX_THREADS:
        raise ValueError(f"n_threads must be an int in 0..{MAX_THREADS} (0 = all), got {n_threads!r}")
    if n_threads == 0:
        import os
        n_threads = len(os.sched_getaffinity(0))
    return min(int(n_threads), MAX_THREADS)


def row_bytes(cache_type, int width):
    """Bytes of one cached row of ``width`` values."""
    cdef int t = _type_id(cache_type)
    if width <= 0 or width % 32 or width > MAX_WIDTH:
        raise ValueError(f"cache row width must be a positive multiple of 32 up to {MAX_WIDTH}, got {width}")
    return int(attn_row_bytes(t, width))


def _check_cache(cache, cache_type, int width):
    if not isinstance(cache, np.ndarray) or cache.dtype != np.uint8 or cache.ndim != 2:
        raise ValueError("cache layer buffer must be a 2-D numpy uint8 array (n_ctx, row_bytes)")
    if not cache.flags.c_contiguous:
        raise ValueError("cache layer buffer must be C-contiguous")
    rb = row_bytes(cache_type, width)
    if cache.shape[1] != rb:
        raise ValueError(f"cache rows are {cache.shape[1]} bytes but a {cache_type} row of {width} values "
                         f"takes {rb}")
    return cache.shape[0]


def _check_f32(a, name, int ndim, writable=False):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise ValueError(f"{name} must be a float32 numpy array")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")


cdef uint32_t _largest_magnitude(const uint32_t *bits, Py_ssize_t n) noexcept nogil:
    """the largest |x| of n floats as their bits (a max the compiler vectorizes)"""
    cdef uint32_t m = 0, v
    cdef Py_ssize_t i
    for i in range(n):
        v = bits[i] & 0x7fffffff
        m = v if v > m else m
    return m


def _check_finite(cnp.ndarray a, name):
    """a: a C-contiguous float32 array (_check_f32).  In C: numpy's isfinite(a).all() took ~6 us a
    decode call (a temporary array), a fifth of a shallow mla_decode"""
    if _largest_magnitude(<const uint32_t *>cnp.PyArray_DATA(a), cnp.PyArray_SIZE(a)) >= 0x7f800000:
        raise ValueError(f"{name} contains NaN or infinity")


def kv_cache_store(cache, cache_type, int pos, rows):
    """Quantize/convert ``rows`` (float32 [N, width]) into cache rows pos .. pos+N-1."""
    _check_f32(rows, "rows", 2)
    cdef int width = rows.shape[1], n = rows.shape[0]
    cdef int t = _type_id(cache_type)
    n_ctx = _check_cache(cache, cache_type, width)
    if pos < 0:
        raise ValueError(f"cache position must be >= 0, got {pos}")
    if pos + n > n_ctx:
        raise ValueError(f"context too long: storing {n} rows at position {pos} needs {pos + n} cache rows, "
                         f"but the cache holds n_ctx={n_ctx}")
    _check_finite(rows, "rows")
    if n == 0:
        return
    cdef uint8_t[:, ::1] c = cache
    cdef float[:, ::1] r = rows
    with nogil:
        attn_store_rows(&c[0, 0], t, width, pos, n, &r[0, 0])


def kv_cache_load(cache, cache_type, int pos, int n, int width=576):
    """Rows pos .. pos+n-1 of a cache layer, dequantized to float32 [n, width]."""
    cdef int t = _type_id(cache_type)
    n_ctx = _check_cache(cache, cache_type, width)
    if pos < 0 or n < 0 or pos + n > n_ctx:
        raise ValueError(f"rows {pos}..{pos + n - 1} are outside the cache (n_ctx={n_ctx})")
    out = np.empty((n, width), np.float32)
    if n == 0:
        return out
    cdef uint8_t[:, ::1] c = cache
    cdef float[:, ::1] o = out
    with nogil:
        attn_load_rows(&c[0, 0], t, width, pos, n, &o[0, 0])
    return out


def _check_dims(int width, int dv):
    if width <= 0 or width % 32 or width > MAX_WIDTH:
        raise ValueError(f"query width must be a positive multiple of 32 up to {MAX_WIDTH}, got {width}")
    if dv <= 0 or dv % 64 or dv > width:
        raise ValueError(f"output width must be a positive multiple of 64 no larger than the query width "
                         f"{width}, got {dv}")


def mla_decode(q_lat, cache, cache_type, int n_kv, float scale, out, strategy="auto", n_threads=0):
    """Attention of one new token: q_lat float32 [H, width] over cache rows 0 .. n_kv-1.

    Writes the latent outputs to ``out`` (float32 [H, dv]) and returns the strategy used.
    strategy: "heads" (threads split the heads), "kparallel" (threads split the cache rows,
    log-sum-exp merge) or "auto" (chosen from n_kv and the thread count).
    """
    _check_f32(q_lat, "q_lat", 2)
    _check_f32(out, "out", 2, writable=True)
    cdef int H = q_lat.shape[0], width = q_lat.shape[1], dv = out.shape[1]
    cdef int t = _type_id(cache_type)
    if H < 1:
        raise ValueError("q_lat needs at least one head")
    if out.shape[0] != H:
        raise ValueError(f"out has {out.shape[0]} heads but q_lat has {H}")
    _check_dims(width, dv)
    n_ctx = _check_cache(cache, cache_type, width)
    if n_kv < 1 or n_kv > n_ctx:
        raise ValueError(f"n_kv must be in 1..{n_ctx} (the cache capacity), got {n_kv}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    cdef int nthr = _threads(n_threads)
    _check_finite(q_lat, "q_lat")
    if strategy == "auto":
        strategy = choose_strategy(n_kv, nthr)
    cdef int strat = ATTN_HEADS if strategy == "heads" else ATTN_KPARALLEL
    cdef const float[:, ::1] q = q_lat
    cdef float[:, ::1] o = out
    cdef const uint8_t[:, ::1] c = cache
    cdef int rc
    with nogil:
        rc = attn_decode(&q[0, 0], H, &c[0, 0], t, width, dv, n_kv, scale, &o[0, 0], strat, nthr)
    if rc:
        raise MemoryError("out of memory in mla_decode")
    return strategy


def mla_prefill(q_lat, cache, cache_type, int pos0, float scale, out, n_threads=0):
    """Causal attention of N new tokens stored at cache rows pos0 .. pos0+N-1.

    q_lat float32 [N, H, width]; token i attends to rows 0 .. pos0+i; writes out float32 [N, H, dv].
    """
    _check_f32(q_lat, "q_lat", 3)
    _check_f32(out, "out", 3, writable=True)
    cdef int N = q_lat.shape[0], H = q_lat.shape[1], width = q_lat.shape[2], dv = out.shape[2]
    cdef int t = _type_id(cache_type)
    if N < 1 or H < 1:
        raise ValueError(f"q_lat needs at least one token and one head, got shape {q_lat.shape}")
    if out.shape[0] != N or out.shape[1] != H:
        raise ValueError(f"out shape {out.shape} does not match q_lat shape {q_lat.shape}")
    _check_dims(width, dv)
    n_ctx = _check_cache(cache, cache_type, width)
    if pos0 < 0 or pos0 + N > n_ctx:
        raise ValueError(f"tokens at positions {pos0}..{pos0 + N - 1} do not fit the cache (n_ctx={n_ctx})")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    cdef int nthr = _threads(n_threads)
    _check_finite(q_lat, "q_lat")
    cdef const float[:, :, ::1] q = q_lat
    cdef float[:, :, ::1] o = out
    cdef const uint8_t[:, ::1] c = cache
    cdef int rc
    with nogil:
        rc = attn_prefill(&q[0, 0, 0], N, H, &c[0, 0], t, width, dv, pos0, scale, &o[0, 0, 0], nthr)
    if rc:
        raise MemoryError("out of memory in mla_prefill")


def mha_prefill(q, kvb, k_rope, int pos0, float scale, out, n_threads=0):
    """Causal attention of N new tokens at positions pos0 .. pos0+N-1 on decompressed rows.

    q float32 [N, H, dn + dr] (q_nope | roped q_pe); kvb float32 [R, H, dn + dv] (R >= pos0 + N: the
    latent rows times attn_kv_b, per head k_nope | v); k_rope float32 [R, dr] (the roped part every
    head shares; rows may be strided, values contiguous).  Token i attends to rows 0 .. pos0+i;
    writes out float32 [N, H, dv].  The same attention as mla_prefill on the latent rows these came
    from, with 192-wide keys and 128-wide values instead of 576 and 512 (DeepSeek2's shapes).
    On AVX2 and up the rows are multiplied as int16 (about 12 bits per key and query value, 13 per
    value: tests/test_attention.py derives the bound); inf or NaN rows make a head's outputs NaN.
    """
    _check_f32(q, "q", 3)
    _check_f32(kvb, "kvb", 3)
    _check_f32(out, "out", 3, writable=True)
    if not isinstance(k_rope, np.ndarray) or k_rope.dtype != np.float32 or k_rope.ndim != 2:
        raise ValueError("k_rope must be a 2-D float32 numpy array")
    if k_rope.strides[1] != 4 or k_rope.strides[0] % 4 or k_rope.strides[0] < 4 * k_rope.shape[1]:
        raise ValueError("k_rope rows must hold contiguous values")
    cdef int N = q.shape[0], H = q.shape[1], dv = out.shape[2], dr = k_rope.shape[1]
    cdef int dn = kvb.shape[2] - dv, R = kvb.shape[0]
    if N < 1 or H < 1:
        raise ValueError(f"q needs at least one token and one head, got shape {q.shape}")
    if out.shape[0] != N or out.shape[1] != H or kvb.shape[1] != H:
        raise ValueError(f"q {q.shape}, kvb {kvb.shape} and out {out.shape} disagree on tokens or heads")
    if dn < 0 or q.shape[2] != dn + dr:
        raise ValueError(f"q rows hold {q.shape[2]} values, expected dn + dr = {dn} + {dr} "
                         f"(kvb rows {kvb.shape[2]} = dn + dv, dv = {dv})")
    if (dn + dr) % 16 or dn % 8 or dr % 8 or dv % 32 or dv == 0:
        raise ValueError(f"key width {dn} + {dr} must be a multiple of 16 (each part of 8) and value width {dv} of 32")
    if pos0 < 0 or pos0 + N > R or k_rope.shape[0] < pos0 + N:
        raise ValueError(f"tokens at positions {pos0}..{pos0 + N - 1} need that many kvb and k_rope rows "
                         f"(have {R} and {k_rope.shape[0]})")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    cdef int nthr = _threads(n_threads)
    _check_finite(q, "q")
    cdef const float[:, :, ::1] qv = q
    cdef const float[:, :, ::1] kv = kvb
    cdef float[:, :, ::1] o = out
    cdef cnp.ndarray kra = k_rope
    cdef const float *kr = <const float *> cnp.PyArray_DATA(kra)
    cdef size_t kr_stride = k_rope.strides[0] // 4
    cdef int rc
    with nogil:
        rc = attn_prefill_mha(&qv[0, 0, 0], N, H, dn, dr, dv, &kv[0, 0, 0], kr, kr_stride, pos0, scale,
                              &o[0, 0, 0], nthr)
    if rc:
        raise MemoryError("out of memory in mha_prefill")


def bench_read(buf, n_threads=0):
    """Seconds to stream-read the uint8 array ``buf`` once (for bandwidth figures)."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or not buf.flags.c_contiguous or buf.size < 128:
        raise ValueError("buf must be a C-contiguous uint8 array of at least 128 bytes")
    cdef int nthr = _threads(n_threads)
    cdef const uint8_t[::1] b = buf.reshape(-1)
    cdef double chk = 0.0, sec
    cdef size_t n = b.shape[0]
    with nogil:
        sec = attn_bench_read(&b[0], n, nthr, &chk)
    return sec


def bench_fma(long iters, n_threads=0):
    """(seconds, flops) of ``iters`` rounds of independent fp32 FMAs on each thread."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    cdef int nthr = _threads(n_threads)
    cdef double chk = 0.0, sec
    with nogil:
        sec = attn_bench_fma(iters, nthr, &chk)
    return sec, float(iters) * attn_bench_fma_flops_per_iter() * nthr
