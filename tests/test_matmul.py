"""The Python kernel API (minillm_kernels.matmul): GEMV, GEMM, batched GEMM,
fused MoE and row dequantization for every supported weight type, checked
against numpy on weights dequantized by gguf.quants (an independent reference).

Tolerances (all derived, per output element):
* float rounding: the kernels compute exact integer block dots and round only
  when scaling and accumulating blocks, at most NB = K/8 + 16 sequential float
  additions; so |y - y_q| <= FP(K) * sum_k |w_k a_k| with FP(K) = 2 (K/8 + 16) 2^-24
  (8x that for the k-quants, whose block formula subtracts a min term), where
  y_q = W . a in float64 and a are the activations as quantized by the kernel
  (decoded independently: gguf.quants for q8_0, the q8_K layout and F16 weights'
  scaled fp16 rows by hand; float32 as they are for F32 and BF16 weights);
* activation quantization: |y - W . x| <= sum_k |w_k| |x_k - a_k| + the above;
  this is the error budget the issue allows (q8 rounding of the activations;
  fp16 rounding, 2^-11 relative, for F16 weights, as ggml pairs them).
The activation quantizer itself must equal gguf.quants.quantize(Q8_0) bit for
bit (the fp16 one numpy's float16 rounding), and dequantize_rows must equal
gguf.quants.dequantize exactly.

Thread counts 1 and 2 must give bit-identical results, and a GEMM row the
same bits as the GEMV of that token (every (row, token) pair is computed by
one tile call with vec_dot's arithmetic; the float types' GEMM too), except
for batches that take the packed 8-row integer GEMM (has_packed_gemm, >= 8
tokens), which must agree with the GEMV to float rounding (both within the
float bound above).

The AMX GEMM (batches of AMX_MIN_TOKENS or more of the quantized types, on the "amx" level;
mm.amx_gemm says when) rounds each weight and activation to bf16 (unit roundoff 2^-8) and sums
exact products in float32: |y - W . x| <= BF16(K) * sum_k |w_k x_k| with
BF16(K) = 2^-7 + 2^-16 + K 2^-24 (both roundings, their product, the float32 sum), doubled for margin.
It replaces the quantized-activation bound for those batches.

SIMD vs scalar: set_force_scalar(True) switches the float and 32-value types
(and the q8_0 quantizer) to their scalar C bodies at run time; both must
meet the bounds above.  The 256-value types select their path at build time:
test_scalar_build_agrees compares every type with the scalar build
(minillm_kernels.kernels("scalar")); tests/test_isa.py compares every ISA level.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import minillm_kernels
from minillm_kernels import matmul as mm
from minillm_kernels.random_blocks import TYPES, random_weights

SUPPORTED = sorted(t for t in mm.supported_types() if t not in mm.INTERNAL_TYPES)  # the GGUF types
IQ1_S, IQ1_S_R, IQ4_NL, IQ4_NL_R = 19, mm.IQ1_S_REPACKED, 20, mm.IQ4_NL_REPACKED
R4 = mm.IQ4_NL_ROWS4  # IQ4_NL with 4 rows interleaved
# Q4_K, Q5_K, Q6_K repacked to the transposed group order: the same values, rounded differently
K_REPACKED = [mm.Q4_K_REPACKED, mm.Q5_K_REPACKED, mm.Q6_K_REPACKED]
K_TYPES = {10, 12, 13, 14, 19}
FLOAT_TYPES = {0, 1, 30}
F16 = 1


def type_name(t):
    return mm.supported_types()[t] if t in mm.INTERNAL_TYPES else TYPES[t][0]


def block(t):
    return TYPES[mm.INTERNAL_TYPES.get(t, t)][1]


def weights(t, shape, seed, scale=0.02):
    """(rows for the kernels in type t, the float64 matrix they hold, decoded by gguf.quants):
    random valid blocks of t's GGUF type, repacked for an internal type"""
    src = mm.INTERNAL_TYPES.get(t, t)
    raw = random_weights(src, shape, seed=seed, scale=scale)
    W = gguf_dequantize(raw, src).astype(np.float64)
    return (mm.repack(raw, src, target=t)[0] if t != src else raw), W


@pytest.fixture(autouse=True)
def _simd_path():
    mm.set_force_scalar(False)
    yield
    mm.set_force_scalar(False)


def shapes_for(t):
    """(M, K): rows not a multiple of the thread count, one block per row, many blocks."""
    bs = block(t)
    if bs == 1:
        return [(7, 1), (33, 37), (5, 2048)]
    return [(7, bs), (33, bs * 5), (5, 2048)]  # 5 blocks: one group of 4 and one left over


def deq_weights(raw, t):
    return gguf_dequantize(raw, t).astype(np.float64)


def deq_acts(x, t):
    """The activations as the kernels quantized them, decoded without our code."""
    act = mm.block_geometry(t)[2]
    q = mm.quantize_activations(x, t)
    if act == "F32":
        assert np.array_equal(q.view(np.float32), x)
        return x.astype(np.float64)
    if act == "Q8_0":
        return gguf_dequantize(q, T.Q8_0).astype(np.float64)
    if act == "F16_S":  # x / scale as fp16, then the float32 scale at 2K rounded up to 32 bytes
        K = x.shape[1]
        off = (2 * K + 31) // 32 * 32
        assert q.shape[1] == off + 32
        scale = q[:, off:off + 4].copy().view(np.float32).astype(np.float64)
        return q[:, :2 * K].copy().view(np.float16).astype(np.float64) * scale
    # q8_K: float32 d, int8 qs[256], int16 bsums[16] per block of 256
    blocks = q.reshape(x.shape[0], -1, 292)
    d = blocks[:, :, :4].copy().view(np.float32).astype(np.float64)
    qs = blocks[:, :, 4:260].copy().view(np.int8).astype(np.float64)
    if act == "Q8_K_T":  # qs in the transposed group order: value 32i + 4k + j at 32k + 4i + j
        qs = qs.reshape(x.shape[0], -1, 8, 8, 4).transpose(0, 1, 3, 2, 4).reshape(qs.shape)
    else:
        assert act == "Q8_K"
    return (d * qs).reshape(x.shape)


def fp_factor(t, k):
    return 2.0 * (k / 8 + 16) * 2.0**-24 * (8 if mm.INTERNAL_TYPES.get(t, t) in K_TYPES else 1)


def bf16_factor(k):
    return 2 * (2.0**-7 + 2.0**-16 + k * 2.0**-24)


