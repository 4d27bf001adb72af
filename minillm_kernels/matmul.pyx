"""Matrix products with ggml-quantized weights: one call per layer operation.

Weights are raw GGUF bytes: a uint8 array whose last axis is one row of
``row_bytes`` bytes (C-contiguous), with the ggml type id ``wtype``; the row
length K follows from the type.  Activations are float32 and are quantized
inside (to q8_0 for the 32-value types, q8_K for the 256-value types, fp16
with a power-of-two row scale for F16 weights, as ggml pairs them; F32 and BF16
weights use them as they are).  Every call checks its arguments and
raises TypeError/ValueError before entering C, then releases the GIL.

``n_threads`` = 0 uses all cores; results are bit-identical for every thread
count (each output element is computed by one thread, in a fixed order).

``set_force_scalar(True)`` makes every later call use the scalar C kernels
(for testing the SIMD bodies against them); it is a process-wide switch.

This module is built once per ISA level (``minillm_kernels.kernels``; ``isa_level()`` says which).
On the "amx" level, batches of 16 tokens or more of the quantized types take the AMX GEMM, which
rounds weights and activations to bf16 instead (``amx_gemm`` says when; csrc/amx_gemm.h the bound).

Besides the ggml type ids, the kernels take internal type ids that no GGUF file
contains: rows converted at load time by ``repack`` (``REPACKED``: GGUF type ->
internal type) for faster dot products.
* ``IQ1_S_REPACKED``: IQ1_S as 2-bit codes, 74 bytes per 256 values instead of 50;
  results bit-identical to the IQ1_S rows', dot products about twice as fast.
* ``Q4_K_REPACKED``, ``Q5_K_REPACKED``, ``Q6_K_REPACKED``: the same values and bytes
  in the transposed group order (csrc/kquants.h), about a quarter fewer instructions per
  block; results within the same bounds as the originals', rounded differently.
* ``IQ4_NL_REPACKED``: IQ4_NL in groups of 4 blocks (csrc/quants.h), the same bytes, fewer
  instructions per block; results bit-identical to the IQ4_NL rows'.
* ``IQ4_NL_ROWS4``: IQ4_NL matrices with 4 rows interleaved (csrc/quants.h block_iq4_nl_x4), the
  same bytes, what ``repack`` makes of IQ4_NL at the avx2 level when the rows are a multiple of 4
  and of 128 values (``repack_type``): no per-row sums in the GEMV, 1.25-1.3x the rows per second
  of IQ4_NL_REPACKED on Zen 3; results bit-identical to the IQ4_NL rows'.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

from minillm_kernels.matmul_c cimport *

cnp.import_array()

cdef extern from "kquants.h" nogil:
    void repack_row_iq1_s_u(const void *iq1_s_row, void *y, int n)
    void repack_row_q4_K_r(const void *q4_K_row, void *y, int n)
    void repack_row_q5_K_r(const void *q5_K_row, void *y, int n)
    void repack_row_q6_K_r(const void *q6_K_row, void *y, int n)

cdef extern from "quants_impl.h" nogil:
    void repack_row_iq4_nl_r(const void *iq4_nl_row, void *y, int n)
    void repack_rows4_iq4_nl_r4(const void *w, size_t rb, void *y, int n)
    void unrepack_rows4_iq4_nl_r4(const void *x, void *out, size_t rb, int n)

ctypedef void (*repack_row_fn)(const void *, void *, int) noexcept nogil

cdef extern from * nogil:
    """
    uint64_t stream_read_sum(const uint8_t *buf, size_t n, int n_threads);
    """
    uint64_t stream_read_sum(const uint8_t *buf, size_t n, int n_threads)

# Batches of this many tokens or more use the packed 8-row integer GEMM of the types that have
# one (matmul_driver.c PACK8_MIN_TOKENS; see has_packed_gemm); their results then differ from the
# GEMV of the same token by float rounding only (below that, and for the other types, they are
# bit-identical: the float types' GEMM for such batches sums like their GEMV).
PACKED_GEMM_MIN_TOKENS = 8

# activation formats: Q8_K_T is q8_K with its values in the transposed group order (csrc/kquants.h)
_ACT_NAMES = {0: "F32", 1001: "F16_S", 8: "Q8_0", 15: "Q8_K", 1015: "Q8_K_T"}

# Internal weight type ids (csrc/type_table.h MINILLM_*_R): minillm load-time conversions (see
# repack), not GGUF / ggml types; 1000 + the source type's id, far above ggml's ids.
IQ1_S_REPACKED, Q4_K_REPACKED, Q5_K_REPACKED, Q6_K_REPACKED = 1019, 1012, 1013, 1014
IQ4_NL_REPACKED = 1020
# {GGUF type: the internal type repack converts its rows to}
REPACKED = {19: IQ1_S_REPACKED, 12: Q4_K_REPACKED, 13: Q5_K_REPACKED, 14: Q6_K_REPACKED,
            20: IQ4_NL_REPACKED}
# IQ4_NL matrices with 4 rows interleaved: repack's choice for IQ4_NL where repack_type says so
IQ4_NL_ROWS4 = 1021
ROWS4_VALUES = 128  # its rows: a multiple of this many values (whole runs of 4 blocks)
# the internal ids, {id: the GGUF type its rows are converted from}
INTERNAL_TYPES = {r: t for t, r in REPACKED.items()} | {IQ4_NL_ROWS4: 20}


def simd_enabled():
    """True when the AVX2/FMA/F16C kernels were compiled in."""
    return bool(simd_compiled())


def isa_level():
    """The ISA level these kernels run at: the build's ("scalar", "avx2", "avx512"), or "amx" when
    this (avx512) build's AMX GEMM is switched on."""
    return "amx" if mm_get_amx() else isa_compiled().decode()


