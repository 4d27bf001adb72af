"""MLA attention kernels against an independent numpy reference.

The reference is the PLAIN (non-absorbed) multi-head latent attention of
DeepSeek2, written here from the model definition: per head h,
    K_h[t] = [c_kv[t] · W_k^hᵀ ‖ k_pe[t]],  V_h[t] = c_kv[t] · W_v^hᵀ,
    out_h  = softmax_t(scale · q_h · K_h[t]) · V_h,
with c_kv RMS-normalized as the model does and attn_kv_b-style per-head weights
[k_nope rows | v rows].  The kernels compute the absorbed form (query through
W_k^h into the 512-wide latent space, latent output through W_v^h afterwards,
done here in numpy) over a cache stored as f16 / bf16 / q8_0 / q8_KV.

Two checks per case:
1. tight: the kernel against the absorbed attention computed in float64 on the rows
   the kernel computes with, and the query quantized the same way as the kernel (8-bit
   caches: one int16 scale per query row, max|x|/qmax, round half away from zero; on
   the AVX-512 tiles (attn.tile_int8_keys) an int8 query, qmax 127: q8_KV one scale per
   row, q8_0 one per 32-value block, whose scores then take the dequantized rows).
   Those rows are the dequantized cache, except on the tile path (kparallel and
   prefill) q8_0, which re-expresses each row as int16 values on one row scale, and
   f16/bf16 on the AVX2 and AVX-512 levels (attn.tile_int16), whose rows become int16 values on one
   scale per row and part (latent, rope), the query likewise per part: emulated exactly
   in tile_rows() and quantize_query().  What is left is fp32 accumulation order,
   |err| <= 2e-4 · max|ref| + 1e-6, plus, for the 8-bit caches, the integer value path
   of the tile kernels (int_value_bound()): per tile of 32 rows and head, the weights
   p'_t = P_t·vs_t (vs_t: the row's int16 unit; q8_KV: its stored d) are rounded to
   integers 0..pmax (pmax 32767 for q8_KV, 8191 for q8_0, f16, bf16), each off by at most
   0.5·max_tile(p')/pmax, which moves output d by at most
   Σ_tiles 0.5/pmax · max_{u∈tile}(P_u·vs_u) · Σ_{t∈tile}|x_t,d|/vs_t.
2. derived: the kernel against the plain reference on the exact c_kv.  With
   per-value storage error e[t,i] (f16: 2^-11·|x|, bf16: 2^-8·|x|, q8_0: d_block/2, plus
   0.65·vs_t on the tile path for the int16 re-expression (its rounding, and the rounding
   of a 15-bit block multiplier), q8_KV: d_row/2; f16/bf16 on int16 tiles: half a unit of
   the part more) and query quantization error u[i] (int16 queries: d_q/2, else 0), the
   score error is |Δs_t| <= scale·Σ_i(|q_i|·e[t,i] + |x_t,i|·u[i] + e[t,i]·u[i]) =: δ_t.
   Softmax shifts every weight by a factor in [exp(-2δ), exp(2δ)] with δ = max_t δ_t,
   so the latent output error is bounded by
       B_d = Σ_t p_t·e[t,d] + (exp(2δ)-1)·Σ_t p_t·(|x_t,d| + e[t,d]),
   and the head output error by |W_v^h|·B (+ fp32 slack 1e-5·max|ref|).
   On the "amx" level prompt processing's tile path runs on AMX tiles (csrc/amx_attention.h): every cache
   type's rows are the dequantized floats, the query is not quantized, and each product
   a·b is carried to 2^-13·|a·b| (operands split into two bf16 parts), so the scores gain
   δ_amx = 2^-13·scale·Σ_i|q_i·x_t,i| and the latent output 2^-13·Σ_t p_t·|x_t,d| (amx_error()).
   The bound is computed from the data of each case; the measured error must lie
   under it.  Additionally the relative error is checked against a loose fixed
   ceiling per type so the bound cannot silently grow large.
"""
import numpy as np
import pytest

from minillm.kv_cache import CACHE_TYPES, KVCache, cache_row_bytes
import minillm_kernels
from minillm_kernels import attention as attn

KV_LORA, ROPE, NOPE, VDIM, H = 512, 64, 128, 128, 16
WIDTH = KV_LORA + ROPE
SCALE = 1.0 / np.sqrt(NOPE + ROPE)
DEPTHS = (1, 37, 1000, 3000)
N_CTX = 3072
# loose relative-error ceilings (err / max|ref|), far above what rounding gives
REL_CEILING = {"f16": 2e-3, "bf16": 2e-2, "q8_0": 6e-2, "q8_KV": 6e-2}