def check_product(y, W, x, a, t):
    """y (float32 [N, M]) against W (float64 [M, K]) with activations x (float) / a (quantized)."""
    absW = np.abs(W)
    if mm.amx_gemm(t, y.shape[0]):  # bf16 weights and activations
        bound = bf16_factor(W.shape[1]) * (np.abs(x.astype(np.float64)) @ absW.T) + 1e-30
        err = np.abs(y - x.astype(np.float64) @ W.T)
        assert np.all(err <= bound), f"{type_name(t)} (AMX): worst {np.max(err / bound):.2f} of bound"
        return
    y_q = a @ W.T
    fp = fp_factor(t, W.shape[1]) * (np.abs(a) @ absW.T) + 1e-30
    err_q = np.abs(y - y_q)
    assert np.all(err_q <= fp), f"{type_name(t)}: vs quantized-activation product, worst {np.max(err_q / fp):.2f} of bound"
    bound = np.abs(x.astype(np.float64) - a) @ absW.T + fp
    err = np.abs(y - x.astype(np.float64) @ W.T)
    assert np.all(err <= bound), f"{type_name(t)}: vs float product, worst {np.max(err / bound):.2f} of bound"


def rand_x(n, k, seed):
    return np.random.default_rng(seed).standard_normal((n, k), dtype=np.float32)


# ---- quantizer and dequantization ----

def test_supported_types_cover_the_project():
    names = set(mm.supported_types().values())
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "IQ4_NL"} <= names
    for t in SUPPORTED:
        assert mm.block_geometry(t)[:2] == TYPES[t][1:3]
    # the internal load-time conversion is a weight type too, outside ggml's id range
    assert mm.supported_types()[IQ1_S_R] == "IQ1_S_R" and IQ1_S_R not in TYPES
    assert mm.INTERNAL_TYPES == {IQ1_S_R: IQ1_S, 1012: 12, 1013: 13, 1014: 14, IQ4_NL_R: IQ4_NL, R4: IQ4_NL}
    assert mm.block_geometry(IQ4_NL_R) == mm.block_geometry(IQ4_NL)
    assert {mm.REPACKED[t]: t for t in mm.REPACKED} | {R4: IQ4_NL} == mm.INTERNAL_TYPES
    assert mm.block_geometry(IQ1_S_R) == (256, 74, "Q8_K")
    for t in K_REPACKED:  # the same bytes as the source type, transposed activations
        assert mm.block_geometry(t) == mm.block_geometry(mm.INTERNAL_TYPES[t])[:2] + ("Q8_K_T",)
        assert mm.supported_types()[t] == mm.supported_types()[mm.INTERNAL_TYPES[t]] + "_R"


@pytest.mark.parametrize("scalar", [False, True])
def test_quantize_q8_0_matches_gguf(scalar):
    mm.set_force_scalar(scalar)
    x = rand_x(9, 256, 1) * 3
    x[1] = 0.0  # all-zero block: d = 0
    x[2, :32] = np.arange(32, dtype=np.float32) - 15.5  # ties at .5 after scaling: rounded away from zero
    x[2, 31] = 127.0
    x[3, :32] = np.float32(1e-30)  # tiny block
    q = mm.quantize_q8_0(x)
    ref = gguf_quantize(x, T.Q8_0)
    assert q.shape == ref.shape and np.array_equal(q, ref)


@pytest.mark.parametrize("scalar", [False, True])
def test_quantize_f16_activations(scalar):
    """F16 weights' activations: x / scale rounded to fp16 (numpy's rounding), scale the power of two
    that puts the row's largest |x| in [2^14, 2^15): rows far beyond fp16's range neither overflow
    nor, when tiny, lose bits to subnormals"""
    mm.set_force_scalar(scalar)
    x = rand_x(8, 45, 2)  # 45: a tail after the 8-value steps
    x[1] *= 1e6
    x[2] *= 1e-7
    x[3] = 0.0
    x[4, 5] = 65504.0 * 4  # the largest |x| exactly a power of two times fp16's top
    x[5, :] = np.float32(2.0**-130)  # float32 subnormals: scale 2^-115 (the lowest)
    x[6, 3], x[7, 9] = np.inf, np.nan  # kept as they are (scale 1 for inf)
    q = mm.quantize_activations(x, F16)
    off = 96  # 2 * 45 rounded up to 32
    assert q.shape == (8, off + 32) and not q[:, 90:off].any()
    scale = q[:, off:off + 4].copy().view(np.float32)[:, 0]
    values = q[:, :90].copy().view(np.float16)
    for i in range(8):
        amax = np.nanmax(np.abs(x[i]))
        if i == 3 or i == 6:
            assert scale[i] == 1.0
        else:
            e = np.frexp(amax)[1]  # amax in [2^(e-1), 2^e)
            assert scale[i] == 2.0 ** (max(e, -100) - 15)
            if i != 5:
                assert 2.0**14 <= amax / scale[i] < 2.0**15
        assert np.array_equal(values[i], (x[i] / scale[i]).astype(np.float16), equal_nan=True)
    assert np.isinf(values[6, 3]) and np.isnan(values[7, 9]) and np.isfinite(values[[0, 1, 2, 4, 5]]).all()
    # rows of 1e6 (far past fp16's 65504) and of 1e-7 give products within the fp16 bound
    w, W = weights(F16, (5, 45), seed=3)
    for n in (1, 3, 9):  # GEMV, register tile, float GEMM
        xs = np.concatenate([x[:3]] * 3)[:n]
        check_product(mm.matmul(w, F16, xs), W, xs, deq_acts(xs, F16), F16)


@pytest.mark.parametrize("t", SUPPORTED + K_REPACKED, ids=type_name)
@pytest.mark.parametrize("scalar", [False, True])
def test_dequantize_rows_exact(t, scalar):
    mm.set_force_scalar(scalar)
    k = 3 * max(block(t), 32)
    raw, ref = weights(t, (11, k), seed=t)
    ref = ref.astype(np.float32)
    ids = np.array([3, 0, 10, 3, 7], dtype=np.int32)
    for id_arr in (ids, ids.astype(np.int64)):
        for nth in (1, 2):
            out = mm.dequantize_rows(raw, t, id_arr, n_threads=nth)
            assert out.dtype == np.float32 and np.array_equal(out, ref[ids])
    assert np.array_equal(mm.dequantize(raw, t), ref)
    many = np.arange(11, dtype=np.int64)[::-1].copy()
    assert np.array_equal(mm.dequantize_rows(raw, t, many, n_threads=2), ref[many])