def set_amx(bint on):
    """Switch the AMX GEMM on or off (minillm_kernels.kernels does it once the OS granted the tile
    state; switching it on without that permission would fault).  Builds without it ignore it."""
    if on and not amx_compiled():
        raise ValueError(f"the {isa_compiled().decode()} build has no AMX GEMM")
    mm_set_amx(on)


def amx_gemm(int wtype, int n_tokens):
    """True when a batch of n_tokens of this weight type takes the AMX bf16 GEMM: it rounds each
    weight and activation to bf16 (amx_gemm.h gives the bound)."""
    _traits(wtype)  # raises for an unknown type
    return bool(mm_amx_gemm(wtype, n_tokens))


def supported_types():
    """{type id: type name} of the weight types the kernels handle: the ggml types and the
    internal ids of INTERNAL_TYPES (e.g. IQ1_S_REPACKED: "IQ1_S_R")."""
    cdef int i
    cdef const type_traits *tt
    out = {}
    for i in range(type_traits_count()):
        tt = type_traits_at(i)
        out[tt.type] = tt.name.decode().upper()
    return out


def set_force_scalar(bint on):
    """Use the scalar C kernels (True) or the best compiled ones (False) from now on."""
    mm_set_force_scalar(on)


def get_force_scalar():
    return bool(mm_get_force_scalar())


def has_packed_gemm(int wtype):
    """True when batches of PACKED_GEMM_MIN_TOKENS or more take the packed 8-row integer GEMM
    (the SIMD build, not forced scalar), which rounds differently from the GEMV."""
    cdef const type_traits *tt = _traits(wtype)
    return tt.pack8 != NULL and not mm_get_force_scalar()


def block_geometry(int wtype):
    """(values per block, bytes per block, activation format name) of a weight type."""
    cdef const type_traits *tt = _traits(wtype)
    return tt.block_size, tt.type_size, _ACT_NAMES[tt.act_type]


# ---- argument checks ----

cdef const type_traits *_traits(int wtype) except NULL:
    cdef const type_traits *tt = type_traits_get(wtype)
    if tt == NULL:
        raise ValueError(f"unsupported weight type {wtype} (supported: {supported_types()})")
    return tt


cdef int _row_values(const type_traits *tt, Py_ssize_t row_bytes, str what) except -1:
    """K, the values in one weight row of row_bytes bytes."""
    if row_bytes <= 0 or row_bytes % tt.type_size:
        raise ValueError(f"{what}: row of {row_bytes} bytes is not a whole number of "
                         f"{tt.name.decode().upper()} blocks ({tt.type_size} bytes)")
    cdef Py_ssize_t k = row_bytes // tt.type_size * tt.block_size
    if k >= 2**31:
        raise ValueError(f"{what}: rows too long")
    if tt.rows_per_group > 1 and k % ROWS4_VALUES:
        raise ValueError(f"{what}: {tt.name.decode().upper()} rows hold a multiple of {ROWS4_VALUES} values, not {k}")
    return <int>k