# ----------------------------------------------------------------------------- model data
class Problem:
    """Random latent cache rows, per-head queries and attn_kv_b weights."""

    def __init__(self, n_tok, n_head=H, seed=0):
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((n_tok, KV_LORA))
        norm_w = rng.uniform(0.5, 1.5, KV_LORA)
        self.c_kv = c / np.sqrt((c * c).mean(axis=1, keepdims=True) + 1e-6) * norm_w  # RMS norm
        self.k_pe = rng.standard_normal((n_tok, ROPE))
        self.rows = np.concatenate([self.c_kv, self.k_pe], axis=1).astype(np.float32)
        self.c_kv = self.rows[:, :KV_LORA].astype(np.float64)
        self.k_pe = self.rows[:, KV_LORA:].astype(np.float64)
        # attn_kv_b: per head NOPE k rows then VDIM v rows, each KV_LORA wide
        kv_b = rng.standard_normal((n_head, NOPE + VDIM, KV_LORA)) / np.sqrt(KV_LORA)
        self.w_k, self.w_v = kv_b[:, :NOPE], kv_b[:, NOPE:]
        self.n_head = n_head
        self.rng = rng

    def queries(self, n):
        """n tokens of per-head q_nope, q_pe (float64) and the absorbed float32 q_lat."""
        q_nope = self.rng.standard_normal((n, self.n_head, NOPE)) * 2.0
        q_pe = self.rng.standard_normal((n, self.n_head, ROPE)) * 2.0
        q_lat = np.concatenate([np.einsum("nhk,hkl->nhl", q_nope, self.w_k), q_pe], axis=2)
        return q_nope, q_pe, q_lat.astype(np.float32)

    def plain(self, q_nope, q_pe, n_kv):
        """Non-absorbed MLA of one token over rows 0..n_kv-1 -> [H, VDIM] (float64)."""
        c, pe = self.c_kv[:n_kv], self.k_pe[:n_kv]
        out = np.empty((self.n_head, VDIM))
        for h in range(self.n_head):
            k = np.concatenate([c @ self.w_k[h].T, pe], axis=1)
            v = c @ self.w_v[h].T
            s = SCALE * (k @ np.concatenate([q_nope[h], q_pe[h]]))
            p = np.exp(s - s.max())
            out[h] = (p / p.sum()) @ v
        return out

    def up(self, o_lat):
        """attn_v_b applied to latent outputs [H, KV_LORA] -> [H, VDIM]."""
        return np.einsum("hl,hvl->hv", o_lat.astype(np.float64), self.w_v)


# ----------------------------------------------------------------------------- numpy quantizers
def round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# largest |int16 value| of a cached row: q8_KV its int8 values, q8_0 the re-expressed ones (127·64),
# f16/bf16 on the int16 tiles (attn.tile_int16) each part's largest value mapped to 8191
KMAX = {"q8_KV": 127, "q8_0": 127 * 64, "f16": 8191, "bf16": 8191}
HALF_SLICE = 32  # the f16/bf16 int16 tiles sum scores in int32 over slices of this many values