# ---- GEMV / GEMM ----

@pytest.mark.parametrize("t", SUPPORTED + K_REPACKED, ids=type_name)
@pytest.mark.parametrize("n_tok", [1, 3, 17])
def test_matmul(t, n_tok):
    for si, (m, k) in enumerate(shapes_for(t)):
        raw, W = weights(t, (m, k), seed=100 * t + si)
        x = rand_x(n_tok, k, seed=si + n_tok)
        a = deq_acts(x, t)
        y1 = mm.matmul(raw, t, x, n_threads=1)
        y2 = mm.matmul(raw, t, x, n_threads=2)
        assert y1.shape == (n_tok, m) and y1.dtype == np.float32
        assert np.array_equal(y1, y2), "thread count changed the result"
        check_product(y1, W, x, a, t)
        # every GEMM row is the GEMV of its token: bit for bit, or to float rounding (within
        # both bounds) where the batch takes the packed 8-row GEMM; 1-D x gives 1-D out
        packed = mm.has_packed_gemm(t) and n_tok >= mm.PACKED_GEMM_MIN_TOKENS
        for i in (0, n_tok - 1):
            y_one = mm.matmul(raw, t, x[i], n_threads=2)
            if mm.amx_gemm(t, n_tok):  # both within their bounds of the float product
                bound = bf16_factor(k) * (np.abs(W) @ np.abs(x[i])) + np.abs(W) @ np.abs(x[i] - a[i]) \
                    + fp_factor(t, k) * (np.abs(W) @ np.abs(a[i]))
                assert np.all(np.abs(y_one - y1[i]) <= bound)
            elif packed:
                fp = fp_factor(t, k) * (np.abs(W) @ np.abs(a[i]))
                assert np.all(np.abs(y_one - y1[i]) <= 2 * fp)
            else:
                assert np.array_equal(y_one, y1[i])
        # out= is filled in place
        out = np.full((n_tok, m), np.nan, dtype=np.float32)
        assert mm.matmul(raw, t, x, out=out) is out and np.array_equal(out, y1)
        # the scalar C bodies meet the same bounds
        mm.set_force_scalar(True)
        ys = mm.matmul(raw, t, x, n_threads=2)
        mm.set_force_scalar(False)
        check_product(ys, W, x, deq_acts(x, t), t)
        if t in mm.INTERNAL_TYPES:  # and the original rows' results: to float rounding, or (the
            src = mm.INTERNAL_TYPES[t]  # packed GEMM, which packs them to the originals' blocks) exactly
            y0 = mm.matmul(random_weights(src, (m, k), seed=100 * t + si), src, x)
            if mm.amx_gemm(t, n_tok) != mm.amx_gemm(src, n_tok):  # one bf16, one not: each in its bound
                check_product(y0, W, x, deq_acts(x, src), src)
            else:
                assert np.all(np.abs(y0 - y1) <= 2 * fp_factor(t, k) * (np.abs(a) @ np.abs(W).T))
            if mm.amx_gemm(t, n_tok) == mm.amx_gemm(src, n_tok) and (packed or mm.amx_gemm(t, n_tok)):
                assert np.array_equal(y0, y1)  # the same blocks (packed) or the same decoded values (AMX)


@pytest.mark.parametrize("t", sorted(FLOAT_TYPES), ids=type_name)
def test_float_gemm_is_the_gemv(t):
    """the float types' GEMM (rows converted in the loop, K blocks of 512 float32 or 2048 fp16
    activation values) sums every output like the register tile: each GEMM row is its GEMV, bit for
    bit, across K tails, several K blocks, odd row counts and 6-token groups"""
    for k, n in [(7, 8), (263, 9), (520, 20), (2051, 133)]:
        raw, W = weights(t, (21, k), seed=k)
        x = rand_x(n, k, seed=n)
        y = mm.matmul(raw, t, x, n_threads=2)
        assert np.array_equal(y, mm.matmul(raw, t, x, n_threads=1))
        assert np.array_equal(y, np.stack([mm.matmul(raw, t, x[i]) for i in range(n)]))
        check_product(y, W, x, deq_acts(x, t), t)


@pytest.mark.parametrize("t", SUPPORTED + K_REPACKED, ids=type_name)
def test_matmul_batched(t):
    bs = block(t)
    k = bs * 2 if bs > 1 else 40
    B, m, n = 3, 9, 5
    raw, W = weights(t, (B, m, k), seed=7 + t)
    x = rand_x(B * n, k, seed=3).reshape(B, n, k)
    y1 = mm.matmul_batched(raw, t, x, n_threads=1)
    y2 = mm.matmul_batched(raw, t, x, n_threads=2)
    assert y1.shape == (B, n, m) and np.array_equal(y1, y2)
    for b in range(B):
        assert np.array_equal(y1[b], mm.matmul(raw[b], t, x[b]))
        check_product(y1[b], W[b], x[b], deq_acts(x[b], t), t)
    y_one = mm.matmul_batched(raw, t, x[:, :1].copy())
    assert np.array_equal(y_one[:, 0], y1[:, 0])


@pytest.mark.parametrize("t", [8, 20, 0, 1, 30, 12, 13, 14, 19] + K_REPACKED, ids=type_name)
def test_gemm_long_batch(t):
    """many tokens: crosses the GEMM's token chunks (and the packed path's row groups)"""
    m, k, n = 21, 2048, 133
    raw, W = weights(t, (m, k), seed=5)
    x = rand_x(n, k, seed=6)
    y1 = mm.matmul(raw, t, x, n_threads=1)
    assert np.array_equal(y1, mm.matmul(raw, t, x, n_threads=2))
    check_product(y1, W, x, deq_acts(x, t), t)
    if not mm.has_packed_gemm(t):
        assert np.array_equal(y1[n - 1], mm.matmul(raw, t, x[n - 1]))


@pytest.mark.parametrize("t", [8, 20, 0, 1, 12, 19] + K_REPACKED[:1], ids=type_name)
@pytest.mark.parametrize("n", [2049, 3075])
def test_gemm_token_chunks(t, n):
    """More tokens than two of the driver's token chunks (GEMM_CHUNK_TOKENS = 1024, as the
    decompressed prompt attention's kv_b GEMM over every cached row): a small remainder joins the
    last chunk and takes the same path, so each token's row equals the one computed in a call that
    starts at token 1024, and the whole product meets the float64 bound.  (Before that rule, 2049
    tokens ended in a chunk of one token, read in the GEMV's activation format: wrong rows.)"""
    m, k = 5, 256
    raw, W = weights(t, (m, k), seed=9)
    x = rand_x(n, k, seed=10)
    y = mm.matmul(raw, t, x, n_threads=2)
    check_product(y, W, x, deq_acts(x, t), t)
    assert np.array_equal(y[1024:], mm.matmul(raw, t, np.ascontiguousarray(x[1024:]), n_threads=2))