def _check_array(a, str what, dtype, ndim=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, not {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{what} must have dtype {np.dtype(dtype).name}, not {a.dtype}")
    if ndim is not None and a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{what} must have {ndim} dimensions, not shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    return a


def _check_out(out, str what, shape):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    _check_array(out, what, np.float32)
    if out.shape != tuple(shape):
        raise ValueError(f"{what} must have shape {tuple(shape)}, not {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{what} must be writeable")
    return out


def _check_threads(n_threads):
    if not isinstance(n_threads, (int, np.integer)) or n_threads < 0:
        raise ValueError(f"n_threads must be an int >= 0 (0: all cores), not {n_threads!r}")
    return int(n_threads)


cdef _raise_rc(int rc):
    if rc == MM_ERR_TYPE:
        raise ValueError("unsupported weight type")
    if rc == MM_ERR_NOMEM:
        raise MemoryError("kernel work buffers")
    if rc == MM_ERR_EXPERT_ID:
        raise ValueError("expert id out of range")
    if rc == MM_ERR_ROWS:
        raise ValueError("IQ4_NL_ROWS4 weights come in groups of 4 rows: a matrix's rows must be a multiple of 4")
    if rc != MM_OK:
        raise RuntimeError(f"kernel error {rc}")


cdef inline const uint8_t *_u8(cnp.ndarray a):
    return <const uint8_t *> cnp.PyArray_DATA(a)


cdef inline float *_f32(cnp.ndarray a):
    return <float *> cnp.PyArray_DATA(a)


# ---- load-time conversions ----

cdef repack_row_fn _repack_row(int wtype):
    """the C conversion of one row for a key of REPACKED"""
    if wtype == 19:
        return repack_row_iq1_s_u
    if wtype == 12:
        return repack_row_q4_K_r
    if wtype == 13:
        return repack_row_q5_K_r
    if wtype == 14:
        return repack_row_q6_K_r
    if wtype == 20:
        return repack_row_iq4_nl_r
    return NULL


def repack_type(int wtype, shape):
    """The internal type repack converts a tensor of GGUF type wtype (a key of REPACKED) and this
    shape to: IQ4_NL_ROWS4 for IQ4_NL at the avx2 level (where it was measured) when its matrices'
    rows are a multiple of 4 and of ROWS4_VALUES values, else REPACKED[wtype]."""
    if wtype == 20 and isa_level() == "avx2" and len(shape) >= 2 and shape[len(shape) - 2] % 4 == 0 \
            and shape[len(shape) - 1] % (ROWS4_VALUES // 32 * 18) == 0:
        return IQ4_NL_ROWS4
    return REPACKED[wtype]


def repack(w_raw, int wtype, n_threads=0, target=None):
    """Rows of GGUF type wtype (a key of REPACKED) -> (a new array of the same rows in an internal
    type, that type id), for matmul & co: w_raw uint8 [..., row_bytes], any leading axes.  The type
    is ``target`` (REPACKED[wtype], or IQ4_NL_ROWS4 for IQ4_NL), by default repack_type's choice."""
    if wtype not in REPACKED:
        raise ValueError(f"no load-time repack for weight type {wtype} (repacked: {sorted(REPACKED)})")
    _check_array(w_raw, "w_raw", np.uint8)
    if w_raw.ndim < 1:
        raise ValueError("w_raw must have a row axis")
    if target is None:
        target = repack_type(wtype, w_raw.shape)
    if target not in (REPACKED[wtype], IQ4_NL_ROWS4) or INTERNAL_TYPES[target] != wtype:
        raise ValueError(f"weight type {wtype} has no repack to type {target}")
    if target == IQ4_NL_ROWS4:
        return _repack_rows4(w_raw, n_threads), IQ4_NL_ROWS4
    cdef const type_traits *src = _traits(wtype)
    cdef const type_traits *dst = _traits(REPACKED[wtype])
    cdef Py_ssize_t rb = w_raw.shape[w_raw.ndim - 1]
    cdef int k = _row_values(src, rb, "w_raw")
    cdef Py_ssize_t rb_out = k // dst.block_size * dst.type_size
    out = np.empty(tuple(w_raw.shape)[:w_raw.ndim - 1] + (rb_out,), dtype=np.uint8)
    cdef int nth = _check_threads(n_threads)
    if nth == 0:
        nth = mm_max_threads()
    cdef cnp.ndarray aw = w_raw, ao = out
    cdef const uint8_t *pw = _u8(aw)
    cdef uint8_t *po = <uint8_t *> cnp.PyArray_DATA(ao)
    cdef Py_ssize_t n_rows = w_raw.size // rb, r
    cdef repack_row_fn fn = _repack_row(wtype)
    if fn == NULL:
        raise ValueError(f"no row conversion for weight type {wtype}")
    with nogil:
        for r in prange(n_rows, num_threads=nth, schedule="static"):
            fn(pw + r * rb, po + r * rb_out, k)
    return out, REPACKED[wtype]


cdef _repack_rows4(w_raw, n_threads):
    """IQ4_NL rows -> IQ4_NL_ROWS4 (the same shape): each 4 rows of the last but one axis interleaved"""
    if w_raw.ndim < 2 or w_raw.shape[w_raw.ndim - 2] % 4:
        raise ValueError(f"IQ4_NL_ROWS4 takes matrices of a multiple of 4 rows, not shape {w_raw.shape}")
    cdef Py_ssize_t rb = w_raw.shape[w_raw.ndim - 1]
    cdef int k = _row_values(_traits(IQ4_NL_ROWS4), rb, "w_raw")
    out = np.empty(w_raw.shape, dtype=np.uint8)
    cdef int nth = _check_threads(n_threads)
    if nth == 0:
        nth = mm_max_threads()
    cdef cnp.ndarray aw = np.ascontiguousarray(w_raw), ao = out
    cdef const uint8_t *pw = _u8(aw)
    cdef uint8_t *po = <uint8_t *> cnp.PyArray_DATA(ao)
    cdef Py_ssize_t n_groups = w_raw.size // rb // 4, g
    with nogil:
        for g in prange(n_groups, num_threads=nth, schedule="static"):
            repack_rows4_iq4_nl_r4(pw + 4 * g * rb, rb, po + 4 * g * rb, k)
    return out


cdef _unrepack_rows4(w_raw):
    """IQ4_NL_ROWS4 rows [n_rows, row_bytes] -> the IQ4_NL rows they hold"""
    if w_raw.shape[0] % 4:
        raise ValueError(f"IQ4_NL_ROWS4 rows come in groups of 4, not {w_raw.shape[0]}")
    cdef Py_ssize_t rb = w_raw.shape[1], g, n_groups = w_raw.shape[0] // 4
    cdef int k = _row_values(_traits(IQ4_NL_ROWS4), rb, "w_raw")
    out = np.empty(w_raw.shape, dtype=np.uint8)
    cdef cnp.ndarray aw = np.ascontiguousarray(w_raw), ao = out
    cdef const uint8_t *pw = _u8(aw)
    cdef uint8_t *po = <uint8_t *> cnp.PyArray_DATA(ao)
    with nogil:
        for g in range(n_groups):
            unrepack_rows4_iq4_nl_r4(pw + 4 * g * rb, po + 4 * g * rb, rb, k)
    return out


def repack_iq1_s(w_raw, n_threads=0):
    """IQ1_S rows -> the same rows as IQ1_S_REPACKED (repack(w_raw, IQ1_S)[0]): uint8
    [..., nb * 50] -> uint8 [..., nb * 74].  Every result of the repacked rows is bit-identical
    to that of the IQ1_S rows."""
    return repack(w_raw, 19, n_threads)[0]


# ---- layer operations ----

cdef _run_matmul(int wtype, cnp.ndarray w, Py_ssize_t row_bytes, Py_ssize_t batch_stride, Py_ssize_t M,
                 int K, cnp.ndarray x, Py_ssize_t N, Py_ssize_t B, cnp.ndarray out, int nth):
    """The one C call behind matmul and matmul_batched (arguments already validated)."""
    cdef int rc = MM_OK
    cdef const uint8_t *pw = _u8(w)
    cdef const float *px = _f32(x)
    cdef float *po = _f32(out)
    if B > 0 and N > 0 and M > 0:
        with nogil:
            rc = mm_matmul(wtype, pw, row_bytes, batch_stride, <int>M, K, px, <int>N, <int>B, po, nth)
    _raise_rc(rc)


def matmul(w_raw, int wtype, x, out=None, n_threads=0):
    """out[N, M] = x[N, K] @ W.T for W the M x K matrix in w_raw [M, row_bytes].

    w_raw with more than 2 dimensions is taken as rows of its last axis
    (leading axes flattened).  x may be 1-D (one token): out is then 1-D [M].
    N == 1 runs the GEMV path, N > 1 the tiled GEMM.
    """
    cdef const type_traits *tt = _traits(wtype)
    _check_array(w_raw, "w_raw", np.uint8)
    if w_raw.ndim < 2:
        raise ValueError(f"w_raw must be [M, row_bytes], not shape {w_raw.shape}")
    cdef Py_ssize_t row_bytes = w_raw.shape[w_raw.ndim - 1]
    cdef int K = _row_values(tt, row_bytes, "w_raw")
    cdef Py_ssize_t M = w_raw.size // row_bytes
    _check_array(x, "x", np.float32, (1, 2))
    one_d = x.ndim == 1
    x2 = x.reshape(1, -1) if one_d else x
    if x2.shape[1] != K:
        raise ValueError(f"x has {x2.shape[1]} values per row but the weight rows have K={K}")
    cdef Py_ssize_t N = x2.shape[0]
    if M >= 2**31 or N >= 2**31:
        raise ValueError("matrix too large")
    shape = (int(M),) if one_d else (int(N), int(M))
    out = _check_out(out, "out", shape)
    _run_matmul(wtype, w_raw, row_bytes, 0, M, K, x2, N, 1, out, _check_threads(n_threads))
    return out


def matmul_batched(w_raw, int wtype, x, out=None, n_threads=0):
    """out[b] = x[b] @ W_b.T for every b: w_raw [B, M, row_bytes], x [B, N, K] -> out [B, N, M]."""
    cdef const type_traits *tt = _traits(wtype)
    _check_array(w_raw, "w_raw", np.uint8, 3)
    _check_array(x, "x", np.float32, 3)
    cdef Py_ssize_t B = w_raw.shape[0], M = w_raw.shape[1], row_bytes = w_raw.shape[2]
    cdef int K = _row_values(tt, row_bytes, "w_raw")
    if x.shape[0] != B:
        raise ValueError(f"x has {x.shape[0]} batches but w_raw has {B}")
    if x.shape[2] != K:
        raise ValueError(f"x has {x.shape[2]} values per row but the weight rows have K={K}")
    cdef Py_ssize_t N = x.shape[1]
    if M >= 2**31 or B * N >= 2**31:
        raise ValueError("matrix too large")
    out = _check_out(out, "out", (B, N, M))
    _run_matmul(wtype, w_raw, row_bytes, M * row_bytes, M, K, x, N, B, out, _check_threads(n_threads))
    return out


def moe_forward(x, expert_ids, expert_weights, gate_raw, int gate_type, up_raw, int up_type,
                down_raw, int down_type, out=None, n_threads=0, bint merged_gate_up=False):
    """Fused MoE feed-forward for a batch of tokens, in one call.

    out[t] = sum_j expert_weights[t, j] * down_e(silu(gate_e x_t) * up_e x_t), e = expert_ids[t, j]

    x float32 [N, K]; expert_ids int32 [N, k_used]; expert_weights float32 [N, k_used];
    gate_raw / up_raw uint8 [n_expert, F, row_bytes(K)]; down_raw uint8 [n_expert, K_out, row_bytes(F)].
    merged_gate_up=True: gate_raw is [n_expert, 2F, row_bytes(K)] (gate rows first, then up rows),
    up_raw must be None and up_type equal to gate_type.  Returns out float32 [N, K_out].
    """
    cdef const type_traits *tg = _traits(gate_type)
    cdef const type_traits *tu = _traits(up_type)
    cdef const type_traits *td = _traits(down_type)
    _check_array(x, "x", np.float32, 2)
    _check_array(expert_ids, "expert_ids", np.int32, 2)
    _check_array(expert_weights, "expert_weights", np.float32, 2)
    _check_array(gate_raw, "gate_raw", np.uint8, 3)
    _check_array(down_raw, "down_raw", np.uint8, 3)
    cdef Py_ssize_t N = x.shape[0], k_used = expert_ids.shape[1]
    cdef Py_ssize_t E = gate_raw.shape[0], F, gate_rb = gate_raw.shape[2]
    cdef int K = _row_values(tg, gate_rb, "gate_raw")
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} values per row but the gate rows have K={K}")
    if expert_ids.shape[0] != N or expert_weights.shape != expert_ids.shape:
        raise ValueError(f"expert_ids {expert_ids.shape} and expert_weights {expert_weights.shape} "
                         f"must both be [N={N}, k_used]")
    if merged_gate_up:
        if up_raw is not None:
            raise ValueError("merged_gate_up=True takes the up rows from gate_raw: pass up_raw=None")
        if up_type != gate_type:
            raise ValueError("merged_gate_up=True: up_type must equal gate_type")
        if gate_raw.shape[1] % 2:
            raise ValueError(f"merged gate_up has an odd row count {gate_raw.shape[1]}")
        F = gate_raw.shape[1] // 2
        up_arr = gate_raw
    else:
        _check_array(up_raw, "up_raw", np.uint8, 3)
        F = gate_raw.shape[1]
        if up_raw.shape[0] != E or up_raw.shape[1] != F:
            raise ValueError(f"up_raw {up_raw.shape} must be [{E}, {F}, row_bytes]")
        if _row_values(tu, up_raw.shape[2], "up_raw") != K:
            raise ValueError(f"up_raw rows do not hold K={K} values")
        up_arr = up_raw
    if down_raw.shape[0] != E:
        raise ValueError(f"down_raw has {down_raw.shape[0]} experts, gate_raw {E}")
    cdef Py_ssize_t K_out = down_raw.shape[1], down_rb = down_raw.shape[2]
    if _row_values(td, down_rb, "down_raw") != F:
        raise ValueError(f"down_raw rows hold {_row_values(td, down_rb, 'down_raw')} values, "
                         f"expected the expert width F={F}")
    if N * k_used > 0:
        lo, hi = int(expert_ids.min()), int(expert_ids.max())
        if lo < 0 or hi >= E:
            raise ValueError(f"expert_ids must lie in [0, {E}), found [{lo}, {hi}]")
    if N * k_used >= 2**31 or N * k_used * max(F, K_out) >= 2**62 or F == 0:
        raise ValueError("bad MoE sizes")
    out = _check_out(out, "out", (N, K_out))
    cdef int nth = _check_threads(n_threads)
    cdef cnp.ndarray ax = x, aid = expert_ids, aew = expert_weights, ag = gate_raw, au = up_arr
    cdef cnp.ndarray ad = down_raw, ao = out
    cdef const uint8_t *pg = _u8(ag)
    cdef const uint8_t *pu = _u8(au)
    cdef size_t g_estride = ag.shape[1] * gate_rb, u_rb = au.shape[2], u_estride = au.shape[1] * u_rb
    if merged_gate_up:
        pu = pg + F * gate_rb
    cdef int rc = MM_OK
    cdef const float *px = _f32(ax)
    cdef const int32_t *pid = <const int32_t *> cnp.PyArray_DATA(aid)
    cdef const float *pew = _f32(aew)
    cdef const uint8_t *pd = _u8(ad)
    cdef float *po = _f32(ao)
    if N > 0 and K_out > 0:
        if k_used == 0:
            out[...] = 0
        else:
            with nogil:
                rc = mm_moe(px, <int>N, K, pid, pew, <int>k_used, <int>E,
                            pg, gate_type, gate_rb, g_estride, pu, up_type, u_rb, u_estride,
                            pd, down_type, down_rb, K_out * down_rb, <int>F, <int>K_out, po, nth)
    _raise_rc(rc)
    return out


def dequantize_rows(w_raw, int wtype, row_ids, out=None, n_threads=0):
    """out[i] = row row_ids[i] of w_raw [n_rows, row_bytes], dequantized to float32 (embedding lookup)."""
    cdef const type_traits *tt = _traits(wtype)
    _check_array(w_raw, "w_raw", np.uint8, 2)
    cdef Py_ssize_t n_rows = w_raw.shape[0], row_bytes = w_raw.shape[1]
    cdef int K = _row_values(tt, row_bytes, "w_raw")
    if not isinstance(row_ids, np.ndarray) or row_ids.dtype not in (np.int32, np.int64):
        raise TypeError("row_ids must be a numpy int32 or int64 array")
    if row_ids.ndim != 1:
        raise ValueError(f"row_ids must be 1-D, not shape {row_ids.shape}")
    cdef Py_ssize_t n = row_ids.shape[0]
    if n and (int(row_ids.min()) < 0 or int(row_ids.max()) >= n_rows):
        raise ValueError(f"row_ids must lie in [0, {n_rows})")
    out = _check_out(out, "out", (n, K))
    cdef int nth = _check_threads(n_threads)
    if tt.rows_per_group > 1:  # interleaved: the IQ4_NL rows back first
        w_raw, tt = _unrepack_rows4(w_raw), _traits(INTERNAL_TYPES[wtype])
        wtype = tt.type
    cdef cnp.ndarray ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    cdef cnp.ndarray aw = w_raw, ao = out
    cdef const uint8_t *pw = _u8(aw)
    cdef const int64_t *pid = <const int64_t *> cnp.PyArray_DATA(ids)
    cdef float *po = _f32(ao)
    cdef int rc = MM_OK
    if n > 0:
        with nogil:
            rc = mm_dequantize_rows(wtype, pw, row_bytes, K, pid, <int>n, po, nth)
    _raise_rc(rc)
    return out


def dequantize(w_raw, int wtype):
    """The whole tensor w_raw [..., row_bytes] as float32 [..., K]."""
    cdef const type_traits *tt = _traits(wtype)
    _check_array(w_raw, "w_raw", np.uint8)
    if w_raw.ndim < 1:
        raise ValueError("w_raw must have a row axis")
    cdef int K = _row_values(tt, w_raw.shape[w_raw.ndim - 1], "w_raw")
    rows = w_raw.reshape(-1, w_raw.shape[w_raw.ndim - 1])
    out = dequantize_rows(rows, wtype, np.arange(rows.shape[0], dtype=np.int64))
    return out.reshape(tuple(w_raw.shape)[:w_raw.ndim - 1] + (K,))


def release_workspace():
    """Free the calling thread's workspace: the arena the calls keep for their temporaries
    (quantized activations, per-expert outputs), so that a call does not fault in fresh pages
    each time.  It grows to the largest call's need (about 80 MB for a 512-token MoE of
    DeepSeek-V2-Lite) and is freed when the thread ends."""
    workspace_release()


def workspace_bytes():
    """Bytes held by the calling thread's workspace (see release_workspace)."""
    return workspace_size()


def quantize_activations(x, int wtype, n_threads=0):
    """The activation rows x [N, K] as the kernels quantize them for weight type wtype
    (q8_0 / q8_K blocks as uint8 [N, row_bytes]; for F16 weights each row's values x / scale as fp16,
    then the float32 scale at byte 2 * K rounded up to 32 (quants.h F16S_SCALE_OFFSET); float32 bytes
    for F32 and BF16 weights)."""
    cdef const type_traits *tt = _traits(wtype)
    _check_array(x, "x", np.float32, 2)
    cdef int K = <int>x.shape[1]
    cdef int bs = 256 if tt.act_type in (ACT_Q8_K, ACT_Q8_K_T) else (32 if tt.act_type == ACT_Q8_0 else 1)
    if K % bs:
        raise ValueError(f"row length {K} is not a multiple of {bs}")
    cdef size_t rb = act_row_bytes(tt.act_type, K)
    out = np.empty((x.shape[0], rb), dtype=np.uint8)
    cdef cnp.ndarray ax = x, ao = out
    cdef const float *px = _f32(ax)
    cdef uint8_t *po = <uint8_t *> cnp.PyArray_DATA(ao)
    cdef int n = <int>x.shape[0], nth = _check_threads(n_threads), act = tt.act_type
    with nogil:
        mm_quantize_rows(act, px, n, K, po, nth)
    return out


def quantize_q8_0(x):
    """x float32 [N, K] (K a multiple of 32) -> q8_0 blocks uint8 [N, K / 32 * 34]."""
    return quantize_activations(x, 8)


def stream_read(buf, n_threads=1):
    """Read every byte of buf (uint8, C-contiguous; whole 8-byte words) once, with the GIL
    released: time it to measure the memory read bandwidth.  Returns a checksum."""
    _check_array(buf, "buf", np.uint8)
    cdef int nth = _check_threads(n_threads)
    if nth == 0:
        nth = mm_max_threads()
    cdef cnp.ndarray ab = buf
    cdef const uint8_t *p = _u8(ab)
    cdef size_t n = ab.size
    cdef uint64_t s
    with nogil:
        s = stream_read_sum(p, n, nth)
    return int(s)