def query_qmax(cache_type, path="tile", width=WIDTH):
    """Largest integer query value: on the tiles with int8 keys (q8_KV on AVX-512, vpdpbusd) an
    int8 query; else int16, as large as a score's int32 sum of width products |k|·|q| allows (the
    half caches: a slice's)."""
    if path == "tile" and attn.tile_int8_keys(cache_type):
        return 127  # q8_0: per 32-value block (query_parts)
    n = HALF_SLICE if cache_type in ("f16", "bf16") else width
    return min(32767, (2**31 - 1) // (KMAX[cache_type] * n))


def int16_tiles(cache_type, path):
    """True where `path` multiplies this cache type's rows and the query as int16 values."""
    return path == "tile" and attn.tile_int16(cache_type) or path == "heads" and cache_type not in ("f16", "bf16")


def int8_block_keys(cache_type, path):
    """True where `path` multiplies q8_0 rows as int8 keys: per 32-value block, against a query
    quantized per block, the scores on the dequantized rows (the values stay int16 rows)."""
    return path == "tile" and cache_type == "q8_0" and attn.tile_int8_keys(cache_type)


def query_parts(cache_type, path):
    """The slices of a query row that get one quantization scale each on `path`."""
    if int8_block_keys(cache_type, path):
        return [slice(i, i + 32) for i in range(0, WIDTH, 32)]
    if cache_type in ("f16", "bf16"):
        return [slice(0, KV_LORA), slice(KV_LORA, WIDTH)]
    return [slice(0, WIDTH)]


def quantize_query(q, cache_type, path):
    """The query (rows already scaled, float32) as the kernel quantizes it on `path` (dequantized),
    and its per-value error bound: one scale per row and part (query_parts), max|x|/qmax, halves
    rounded away from zero."""
    if not int16_tiles(cache_type, path):
        q = q.astype(np.float64)
        return q, np.zeros_like(q)
    deq, err = np.zeros(q.shape), np.zeros(q.shape)
    for part in query_parts(cache_type, path):
        q32 = q[:, part].astype(np.float32)
        d = np.abs(q32).max(axis=1, keepdims=True) / np.float32(query_qmax(cache_type, path))
        with np.errstate(divide="ignore"):
            inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        deq[:, part] = round_away(q32 * inv) * d.astype(np.float64)
        err[:, part] = d.astype(np.float64) / 2
    return deq, err


def tile_rows(layer, cache_type, n):
    """The first n cached rows as the tile path (kparallel, prefill) computes with them:
    float64 rows, for int16 rows each row's int16 unit of the values (else None), and a bound on
    what the int16 rows add to the storage error per value (zeros for float rows).  q8_0 rows
    are re-expressed on the largest block scale s of the row (csrc/attention.c,
    q8_0_row_to_i16): M_b = rint(d_b·(32767/s)), k16 = (q·64·M_b + 2^14) >> 15 (vpmulhrsw),
    unit = s·(32768/32767/64), all in float32 as the C code does.  f16/bf16 rows on the int16
    tiles (half_part_to_i16): per part, a = max|x|, k16 = rint(x·(8191/a)), unit a/8191 in
    float32, off by half a unit (and x·(8191/a)'s float32 rounding)."""
    if cache_type == "q8_0":
        blocks = layer[:n].reshape(n, WIDTH // 32, 34)
        d = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)[:, :, 0]
        q = blocks[:, :, 2:].view(np.int8).astype(np.int64)
        s = d.max(axis=1)
        with np.errstate(divide="ignore"):
            ia = np.where(s > 0, np.float32(32767) / s, np.float32(0)).astype(np.float32)
        m = np.rint((d * ia[:, None]).astype(np.float32)).astype(np.int64)
        k16 = (q * 64 * m[:, :, None] + 16384) >> 15
        unit = (s * (np.float32(32768) / np.float32(32767) / np.float32(64))).astype(np.float32)
        return (k16.reshape(n, WIDTH) * unit[:, None].astype(np.float64)), unit.astype(np.float64), \
            np.broadcast_to(0.65 * unit[:, None].astype(np.float64), (n, WIDTH))
    x32 = attn.kv_cache_load(layer, cache_type, 0, n)
    x = x32.astype(np.float64)
    if cache_type == "q8_KV":
        return x, layer[:n, :4].copy().view(np.float32)[:, 0].astype(np.float64), np.zeros_like(x)
    if not attn.tile_int16(cache_type):
        return x, None, np.zeros_like(x)
    units, rerr = [], np.zeros_like(x)
    for part in (slice(0, KV_LORA), slice(KV_LORA, WIDTH)):
        a = np.abs(x32[:, part]).max(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            inv = np.where(a > 0, np.float32(KMAX[cache_type]) / a, np.float32(0)).astype(np.float32)
        unit = (a / np.float32(KMAX[cache_type])).astype(np.float32).astype(np.float64)
        x[:, part] = np.rint((x32[:, part] * inv).astype(np.float32)) * unit
        rerr[:, part] = 0.5005 * unit
        units.append(unit[:, 0])
    return x, units[0], rerr


def storage_error(rows, cache_type):
    """Per-value bound on |stored - exact| for each cache type."""
    a = np.abs(rows.astype(np.float64))
    if cache_type == "f16":
        return a * 2.0**-11 + 2.0**-25
    if cache_type == "bf16":
        return a * 2.0**-8
    if cache_type == "q8_0":
        d = a.reshape(len(rows), -1, 32).max(axis=2, keepdims=True) / 127.0
        # half a quantum, with the scale rounded to f16 (relative 2^-11) on top
        return np.broadcast_to(d * (0.5 + 127 * 2.0**-11) * 1.001, (len(rows), WIDTH // 32, 32)).reshape(rows.shape)
    d = a.max(axis=1, keepdims=True) / 127.0
    return np.broadcast_to(d * 0.5 * 1.001, rows.shape)


TILE = 32  # rows per tile of the kernels' integer value path (csrc/attention.c)
PMAX = {"q8_KV": 32767.0, "q8_0": 8191.0, "f16": 8191.0, "bf16": 8191.0}


def int_value_bound(x, unit, p, cache_type):
    """Bound [H, KV_LORA] on what the integer value path adds (see the module docstring).

    x, unit: tile_rows() of the cache; p: softmax weights [H, n] (rows sum to 1)."""
    if unit is None:  # the heads path and float rows: float values
        return 0.0
    xv = np.abs(x[:, :KV_LORA])
    vs = np.maximum(unit, 1e-30)
    bound = np.zeros((p.shape[0], KV_LORA))
    for t0 in range(0, len(x), TILE):
        sl = slice(t0, t0 + TILE)
        step = (p[:, sl] * vs[sl]).max(axis=1) / PMAX[cache_type]  # [H]
        bound += 0.5 * step[:, None] * (xv[sl] / vs[sl, None]).sum(axis=0)[None, :]
    return bound * 1.01


def softmax_rows(s):
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def kernel_operands(kv, ct, q_lat, n_kv, path):
    """(key rows, value rows, units, quantized query, its error) the kernel computes with on
    `path` ("heads": the dequantized rows; "tile": see tile_rows, and the dequantized rows as
    the keys where q8_0 takes int8 keys; "amx": the dequantized rows and the float query)."""
    if path == "tile":
        x, unit, _ = tile_rows(kv.layer(0), ct, n_kv)
    else:
        x, unit = kv.load(0, 0, n_kv).astype(np.float64), None
    keys = kv.load(0, 0, n_kv).astype(np.float64) if int8_block_keys(ct, path) else x
    qd, qerr = quantize_query(q_lat * np.float32(SCALE), ct, path)
    return keys, x, unit, qd, qerr


AMX_PRODUCT = 2.0**-13  # relative error of one product on the AMX tiles (csrc/amx_attention.h)


def amx_error(path, qd, x, p):
    """(score error δ_amx per query row, latent output error [H, KV_LORA]) the AMX tiles add
    on `path` (zeros elsewhere); qd already scaled, p the softmax weights."""
    if path != "amx":
        return np.zeros(len(qd)), 0.0
    return AMX_PRODUCT * (np.abs(qd) @ np.abs(x).T).max(axis=1), AMX_PRODUCT * (p @ np.abs(x[:, :KV_LORA]))


def prefill_path():
    return "amx" if attn.amx_on() else "tile"


def decode_path(strategy, n_kv, threads):
    if strategy == "auto":
        strategy = attn.choose_strategy(n_kv, threads)
    return "heads" if strategy == "heads" else "tile"


def tight_check(out, kv, ct, q_lat, n_kv, path, rel):
    """out against the float64 result on the operands of `path`: fp32 summation (rel·max), the
    integer value path's and the AMX tiles' bounds"""
    keys, x, unit, qd, _ = kernel_operands(kv, ct, q_lat, n_kv, path)
    p = softmax_rows(qd @ keys.T)
    tight = p @ x[:, :KV_LORA]
    d_amx, o_amx = amx_error(path, qd, x, p)
    tol = rel * np.abs(tight).max() + rel / 200 + int_value_bound(x, unit, p, ct)
    tol = tol + o_amx + np.expm1(2 * d_amx)[:, None] * (p @ np.abs(x[:, :KV_LORA]))
    assert (np.abs(out - tight) <= tol).all(), (ct, n_kv, path)


def make_cache(rows, cache_type, n_ctx=N_CTX):
    kv = KVCache(1, n_ctx, cache_type, WIDTH)
    kv.store(0, 0, rows)
    return kv


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def problem():
    return Problem(max(DEPTHS), seed=1)


@pytest.fixture(scope="module")
def caches(problem):
    return {ct: make_cache(problem.rows, ct) for ct in CACHE_TYPES}


@pytest.fixture(scope="module")
def token(problem):
    q_nope, q_pe, q_lat = problem.queries(1)
    refs = {n: problem.plain(q_nope[0], q_pe[0], n) for n in DEPTHS}
    return q_lat[0], refs


# ----------------------------------------------------------------------------- cache format
def test_row_bytes_agree():
    for ct in CACHE_TYPES:
        assert attn.row_bytes(ct, WIDTH) == cache_row_bytes(ct, WIDTH)
    assert cache_row_bytes("q8_0", 576) == 18 * 34 == 612
    kv = KVCache(3, 100, "q8_KV")
    assert kv.nbytes == 3 * 100 * 584 and kv.layer(2).shape == (100, 584)


def test_stored_bytes_match_independent_formats(problem):
    import gguf
    from gguf.quants import quantize

    rows = problem.rows[:200]
    f16 = make_cache(rows, "f16", 200).layer(0)
    assert np.array_equal(f16.view(np.float16), rows.astype(np.float16))

    bf = make_cache(rows, "bf16", 200).layer(0).view(np.uint16)
    bits = rows.view(np.uint32).astype(np.uint64)
    expect = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(bf, expect)

    q8 = make_cache(rows, "q8_0", 200).layer(0)
    ref = quantize(rows, gguf.GGMLQuantizationType.Q8_0).reshape(q8.shape)
    blocks, rblocks = q8.reshape(200, 18, 34), ref.reshape(200, 18, 34)
    assert np.array_equal(blocks[:, :, :2], rblocks[:, :, :2])  # f16 scales
    diff = np.abs(blocks[:, :, 2:].view(np.int8).astype(int) - rblocks[:, :, 2:].view(np.int8).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only exact .5 ties may round differently

    kv = make_cache(rows, "q8_KV", 200).layer(0)
    d = kv[:, :4].copy().view(np.float32)[:, 0]
    s = kv[:, 4:8].copy().view(np.int32)[:, 0]
    q = kv[:, 8:].view(np.int8)
    assert np.allclose(d, np.abs(rows).max(axis=1) / 127, rtol=1e-6)
    assert np.array_equal(q, round_away(rows / d[:, None].astype(np.float32)).astype(np.int8))
    assert np.array_equal(s, q.astype(np.int32).sum(axis=1))


@pytest.mark.parametrize("ct", CACHE_TYPES)
def test_load_is_dequantization(problem, caches, ct):
    deq = caches[ct].load(0, 0, 300)
    err = np.abs(deq - problem.rows[:300])
    assert (err <= storage_error(problem.rows[:300], ct)).all()


# ----------------------------------------------------------------------------- decode
def check_decode(problem, kv, ct, q_lat, ref_plain, n_kv, strategy, threads):
    out = np.full((problem.n_head, KV_LORA), np.nan, np.float32)
    used = attn.mla_decode(q_lat, kv.layer(0), ct, n_kv, SCALE, out, strategy, threads)
    assert used == strategy or strategy == "auto"
    path = decode_path(strategy, n_kv, threads)
    keys, x, unit, qd, qerr = kernel_operands(kv, ct, q_lat, n_kv, path)

    # 1. tight: same quantized operands, float64 reference arithmetic
    p = softmax_rows(qd @ keys.T)
    tight = p @ x[:, :KV_LORA]
    d_amx, o_amx = amx_error(path, qd, x, p)
    tol = 2e-4 * np.abs(tight).max() + 1e-6 + int_value_bound(x, unit, p, ct)
    tol = tol + o_amx + np.expm1(2 * d_amx)[:, None] * (p @ np.abs(x[:, :KV_LORA]))
    assert (np.abs(out - tight) <= tol).all(), (ct, n_kv, strategy, threads)

    # 2. derived bound against the plain (non-absorbed, unquantized) attention
    exact = problem.rows[:n_kv].astype(np.float64)
    e = storage_error(problem.rows[:n_kv], ct)
    if path == "tile":
        e = e + tile_rows(kv.layer(0), ct, n_kv)[2]
    q_exact = q_lat.astype(np.float64) * SCALE
    delta = (np.abs(q_exact) @ e.T + qerr @ np.abs(exact).T + qerr @ e.T).max() + np.max(d_amx)
    s_ex = q_exact @ exact.T
    p_ex = np.exp(s_ex - s_ex.max(axis=1, keepdims=True))
    p_ex /= p_ex.sum(axis=1, keepdims=True)
    ev = e[:, :KV_LORA]
    bound_lat = p_ex @ ev + np.expm1(2 * delta) * (p_ex @ (np.abs(exact[:, :KV_LORA]) + ev))
    bound_lat = bound_lat + int_value_bound(x, unit, p, ct) + o_amx
    bound = np.einsum("hl,hvl->hv", bound_lat, np.abs(problem.w_v))
    got = problem.up(out)
    err = np.abs(got - ref_plain)
    slack = 1e-5 * np.abs(ref_plain).max()
    assert (err <= bound + slack).all(), (ct, n_kv, strategy, threads, err.max(), bound.max())
    assert err.max() <= REL_CEILING[ct] * np.abs(ref_plain).max(), (ct, err.max())
    return out


@pytest.mark.parametrize("ct", CACHE_TYPES)
@pytest.mark.parametrize("strategy", ["heads", "kparallel"])
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_matches_plain_mla(problem, caches, token, ct, strategy, threads):
    q_lat, refs = token
    for n_kv in DEPTHS:
        check_decode(problem, caches[ct], ct, q_lat, refs[n_kv], n_kv, strategy, threads)


@pytest.mark.parametrize("ct", CACHE_TYPES)
def test_strategies_agree(problem, caches, token, ct):
    """heads and kparallel, 1 and 2 threads: each the same as its path's float64 result
    on the same operands up to fp32 summation order (plus, on the tile path of the 8-bit
    caches, the integer value path); the two paths differ only in their operands (q8_0)."""
    q_lat, _ = token
    n_kv = 2500
    for strategy, threads in [("heads", 1), ("heads", 2), ("kparallel", 1), ("kparallel", 2), ("auto", 2)]:
        out = np.zeros((H, KV_LORA), np.float32)
        attn.mla_decode(q_lat, caches[ct].layer(0), ct, n_kv, SCALE, out, strategy, threads)
        tight_check(out, caches[ct], ct, q_lat, n_kv, decode_path(strategy, n_kv, threads), 2e-5)


@pytest.mark.parametrize("n_head", [3, 20])
def test_head_counts_other_than_16(n_head):
    prob = Problem(200, n_head=n_head, seed=5)
    q_nope, q_pe, q_lat = prob.queries(1)
    kv = make_cache(prob.rows, "f16", 256)
    for strategy in ("heads", "kparallel"):
        check_decode(prob, kv, "f16", q_lat[0], prob.plain(q_nope[0], q_pe[0], 150), 150, strategy, 2)


# ----------------------------------------------------------------------------- prefill
@pytest.mark.parametrize("ct", CACHE_TYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_prefill_equals_token_by_token(ct, threads):
    prob = Problem(160, seed=7)
    pos0, n_new = 103, 57  # a prompt continuing an existing cache, not a multiple of any tile
    _, _, q_lat = prob.queries(n_new)
    # batch path: earlier tokens, then the new batch stored at once and attended in one call
    batch = KVCache(1, 200, ct)
    batch.store(0, 0, prob.rows[:pos0])
    batch.store(0, pos0, prob.rows[pos0:pos0 + n_new])
    out_b = np.zeros((n_new, H, KV_LORA), np.float32)
    attn.mla_prefill(q_lat, batch.layer(0), ct, pos0, SCALE, out_b, threads)
    # token by token: store one row, decode over everything so far.  Same arithmetic up to
    # summation order; on the integer value path a weight may round to the neighbouring
    # integer (running maxima differ between the two paths), so twice its bound is allowed.
    # On AMX the batch takes other operands: each output against its own float64 result.
    amx = prefill_path() == "amx"
    step = KVCache(1, 200, ct)
    step.store(0, 0, prob.rows[:pos0])
    for i in range(n_new):
        step.store(0, pos0 + i, prob.rows[pos0 + i:pos0 + i + 1])
        out = np.zeros((H, KV_LORA), np.float32)
        attn.mla_decode(q_lat[i], step.layer(0), ct, pos0 + i + 1, SCALE, out, "kparallel", threads)
        if amx:
            tight_check(out_b[i], batch, ct, q_lat[i], pos0 + i + 1, "amx", 2e-5)
            tight_check(out, step, ct, q_lat[i], pos0 + i + 1, "tile", 2e-5)
            continue
        tol = 1e-5 * np.abs(out).max() + 1e-7
        if attn.tile_int16(ct):
            keys, x, unit, qd, _ = kernel_operands(batch, ct, q_lat[i], pos0 + i + 1, "tile")
            tol = tol + 2 * int_value_bound(x, unit, softmax_rows(qd @ keys.T), ct)
        assert (np.abs(out - out_b[i]) <= tol).all(), (ct, i)
    assert np.array_equal(batch.layer(0), step.layer(0))


@pytest.mark.parametrize("ct", ["f16", "bf16"])
@pytest.mark.parametrize("col, bits", [(5, {"f16": 0x7C00, "bf16": 0x7F80}), (530, {"f16": 0x7E00, "bf16": 0x7FC0})])
def test_nonfinite_half_rows_give_nan(ct, col, bits):
    """An inf in a row's latent part, a NaN in its rope part (as an f16 cache holds after storing
    a value past 65504): on the int16 tiles every output that sees the row is NaN, never a finite
    number from the int16 codes; outputs that do not see it stay finite.  On float rows the float
    arithmetic carries them (an inf in the values: not finite)."""
    prob = Problem(200, seed=3)
    _, _, q_lat = prob.queries(4)
    kv = make_cache(prob.rows, ct, 256)
    kv.layer(0)[100, 2 * col:2 * col + 2] = np.frombuffer(np.uint16(bits[ct]).tobytes(), np.uint8)
    out = np.zeros((H, KV_LORA), np.float32)
    attn.mla_decode(q_lat[0], kv.layer(0), ct, 100, SCALE, out, "kparallel", 2)
    assert np.isfinite(out).all()
    attn.mla_decode(q_lat[0], kv.layer(0), ct, 150, SCALE, out, "kparallel", 2)
    out_p = np.zeros((4, H, KV_LORA), np.float32)
    attn.mla_prefill(q_lat, kv.layer(0), ct, 98, SCALE, out_p, 2)  # positions 98 .. 101
    assert np.isfinite(out_p[:2]).all()
    if attn.tile_int16(ct):
        assert np.isnan(out).all()
        if not attn.amx_on():
            assert np.isnan(out_p[2:]).all()
    elif col < KV_LORA:
        assert not np.isfinite(out).all()


def test_prefill_from_empty_cache_matches_plain():
    prob = Problem(70, seed=9)
    q_nope, q_pe, q_lat = prob.queries(70)
    kv = make_cache(prob.rows, "f16", 80)
    out = np.zeros((70, H, KV_LORA), np.float32)
    attn.mla_prefill(q_lat, kv.layer(0), "f16", 0, SCALE, out, 2)
    for i in (0, 1, 31, 32, 69):
        ref = prob.plain(q_nope[i], q_pe[i], i + 1)
        assert np.abs(prob.up(out[i]) - ref).max() <= 2e-3 * np.abs(ref).max()
        tight_check(out[i], kv, "f16", q_lat[i], i + 1, prefill_path(), 2e-5)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise(caches, token):
    q_lat, _ = token
    cache = caches["f16"].layer(0)
    out = np.zeros((H, KV_LORA), np.float32)
    ok = dict(q_lat=q_lat, cache=cache, cache_type="f16", n_kv=10, scale=SCALE, out=out)

    def call(**kw):
        args = {**ok, **kw}
        return attn.mla_decode(args["q_lat"], args["cache"], args["cache_type"], args["n_kv"],
                               args["scale"], args["out"], kw.get("strategy", "auto"), kw.get("n_threads", 0))

    call()
    bad = [
        dict(q_lat=q_lat.astype(np.float64)),
        dict(q_lat=np.asfortranarray(np.zeros((H, WIDTH), np.float32))[:, :]),
        dict(q_lat=np.zeros((H, WIDTH + 32), np.float32)),  # row width disagrees with the cache
        dict(q_lat=np.zeros((H, 100), np.float32)),
        dict(q_lat=np.full((H, WIDTH), np.nan, np.float32)),
        dict(out=np.zeros((H + 1, KV_LORA), np.float32)),
        dict(out=np.zeros((H, 100), np.float32)),
        dict(out=np.zeros((H, KV_LORA), np.float32)[:, ::1].T.copy().T),
        dict(n_kv=0), dict(n_kv=N_CTX + 1),
        dict(cache_type="q4_0"), dict(cache_type="q8_0"),  # q8_0 rows are 612 bytes, not 1152
        dict(cache=cache.astype(np.int16)), dict(cache=cache[:, :-2]),
        dict(scale=float("inf")),
        dict(strategy="rows"), dict(n_threads=-1),
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            call(**kw)
    with pytest.raises(ValueError, match="context too long"):
        KVCache(1, 10, "q8_0").store(0, 8, np.zeros((3, WIDTH), np.float32))
    with pytest.raises(ValueError):
        KVCache(1, 10, "q8_0").store(0, 0, np.zeros((3, WIDTH), np.float64))
    with pytest.raises(ValueError):
        KVCache(1, 10, "q8_0").store(0, 0, np.full((1, WIDTH), np.inf, np.float32))
    with pytest.raises(ValueError):
        KVCache(1, 10, "q5_0")
    with pytest.raises(ValueError):
        attn.mla_prefill(np.zeros((4, H, WIDTH), np.float32), cache, "f16", N_CTX - 2, SCALE,
                         np.zeros((4, H, KV_LORA), np.float32))
    with pytest.raises(ValueError):
        attn.mla_prefill(np.zeros((4, H, WIDTH), np.float32), cache, "f16", 0, SCALE,
                         np.zeros((4, H + 1, KV_LORA), np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at", [0, 7, -1])
def test_one_nonfinite_value_is_refused(caches, token, value, at):
    """Queries and rows are checked for NaN and inf value by value (in C, see _check_finite): one
    anywhere is refused; the largest finite float32 is not."""
    q_lat, _ = token
    cache = caches["f16"].layer(0).copy()
    out = np.zeros((H, KV_LORA), np.float32)
    q = q_lat.copy()
    q.reshape(-1)[at] = value
    with pytest.raises(ValueError, match="NaN or infinity"):
        attn.mla_decode(q, cache, "f16", 10, SCALE, out, "kparallel", 1)
    with pytest.raises(ValueError, match="NaN or infinity"):
        attn.mla_prefill(q[None], cache, "f16", 9, SCALE, out[None], 1)
    with pytest.raises(ValueError, match="NaN or infinity"):
        attn.kv_cache_store(cache, "f16", 3, q)
    q.reshape(-1)[at] = np.copysign(np.finfo(np.float32).max, value)
    attn.mla_decode(q, cache, "f16", 10, SCALE, out, "kparallel", 1)


def test_auto_reports_the_strategy_it_chose(caches, token):
    q_lat, _ = token
    out = np.zeros((H, KV_LORA), np.float32)
    for n_kv, threads in [(1, 1), (20, 1), (8, 2), (3000, 2)]:
        used = attn.mla_decode(q_lat, caches["f16"].layer(0), "f16", n_kv, SCALE, out, "auto", threads)
        assert used == attn.choose_strategy(n_kv, threads)
    assert attn.choose_strategy(8, 2) == "heads" and attn.choose_strategy(3000, 2) == "kparallel"


# ----------------------------------------------------------------------------- decompressed prompt attention
def mha_reference(q, kvb, kr, pos0, scale, dv):
    """float64 causal attention per head: k = kvb[:, h, :dn] | kr, v = kvb[:, h, dn:]"""
    N, H, dk = q.shape
    dn = kvb.shape[2] - dv
    out = np.zeros((N, H, dv))
    for h in range(H):
        k = np.concatenate([kvb[:, h, :dn], kr], axis=1).astype(np.float64)
        v = kvb[:, h, dn:].astype(np.float64)
        for i in range(N):
            s = k[:pos0 + i + 1] @ q[i, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[i, h] = p @ v[:pos0 + i + 1] / p.sum()
    return out


# the int16 form of the decompressed rows on the avx2/avx512/amx levels (csrc/attention.c)
KMAX_MHA, VMAX_MHA, PMAX_MHA = 8191, 8191, 8191.0


def mha_int16_bound(q, kvb, kr, pos0, scale, dv):
    """Bound [N, H, dv] on what the int16 rows add (avx2 and up), derived like the 8-bit caches':
    keys k = k_nope | k_rope on one unit per row kd_t = max|k_t| / KMAX_MHA, the scaled query on
    qd_i = max|scale·q_i| / qmax (qmax = (2^31 - 1) // the head's largest Σ|k16|, the kernel's k16
    recomputed here in float32 as it rounds them), each value off by half its unit,
    so a score moves by δ_it <= Σ_d (|scale·q_d|·kd_t/2 + |k_d|·qd_i/2 + kd_t·qd_i/4) and every
    weight by a factor within exp(±2δ_i), δ_i = max_t δ_it: (exp(2δ_i) - 1)·Σ_t p_t·|v_t|.  Values
    on vd_t = max|v_t| / VMAX_MHA: Σ_t p_t·vd_t/2.  The weights p_t·vd_t rounded per tile of 32
    rows to PMAX_MHA steps of their largest: Σ_tiles 0.5·max_tile(p·vd)/PMAX·Σ_tile |v_t|/vd_t."""
    N, H, dk = q.shape
    dn = kvb.shape[2] - dv
    bound = np.zeros((N, H, dv))
    for h in range(H):
        k32 = np.concatenate([kvb[:, h, :dn], kr], axis=1)
        amax = np.abs(k32).max(axis=1, keepdims=True)
        k16 = np.rint(k32 * (np.float32(KMAX_MHA) / np.where(amax > 0, amax, np.float32(1))))
        qmax = min(32767, (2**31 - 1) // max(int(np.abs(k16).sum(axis=1).max()), 1))
        k = k32.astype(np.float64)
        v = kvb[:, h, dn:].astype(np.float64)
        kd = np.abs(k).max(axis=1) / KMAX_MHA
        vd = np.maximum(np.abs(v).max(axis=1) / VMAX_MHA, 1e-30)
        for i in range(N):
            n = pos0 + i + 1
            qs = scale * q[i, h].astype(np.float64)
            qd = np.abs(qs).max() / qmax
            delta = (np.abs(qs).sum() * kd[:n] / 2 + np.abs(k[:n]).sum(axis=1) * qd / 2 + dk * kd[:n] * qd / 4).max()
            s = k[:n] @ qs
            p = np.exp(s - s.max())
            p /= p.sum()
            b = np.expm1(2 * delta) * (p @ np.abs(v[:n])) + p @ vd[:n] / 2
            for t0 in range(0, n, TILE):
                sl = slice(t0, min(t0 + TILE, n))
                step = (p[sl] * vd[sl]).max() / PMAX_MHA
                b += 0.5 * step * (np.abs(v[sl]) / vd[sl, None]).sum(axis=0)
            bound[i, h] = b
    return bound * 1.01


@pytest.mark.parametrize("n_tok,pos0,n_head,threads", [(1, 0, 16, 1), (5, 3, 3, 2), (37, 100, 16, 2),
                                                       (70, 0, 2, 1), (130, 40, 17, 2)])
def test_mha_prefill_matches_float64(n_tok, pos0, n_head, threads):
    """Keys 192 (128 + 64 shared roped) and values 128 wide, as DeepSeek2's decompressed heads.
    Float rows (the scalar level): float32 sums of dk products per score (gamma_dk of the sum of
    |products|), which moves each probability by at most twice that relative error, plus the
    softmax's own sums of n rows and the vector exp's few ulps, times the largest |v|; doubled.
    int16 rows (avx2 and up): mha_int16_bound() on top.  Rows past the last token hold NaN: the
    kernel must never read them."""
    rng = np.random.default_rng(n_tok + pos0)
    dn, dr, dv, scale = 128, 64, 128, 0.07
    n_rows = pos0 + n_tok
    q = rng.standard_normal((n_tok, n_head, dn + dr)).astype(np.float32)
    kvb = rng.standard_normal((n_rows + 3, n_head, dn + dv)).astype(np.float32)
    kvb[..., dn:] *= np.exp(rng.uniform(-3, 3, (n_rows + 3, n_head, 1))).astype(np.float32)  # rows of unlike size
    latent = rng.standard_normal((n_rows + 3, KV_LORA + ROPE)).astype(np.float32)
    kvb[n_rows:] = np.nan
    latent[n_rows:] = np.nan
    kr = latent[:, KV_LORA:]                                        # strided rows, as the engine passes them
    out = np.full((n_tok, n_head, dv), np.nan, np.float32)
    attn.mha_prefill(q, kvb, kr, pos0, scale, out, threads)
    kvb, kr = kvb[:n_rows], np.ascontiguousarray(kr[:n_rows])
    ref = mha_reference(q, kvb, kr, pos0, scale, dv)
    u = 2.0 ** -24
    k_abs = np.abs(np.concatenate([kvb[:, :, :dn], np.broadcast_to(kr[:, None], (n_rows, n_head, dr))], 2))
    score_err = (dn + dr) * u * scale * np.einsum("ihd,thd->iht", np.abs(q), k_abs).max()
    bound = 2 * np.abs(kvb[:, :, dn:]).max() * (2 * score_err + (n_rows + 8) * u)
    if minillm_kernels.LEVEL != "scalar":
        bound = bound + mha_int16_bound(q, kvb, kr, pos0, scale, dv)
    err = np.abs(out - ref)
    assert np.isfinite(out).all()
    assert (err <= bound).all(), f"max error {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"
    if minillm_kernels.LEVEL != "scalar":  # a worst case, yet not vacuous: measured 2.3-8% of it
        assert (err / bound).max() > 0.01, (err / bound).max()


def test_mha_prefill_nonfinite_rows_give_nan():
    """An inf in a row's value: the outputs of the tokens that see it are not finite, on the float
    rows (inf·p) as on the int16 rows (NaN), never a finite number from the int16 code of inf."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((6, 2, 192)).astype(np.float32)
    kvb = rng.standard_normal((6, 2, 256)).astype(np.float32)
    kr = rng.standard_normal((6, 64)).astype(np.float32)
    kvb[2, 1, 128 + 7] = np.inf
    out = np.zeros((6, 2, 128), np.float32)
    attn.mha_prefill(q, kvb, kr, 0, 0.1, out)
    assert np.isfinite(out[:, 0]).all()
    assert (~np.isfinite(out[2:, 1])).any(axis=1).all()


def test_mha_prefill_bad_inputs():
    q = np.zeros((4, 2, 192), np.float32)
    kvb = np.zeros((4, 2, 256), np.float32)
    kr = np.zeros((4, 64), np.float32)
    out = np.zeros((4, 2, 128), np.float32)
    with pytest.raises(ValueError, match="positions"):
        attn.mha_prefill(q, kvb, kr, 1, 0.1, out)                   # 4 tokens after 1 need 5 rows
    with pytest.raises(ValueError, match="dn \\+ dr"):
        attn.mha_prefill(np.zeros((4, 2, 160), np.float32), kvb, kr, 0, 0.1, out)
    with pytest.raises(ValueError, match="each part of 8"):                # 132 + 60: the int16 rows go 8 at a time
        attn.mha_prefill(q, np.zeros((4, 2, 260), np.float32), np.zeros((4, 60), np.float32), 0, 0.1, out)
    with pytest.raises(ValueError, match="NaN"):
        attn.mha_prefill(np.full_like(q, np.nan), kvb, kr, 0, 0.1, out)
    with pytest.raises(ValueError, match="contiguous"):
        attn.mha_prefill(q, kvb, np.zeros((4, 128), np.float32)[:, ::2], 0, 0.1, out)


def test_int8_keys_where_avx512_has_vpdpbusd():
    """The 8-bit caches' scores take int8 keys (vpdpbusd, int8 query) on the AVX-512 levels and
    only there: q8_KV's rows as they lie, q8_0's per block; the checks above then emulate the int8
    query (query_qmax, query_parts) and q8_0's keys (kernel_operands)."""
    for ct in CACHE_TYPES:
        assert attn.tile_int8_keys(ct) == (ct in ("q8_KV", "q8_0") and minillm_kernels.LEVEL in ("avx512", "amx"))