# ---- fused MoE ----

def silu(z):
    return z / (1.0 + np.exp(-z))


def moe_check(out, x, ids, ew, gates, ups, downs, gate_t, up_t, down_t):
    """out against float64 numpy with a bound derived from the three activation quantizations
    (bf16 roundings for an expert's batch that takes the AMX GEMM)."""
    N, K_out = out.shape
    ag, au = deq_acts(x, gate_t), deq_acts(x, up_t)
    x64 = x.astype(np.float64)
    counts = np.bincount(ids.ravel(), minlength=len(gates))

    def d_in(W, t, xr, ar, n):  # error of W . xr (quantized: ar) in the kernel's arithmetic for a batch of n
        if mm.amx_gemm(t, n):
            return bf16_factor(W.shape[1]) * (np.abs(W) @ np.abs(xr))
        return np.abs(W) @ np.abs(xr - ar) + fp_factor(t, W.shape[1]) * (np.abs(W) @ np.abs(ar))
    ref = np.zeros((N, K_out))
    bound = np.zeros((N, K_out))
    mag = np.zeros((N, K_out))
    for t in range(N):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            G, U, D = gates[e], ups[e], downs[e]
            g, u = G @ x64[t], U @ x64[t]
            dg, du = d_in(G, gate_t, x64[t], ag[t], counts[e]), d_in(U, up_t, x64[t], au[t], counts[e])
            h = silu(g) * u
            dh = 1.1 * dg * (np.abs(u) + du) + np.abs(silu(g)) * du  # |silu'| <= 1.1
            act = mm.block_geometry(down_t)[2]
            if mm.amx_gemm(down_t, counts[e]):  # bf16 h and D: both roundings in one factor
                y = D @ h
                dy = np.abs(D) @ dh + bf16_factor(D.shape[1]) * (np.abs(D) @ (np.abs(h) + dh))
                ref[t] += ew[t, j] * y
                bound[t] += abs(ew[t, j]) * dy
                mag[t] += abs(ew[t, j]) * (np.abs(D) @ np.abs(h))
                continue
            if act == "F32":
                step = np.zeros_like(h)
            elif act == "F16_S":  # half an fp16 ulp; subnormals: half of scale * 2^-24, scale <= amax * 2^-14
                step = (np.abs(h) + dh) * 2.0**-11 + (np.abs(h) + dh).max() * 2.0**-38
            else:  # one quantization step of the block (covers rounding, fp16 scale, flips)
                bs = 32 if act == "Q8_0" else 256
                amax = (np.abs(h) + dh).reshape(-1, bs).max(axis=1)
                step = np.repeat(amax / 127.0, bs)
            y = D @ h
            dy = np.abs(D) @ (dh + step) + fp_factor(down_t, D.shape[1]) * (np.abs(D) @ (np.abs(h) + dh + step))
            ref[t] += ew[t, j] * y
            bound[t] += abs(ew[t, j]) * dy
            mag[t] += abs(ew[t, j]) * (np.abs(D) @ np.abs(h))
    bound += 1e-6 * np.abs(ref).max()  # the float32 weighted sum over experts
    err = np.abs(out - ref)
    assert np.all(err <= bound), f"MoE worst {np.max(err / bound):.2f} of bound"
    check_moe_rms(err, ref, bound, mag)
    return bound


def check_moe_rms(err, ref, bound, mag):
    # The worst-case bound adds every rounding with the same sign; the errors of
    # random roundings add like a random walk, so the observed error must also be
    # small in the mean-square sense (a wrong expert, weight or SiLU gives O(1)).
    rel = np.sqrt(np.mean(err**2) / np.mean(ref**2))
    assert rel < 0.05, rel


MOE_COMBOS = [(t, t, t) for t in SUPPORTED] + [
    (19, 19, 20),  # the lite iq1_s mixture: gate/up IQ1_S, down IQ4_NL
    (12, 8, 1),    # gate and up with different activation formats, float down
    (1, 8, 0), (8, 30, 1),  # float and packed-integer gate / up: items of the packed GEMM's 16 rows
    (1012, 1012, 6), (1013, 1013, 1013), (1014, 1014, 1012),  # repacked k-quants (Q5_0 down: K = 1408)
    (1012, 12, 1014),  # repacked and original gate / up: transposed and natural q8_K
]


@pytest.mark.parametrize("t", [0, 1], ids=type_name)
def test_moe_float_rows_of_4k(t):
    """K = 1024 float32 activation rows are 4 KiB: the MoE's buffers pad them (batch_stride)"""
    E, k_used, K, F, K_out, n_tok = 3, 2, 1024, 40, 33, 12
    rng = np.random.default_rng(8)
    (gate, G), (up, U), (down, D) = (weights(t, shape, seed, scale=0.1) for shape, seed in
                                     [((E, F, K), 1), ((E, F, K), 2), ((E, K_out, F), 3)])
    x = rand_x(n_tok, K, seed=5)
    ids = np.stack([rng.permutation(E)[:k_used] for _ in range(n_tok)]).astype(np.int32)
    ew = rng.uniform(0.1, 1.0, size=(n_tok, k_used)).astype(np.float32)
    out = mm.moe_forward(x, ids, ew, gate, t, up, t, down, t, n_threads=2)
    assert np.array_equal(out, mm.moe_forward(x, ids, ew, gate, t, up, t, down, t, n_threads=1))
    moe_check(out, x, ids, ew, G, U, D, t, t, t)


@pytest.mark.parametrize("types", MOE_COMBOS, ids=lambda ts: "-".join(type_name(t) for t in ts))
@pytest.mark.parametrize("n_tok", [1, 3, 17])
def test_moe(types, n_tok):
    gate_t, up_t, down_t = types
    E, k_used, K_out = 5, 3, 33
    K = max(block(gate_t), block(up_t), 32) * 2
    F = max(block(down_t), 32) * 2 if block(down_t) > 1 else 40
    rng = np.random.default_rng(n_tok)
    (gate, G), (up, U), (down, D) = (weights(t, shape, seed, scale=0.1) for t, shape, seed in
                                     [(gate_t, (E, F, K), 1), (up_t, (E, F, K), 2), (down_t, (E, K_out, F), 3)])
    x = rand_x(n_tok, K, seed=4)
    ids = np.stack([rng.permutation(E)[:k_used] for _ in range(n_tok)]).astype(np.int32)
    ids[0, 1] = ids[0, 0]  # the same expert twice for one token is allowed
    ew = rng.uniform(0.1, 1.0, size=(n_tok, k_used)).astype(np.float32)
    out1 = mm.moe_forward(x, ids, ew, gate, gate_t, up, up_t, down, down_t, n_threads=1)
    out2 = mm.moe_forward(x, ids, ew, gate, gate_t, up, up_t, down, down_t, n_threads=2)
    assert out1.shape == (n_tok, K_out) and np.array_equal(out1, out2)
    bound = moe_check(out1, x, ids, ew, G, U, D, gate_t, up_t, down_t)
    # a token's result does not depend on the rest of the batch (bit for bit unless an expert's
    # group is large enough for the packed GEMM, which rounds differently: then within the bound)
    last = n_tok - 1
    single = mm.moe_forward(x[last:], ids[last:].copy(), ew[last:].copy(), gate, gate_t, up, up_t, down, down_t)
    group_max = np.bincount(ids.ravel(), minlength=E).max()
    if group_max >= mm.PACKED_GEMM_MIN_TOKENS and any(mm.has_packed_gemm(t) or mm.amx_gemm(t, group_max)
                                                      for t in types):
        assert np.all(np.abs(single[0] - out1[last]) <= 2 * bound[last])
    else:
        assert np.array_equal(single[0], out1[last])
    if gate_t == up_t:  # merged gate_up [E, 2F, row_bytes]: gate rows first
        merged = np.concatenate([gate, up], axis=1)
        outm = mm.moe_forward(x, ids, ew, merged, gate_t, None, gate_t, down, down_t, n_threads=2,
                              merged_gate_up=True)
        assert np.array_equal(outm, out1)
    if gate_t in (8, 20, 1):  # scalar bodies of the hot types
        mm.set_force_scalar(True)
        outs = mm.moe_forward(x, ids, ew, gate, gate_t, up, up_t, down, down_t)
        mm.set_force_scalar(False)
        moe_check(outs, x, ids, ew, G, U, D, gate_t, up_t, down_t)


# ---- the per-thread workspace ----

def _moe_inputs(t, n_tok, seed):
    E, k_used, K, F, K_out = 4, 2, 64, 96, 40
    rng = np.random.default_rng(seed)
    ws = [weights(t, shape, s, scale=0.1)[0] for shape, s in [((E, F, K), 1), ((E, F, K), 2), ((E, K_out, F), 3)]]
    x = rand_x(n_tok, K, seed=seed)
    ids = np.stack([rng.permutation(E)[:k_used] for _ in range(n_tok)]).astype(np.int32)
    ew = rng.uniform(0.1, 1.0, size=(n_tok, k_used)).astype(np.float32)
    return x, ids, ew, ws


def _moe(inputs, t, n_threads=1):
    x, ids, ew, (gate, up, down) = inputs
    return mm.moe_forward(x, ids, ew, gate, t, up, t, down, t, n_threads=n_threads)


@pytest.mark.parametrize("t", [1, 8], ids=type_name)
def test_workspace_kept_grown_and_released(t):
    """the calls' temporaries live in a per-thread arena kept between calls: it grows for a larger
    call (old contents never leak into a result), and release_workspace frees it"""
    small, big = _moe_inputs(t, 3, 1), _moe_inputs(t, 2000, 2)  # big: more than the first 2 MiB
    w, _ = weights(t, (70, 64), seed=9)
    mm.release_workspace()
    assert mm.workspace_bytes() == 0
    want_small, want_big, want_mm = _moe(small, t), _moe(big, t), mm.matmul(w, t, big[0])
    mm.release_workspace()
    y_small = _moe(small, t)
    held = mm.workspace_bytes()
    assert held > 0 and np.array_equal(y_small, want_small)
    assert np.array_equal(_moe(big, t), want_big) and mm.workspace_bytes() > held  # grown
    grown = mm.workspace_bytes()
    assert np.array_equal(_moe(small, t), want_small) and mm.workspace_bytes() == grown  # kept
    assert np.array_equal(mm.matmul(w, t, big[0]), want_mm)
    mm.release_workspace()
    assert mm.workspace_bytes() == 0 and np.array_equal(_moe(big, t), want_big)


def test_workspace_per_thread():
    """Python threads calling at once (the GIL released) each use their own arena"""
    import threading

    cases = [_moe_inputs(8, n, seed) for n, seed in [(200, 3), (150, 4), (260, 5), (90, 6)]]
    want = [_moe(c, 8) for c in cases]
    got = [None] * len(cases)

    def work(i):
        for _ in range(5):
            got[i] = _moe(cases[i], 8)
            if not np.array_equal(got[i], want[i]):
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


# ---- bad arguments ----

def test_bad_arguments_raise():
    raw = random_weights(8, (4, 64))
    x = rand_x(2, 64, 0)
    with pytest.raises(ValueError, match="unsupported weight type"):
        mm.matmul(raw, 3, x)  # Q4_1
    with pytest.raises(TypeError, match="dtype"):
        mm.matmul(raw.astype(np.int8), 8, x)
    with pytest.raises(TypeError, match="dtype"):
        mm.matmul(raw, 8, x.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        mm.matmul(raw, 8, x.tolist())
    with pytest.raises(ValueError, match="K=64"):
        mm.matmul(raw, 8, rand_x(2, 32, 0))
    with pytest.raises(ValueError, match="whole number"):
        mm.matmul(raw[:, :30].copy(), 8, x)
    with pytest.raises(ValueError, match="C-contiguous"):
        mm.matmul(raw, 8, np.asfortranarray(rand_x(64, 2, 0).T))
    with pytest.raises(ValueError, match="C-contiguous"):
        mm.matmul(np.concatenate([raw, raw], axis=1)[:, ::2], 8, x)
    with pytest.raises(ValueError, match="shape"):
        mm.matmul(raw, 8, x, out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        mm.matmul(raw, 8, x, n_threads=-1)
    with pytest.raises(ValueError, match="batches"):
        mm.matmul_batched(np.stack([raw, raw]), 8, x.reshape(1, 2, 64))
    with pytest.raises(ValueError, match="row_ids"):
        mm.dequantize_rows(raw, 8, np.array([4], dtype=np.int32))
    with pytest.raises(TypeError, match="row_ids"):
        mm.dequantize_rows(raw, 8, np.array([1.0]))
    with pytest.raises(ValueError, match="multiple of 32"):
        mm.quantize_q8_0(rand_x(1, 33, 0))


def test_bad_moe_arguments_raise():
    E, F, K, K_out = 3, 64, 64, 32
    gate = random_weights(8, (E, F, K))
    down = random_weights(8, (E, K_out, F))
    x = rand_x(2, K, 0)
    ids = np.array([[0, 2], [1, 1]], dtype=np.int32)
    ew = np.ones((2, 2), np.float32)
    ok = mm.moe_forward(x, ids, ew, gate, 8, gate, 8, down, 8)
    assert ok.shape == (2, K_out)
    with pytest.raises(ValueError, match="expert_ids must lie"):
        mm.moe_forward(x, ids + 1, ew, gate, 8, gate, 8, down, 8)
    with pytest.raises(TypeError, match="int32"):
        mm.moe_forward(x, ids.astype(np.int64), ew, gate, 8, gate, 8, down, 8)
    with pytest.raises(ValueError, match="expert_weights"):
        mm.moe_forward(x, ids, ew[:, :1].copy(), gate, 8, gate, 8, down, 8)
    with pytest.raises(ValueError, match="expert width"):
        mm.moe_forward(x, ids, ew, gate, 8, gate, 8, random_weights(8, (E, K_out, 2 * F)), 8)
    with pytest.raises(ValueError, match="up_raw=None"):
        mm.moe_forward(x, ids, ew, gate, 8, gate, 8, down, 8, merged_gate_up=True)
    with pytest.raises(ValueError, match="K=64"):
        mm.moe_forward(rand_x(2, 32, 0), ids, ew, gate, 8, gate, 8, down, 8)


# ---- the scalar build (minillm_kernels._scalar, compiled without SIMD flags: a path that only it
# compiles broke once without any other test noticing) ----

def test_scalar_build_agrees():
    sc = minillm_kernels.kernels("scalar").matmul
    assert not sc.simd_enabled() and sc.isa_level() == "scalar"
    ref = {}
    for t in sorted(sc.supported_types()):
        bs = sc.block_geometry(t)[0]
        k = 512 if bs > 1 else 77
        src = sc.INTERNAL_TYPES.get(t, t)
        raw = random_weights(src, (16 if t == R4 else 13, k), seed=src)  # (R4: groups of 4 rows)
        if t != src:
            raw = sc.repack(raw, src, target=t)[0]
        x = np.random.default_rng(src).standard_normal((5, k), dtype=np.float32)
        ref[t] = sc.matmul(raw, t, x)
        ref["q", t] = sc.quantize_activations(x, t)
    for t in SUPPORTED:
        bs = block(t)
        k = 512 if bs > 1 else 77
        raw = random_weights(t, (13, k), seed=t)
        x = np.random.default_rng(t).standard_normal((5, k), dtype=np.float32)
        assert np.array_equal(mm.quantize_activations(x, t), ref["q", t]), type_name(t)
        y = mm.matmul(raw, t, x)
        a = deq_acts(x, t)
        fp = 2 * fp_factor(t, k) * (np.abs(a) @ np.abs(deq_weights(raw, t)).T)
        assert np.all(np.abs(y - ref[t]) <= fp), type_name(t)
    # the repacked IQ1_S and IQ4_NL of the scalar build give the scalar originals' bits
    assert np.array_equal(ref[IQ1_S_R], ref[IQ1_S])
    assert np.array_equal(ref[IQ4_NL_R], ref[IQ4_NL])
    x = np.random.default_rng(IQ4_NL).standard_normal((5, 512), dtype=np.float32)
    assert np.array_equal(ref[R4], sc.matmul(random_weights(IQ4_NL, (16, 512), seed=IQ4_NL), IQ4_NL, x))
    # the repacked k-quants: their activations and results within the bound of the SIMD build's
    for t in K_REPACKED:
        src = mm.INTERNAL_TYPES[t]
        raw = random_weights(src, (13, 512), seed=src)
        x = np.random.default_rng(src).standard_normal((5, 512), dtype=np.float32)
        assert np.array_equal(mm.quantize_activations(x, t), ref["q", t]), type_name(t)
        y = mm.matmul(mm.repack(raw, src)[0], t, x)
        fp = 2 * fp_factor(t, 512) * (np.abs(deq_acts(x, t)) @ np.abs(deq_weights(raw, src)).T)
        assert np.all(np.abs(y - ref[t]) <= fp), type_name(t)


# ---- IQ1_S and IQ4_NL repacked (IQ1_S_R, IQ4_NL_R, load-time conversions): the originals' bits ----

BIT_IDENTICAL = [IQ1_S_R, IQ4_NL_R, R4]


def repacked_pair(t, shape, seed):
    """(random rows of t's GGUF type, the same rows repacked to t)"""
    raw = random_weights(mm.INTERNAL_TYPES[t], shape, seed=seed, scale=0.1)
    return raw, mm.repack(raw, mm.INTERNAL_TYPES[t], target=t)[0]


def iq1_s_pair(shape, seed):
    return repacked_pair(IQ1_S_R, shape, seed)


def test_repack_iq1_s_layout():
    raw, rep = iq1_s_pair((2, 3, 5 * 256), seed=1)
    assert rep.dtype == np.uint8 and rep.shape == (2, 3, 5 * 74) and rep.flags.c_contiguous
    for nth in (1, 2):
        assert np.array_equal(mm.repack_iq1_s(raw, n_threads=nth), rep)
    # rows (and blocks) are converted independently
    assert np.array_equal(mm.repack_iq1_s(raw[1, 2].copy()), rep[1, 2])
    assert np.array_equal(mm.repack_iq1_s(raw[0, 0, 50:100].copy()), rep[0, 0, 74:148])
    # the fp16 super-block scale is kept as the first two bytes of each block
    blocks, rblocks = raw.reshape(-1, 50), rep.reshape(-1, 74)
    assert np.array_equal(blocks[:, :2], rblocks[:, :2])
    assert mm.repack_iq1_s(np.empty((0, 50), np.uint8)).shape == (0, 74)


# IQ4_NL_R4's matrices: rows a multiple of 4, a multiple of 128 values
ROWS4_SHAPES = [(4, 128), (36, 640), (8, 2048)]


def test_repack_rows4_layout():
    """4 rows interleaved per block: the rows' 4 scales, then byte 16L + 4r + j of half H holds value
    16L + 4H + j of row r (low nibble) and the value 8 after it (high nibble)"""
    raw, rep = repacked_pair(R4, (2, 8, 3 * 128), seed=1)
    assert rep.shape == raw.shape and rep.dtype == np.uint8
    blocks = raw.reshape(2, 2, 4, 12, 18)                                # [matrix, group, row, block, byte]
    codes = np.concatenate([blocks[..., 2:] & 15, blocks[..., 2:] >> 4], axis=-1)  # [..., row, block, value]
    x4 = rep.reshape(2, 2, 12, 72)                                       # [matrix, group, block, byte]
    assert np.array_equal(x4[..., :8].reshape(2, 2, 12, 4, 2), blocks[..., :2].transpose(0, 1, 3, 2, 4))
    for h in range(2):
        for low_lane in range(2):
            for r in range(4):
                for j in range(4):
                    byte = x4[..., 8 + 32 * h + 16 * low_lane + 4 * r + j]
                    v = 16 * low_lane + 4 * h + j
                    assert np.array_equal(byte & 15, codes[:, :, r, :, v])
                    assert np.array_equal(byte >> 4, codes[:, :, r, :, v + 8])
    for nth in (1, 2):
        assert np.array_equal(mm.repack(raw, IQ4_NL, n_threads=nth, target=R4)[0], rep)


def test_repack_type_choice():
    """repack's default for IQ4_NL: 4 rows interleaved at the avx2 level where the matrix allows it"""
    rb = 2048 // 32 * 18
    want = R4 if mm.isa_level() == "avx2" else IQ4_NL_R
    assert mm.repack_type(IQ4_NL, (3, 8, rb)) == want
    assert mm.repack_type(IQ4_NL, (6, rb)) == IQ4_NL_R                   # rows not a multiple of 4
    assert mm.repack_type(IQ4_NL, (8, 5 * 18)) == IQ4_NL_R               # 160 values a row
    assert mm.repack_type(IQ4_NL, (rb,)) == IQ4_NL_R
    assert minillm_kernels.kernels("scalar").matmul.repack_type(IQ4_NL, (8, rb)) == IQ4_NL_R
    assert mm.repack_type(IQ1_S, (8, 512 // 256 * 50)) == IQ1_S_R
    raw = random_weights(IQ4_NL, (8, 2048))
    assert mm.repack(raw, IQ4_NL)[1] == want


def test_rows4_bad_shapes_raise():
    raw, rep = repacked_pair(R4, (8, 256), seed=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        mm.repack(raw[:6].copy(), IQ4_NL, target=R4)
    with pytest.raises(ValueError, match="multiple of 128"):
        mm.repack(random_weights(IQ4_NL, (8, 160)), IQ4_NL, target=R4)
    with pytest.raises(ValueError, match="no repack"):
        mm.repack(raw, IQ4_NL, target=IQ1_S_R)
    x = rand_x(1, 256, seed=0)
    with pytest.raises(ValueError, match="groups of 4"):
        mm.matmul(rep[:6].copy(), R4, x)
    with pytest.raises(ValueError, match="multiple of 128"):
        mm.matmul(rep[:, :90].copy(), R4, rand_x(1, 160, seed=0))
    with pytest.raises(ValueError, match="groups of 4"):
        mm.dequantize_rows(rep[:6].copy(), R4, np.array([0]))
    np.testing.assert_array_equal(mm.matmul(rep, R4, x), mm.matmul(raw, IQ4_NL, x))


def test_repack_iq4_nl_layout():
    """whole runs of 4 blocks become groups (4 scales, then the codes two blocks per 32 bytes);
    the blocks after the last whole group are kept as they are"""
    raw, rep = repacked_pair(IQ4_NL_R, (3, 7 * 32), seed=1)
    assert rep.shape == raw.shape and rep.dtype == np.uint8
    blocks = raw.reshape(3, 7, 18)
    assert np.array_equal(rep[:, 72:], raw[:, 72:])                      # blocks 4-6: the tail
    assert np.array_equal(rep[:, :8].reshape(3, 4, 2), blocks[:, :4, :2])  # the group's 4 scales
    codes = np.concatenate([blocks[:, :4, 2:] & 15, blocks[:, :4, 2:] >> 4], axis=2)  # [row, block, value]
    packed = rep[:, 8:72].reshape(3, 2, 32)
    for k in range(4):
        assert np.array_equal((packed[:, k // 2] >> (4 * (k % 2))) & 15, codes[:, k])
    for nth in (1, 2):
        assert np.array_equal(mm.repack(raw, IQ4_NL, n_threads=nth)[0], rep)


@pytest.mark.parametrize("t", BIT_IDENTICAL, ids=type_name)
@pytest.mark.parametrize("scalar", [False, True])
def test_repacked_dequantize_rows_match_gguf(t, scalar):
    mm.set_force_scalar(scalar)
    src, k = mm.INTERNAL_TYPES[t], 3 * block(t) + (32 if block(t) == 32 else 0)
    raw, rep = repacked_pair(t, (12 if t == R4 else 11, k), seed=2)
    ref = gguf_dequantize(raw, src)
    ids = np.array([3, 0, 10, 3, 7], dtype=np.int64)
    for nth in (1, 2):
        assert np.array_equal(mm.dequantize_rows(rep, t, ids, n_threads=nth), ref[ids])
    raw3, rep3 = repacked_pair(t, (2, 4, 512), seed=3)
    assert np.array_equal(mm.dequantize(rep3, t), gguf_dequantize(raw3, src))


@pytest.mark.parametrize("t", BIT_IDENTICAL, ids=type_name)
@pytest.mark.parametrize("n_tok", [1, 3, 17])
def test_repacked_matmul_bit_identical(t, n_tok):
    src = mm.INTERNAL_TYPES[t]
    for si, (m, k) in enumerate(ROWS4_SHAPES if t == R4 else shapes_for(src)):
        raw, rep = repacked_pair(t, (m, k), seed=10 + si)
        x = rand_x(n_tok, k, seed=si + n_tok)
        assert np.array_equal(mm.quantize_activations(x, t), mm.quantize_activations(x, src))
        y = mm.matmul(raw, src, x, n_threads=2)
        for nth in (1, 2):
            assert np.array_equal(mm.matmul(rep, t, x, n_threads=nth), y)
        y_gemv = mm.matmul(raw, src, x[n_tok - 1])
        assert np.array_equal(mm.matmul(rep, t, x[n_tok - 1]), y_gemv)  # GEMV
        if n_tok < mm.PACKED_GEMM_MIN_TOKENS:  # (the packed GEMM rounds differently: test_matmul)
            assert np.array_equal(y_gemv, y[n_tok - 1])
        # and, through the original type, within the derived bounds of the gguf.quants product
        check_product(y, deq_weights(raw, src), x, deq_acts(x, src), src)
        mm.set_force_scalar(True)  # the scalar bodies (IQ4_NL_R's are chosen at run time) agree too
        assert np.array_equal(mm.matmul(rep, t, x), mm.matmul(raw, src, x))
        mm.set_force_scalar(False)


@pytest.mark.parametrize("t", BIT_IDENTICAL, ids=type_name)
def test_repacked_matmul_batched_bit_identical(t):
    src = mm.INTERNAL_TYPES[t]
    raw, rep = repacked_pair(t, (3, 8 if t == R4 else 9, 512), seed=4)
    for n in (1, 5, 12):
        x = rand_x(3 * n, 512, seed=n).reshape(3, n, 512)
        y = mm.matmul_batched(raw, src, x, n_threads=2)
        for nth in (1, 2):
            assert np.array_equal(mm.matmul_batched(rep, t, x, n_threads=nth), y)


@pytest.mark.parametrize("n_tok", [1, 3, 17])
@pytest.mark.parametrize("types", [(IQ1_S_R, IQ1_S_R, IQ1_S_R), (IQ1_S_R, IQ1_S_R, IQ4_NL),
                                   (IQ1_S_R, IQ1_S, IQ4_NL), (IQ1_S, IQ1_S_R, 12),
                                   (IQ1_S_R, IQ1_S_R, IQ4_NL_R), (IQ4_NL_R, IQ4_NL_R, IQ4_NL_R),
                                   (IQ4_NL_R, IQ4_NL, IQ4_NL_R), (R4, R4, IQ4_NL_R), (R4, IQ4_NL, 8)],
                         ids=lambda ts: "-".join(mm.supported_types()[t] for t in ts))
def test_repacked_moe_bit_identical(types, n_tok):
    """gate/up/down in IQ1_S_R / IQ4_NL_R give the bits of the same experts in IQ1_S / IQ4_NL,
    mixed with other types too"""
    E, k_used, K, F, K_out = 5, 3, 512, 512, 33
    rng = np.random.default_rng(n_tok)
    orig = {}
    mats = []
    for i, (t, shape) in enumerate(zip(types, [(E, F, K), (E, F, K), (E, K_out, F)])):
        src = mm.INTERNAL_TYPES.get(t, t)
        raw = random_weights(src, shape, seed=20 + i, scale=0.1)
        orig[i] = (raw, src)
        mats.append((mm.repack(raw, src, target=t)[0] if t != src else raw, t))
    x = rand_x(n_tok, K, seed=5)
    ids = np.stack([rng.permutation(E)[:k_used] for _ in range(n_tok)]).astype(np.int32)
    ew = rng.uniform(0.1, 1.0, size=(n_tok, k_used)).astype(np.float32)
    (g, gt), (u, ut), (d, dt) = mats
    (g0, gt0), (u0, ut0), (d0, dt0) = orig[0], orig[1], orig[2]
    ref = mm.moe_forward(x, ids, ew, g0, gt0, u0, ut0, d0, dt0, n_threads=2)
    for nth in (1, 2):
        assert np.array_equal(mm.moe_forward(x, ids, ew, g, gt, u, ut, d, dt, n_threads=nth), ref)
    if gt == ut:  # merged gate_up, repacked as one tensor
        merged = np.concatenate([g0, u0], axis=1)
        if gt != gt0:
            merged = mm.repack(merged, gt0, target=gt)[0]
        outm = mm.moe_forward(x, ids, ew, merged, gt, None, ut, d, dt, merged_gate_up=True)
        assert np.array_equal(outm, ref)
    if n_tok == 3:  # the reference itself against numpy on gguf.quants weights
        deq = lambda a, t: [deq_weights(a[e], t) for e in range(E)]  # noqa: E731
        moe_check(ref, x, ids, ew, deq(g0, gt0), deq(u0, ut0), deq(d0, dt0), gt0, ut0, dt0)


def test_repack_bad_inputs_raise():
    raw = random_weights(IQ1_S, (4, 512))
    with pytest.raises(TypeError, match="numpy array"):
        mm.repack_iq1_s(raw.tolist())
    with pytest.raises(TypeError, match="dtype"):
        mm.repack_iq1_s(raw.view(np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        mm.repack_iq1_s(raw[::2])
    with pytest.raises(ValueError, match="IQ1_S blocks"):
        mm.repack_iq1_s(raw[:, :99].copy())
    with pytest.raises(ValueError, match="IQ1_S blocks"):
        mm.repack_iq1_s(np.empty((3, 0), np.uint8))
    with pytest.raises(ValueError, match="row axis"):
        mm.repack_iq1_s(np.array(5, np.uint8))
    with pytest.raises(ValueError, match="n_threads"):
        mm.repack_iq1_s(raw, n_threads=-2)
    # the generic repack: types without one, rows of the wrong size for the type named
    with pytest.raises(ValueError, match="no load-time repack"):
        mm.repack(random_weights(8, (2, 64)), 8)
    with pytest.raises(ValueError, match="no load-time repack"):
        mm.repack(mm.repack(random_weights(12, (2, 256)), 12)[0], mm.Q4_K_REPACKED)
    with pytest.raises(ValueError, match="Q5_K blocks"):
        mm.repack(random_weights(12, (2, 512)), 13)
    rep, t_r = mm.repack(random_weights(14, (2, 3, 512)), 14, n_threads=1)
    assert t_r == mm.Q6_K_REPACKED and rep.shape == (2, 3, 420)
    # un-repacked IQ1_S rows are not IQ1_S_R rows (100 bytes is not a whole number of 74-byte blocks)
    with pytest.raises(ValueError, match="whole number"):
        mm.matmul(raw, IQ1_S_R, rand_x(1, 512, 0))
    with pytest.raises(ValueError, match="whole number"):
        mm.dequantize_rows(raw, IQ1_S_R, np.array([0]))
