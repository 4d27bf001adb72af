"""Q2_K, Q4_K, Q5_K, Q6_K, IQ1_S kernels and the q8_K activation quantizer
(minillm_kernels/csrc/kquants.c), checked against references we did not write:

* dequantize_row_*  == gguf.quants.dequantize, bit for bit (every product in the
  formats is exact in float32, so there is no rounding to disagree on);
* quantize_row_q8_K == ggml's quantize_row_q8_K_ref (ik_llama.cpp wheel), byte for byte;
* vec_dot_*         == float64 numpy dot of the gguf-dequantized weights with the
  dequantized q8_K activations, to float32 rounding (2e-6 of sum |w_i a_i|), and
  close to the dot with the float activations: q8_K rounds each activation by at
  most half its block step |d|, so |w.x - w.a| <= sum_i |w_i| |d_block(i)| / 2;
* ggml's own ggml_vec_dot_<type>_q8_K agrees on the same blocks;
* tile_<t> (rows x activation rows) equals vec_dot bit for bit, and the IQ1_S rows
  repacked to 2-bit codes (iq1_s_u) dequantize and dot exactly like the originals;
* Q4_K / Q5_K / Q6_K rows repacked to the transposed group order (<t>_r) dequantize
  exactly like the originals, and dot with the transposed q8_K activations
  (quantize_row_q8_K_t: q8_K's bytes, qs permuted) to the same bound as vec_dot;
* all of it in four builds (BUILDS: native AVX2, -march=haswell AVX2 without AVX-512
  registers, MINILLM_FORCE_SCALAR, and portable without -march; "simd" is -march=native, with
  AVX-512 where the machine has it).

The C files (kquants_link.c: kquants.c and kquants_r.c) are compiled here into small shared libraries and called through ctypes,
so these tests do not depend on the Cython layer.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "minillm_kernels", "csrc")
QK_K = 256
Q8K_BYTES = 4 + QK_K + 2 * (QK_K // 16)  # float d, int8 qs[256], int16 bsums[16]

# name -> (gguf type, byte offsets of fp16 scale fields inside a block)
TYPES = {
    "q2_K": (GGMLQuantizationType.Q2_K, (80, 82)),
    "q4_K": (GGMLQuantizationType.Q4_K, (0, 2)),
    "q5_K": (GGMLQuantizationType.Q5_K, (0, 2)),
    "q6_K": (GGMLQuantizationType.Q6_K, (208,)),
    "iq1_s": (GGMLQuantizationType.IQ1_S, (0,)),
}
LENGTHS = (256, 512, 2048)
# the repacked k-quants (kquants.h): name -> the GGUF type's name; same block bytes
REPACKED = {"q4_K_r": "q4_K", "q5_K_r": "q5_K", "q6_K_r": "q6_K"}


def t_index(p):
    """the value at transposed position p (kquants.h): 32i + 4k + j for p = 32k + 4i + j"""
    p = np.asarray(p)
    return 32 * ((p >> 2) & 7) + 4 * (p >> 5) + (p & 3)


def block_bytes(name):
    return GGML_QUANT_SIZES[TYPES[name][0]][1]


# build name -> extra gcc flags (all -O3 -std=gnu11, as setup.py builds them)
BUILDS = {
    "simd": ["-march=native"],                                  # the AVX2 bodies
    "scalar": ["-march=native", "-DMINILLM_FORCE_SCALAR"],      # scalar bodies, same flags
    "portable": [],                                             # no -march: scalar, software fp16
    "haswell": ["-march=haswell"],                              # AVX2 without AVX-512 registers (Zen 3)
}
KINDS = list(BUILDS)


def _compile_all(tmpdir):
    """Compile every build of kquants.c concurrently; returns {kind: path}."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    jobs = {}
    for kind, flags in BUILDS.items():
        out = os.path.join(tmpdir, f"libkq_{kind}.so")
        cmd = [cc, "-O3", *flags, "-std=gnu11", "-fPIC", "-shared", "-Wall", "-Werror",
               os.path.join(CSRC, "kquants_link.c"), "-o", out]
        jobs[kind] = (out, subprocess.Popen(cmd))
    for kind, (out, proc) in jobs.items():
        assert proc.wait() == 0, f"compiling the {kind} build failed"
    return {kind: out for kind, (out, _) in jobs.items()}


def _load(path):
    lib = ctypes.CDLL(path)
    for fn in ("quantize_row_q8_K", "quantize_row_q8_K_t", "repack_row_iq1_s_u",
               *(f"repack_row_{name}" for name in REPACKED)):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        getattr(lib, fn).restype = None
    for name in list(TYPES) + ["iq1_s_u"] + list(REPACKED):
        deq = getattr(lib, f"dequantize_row_{name}")
        deq.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        deq.restype = None
        dot = getattr(lib, f"vec_dot_{name}")
        dot.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        dot.restype = ctypes.c_float
        tile = getattr(lib, f"tile_{name}")
        tile.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                         ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
        tile.restype = None
    return lib


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    paths = _compile_all(str(tmp_path_factory.mktemp("kquants")))
    return {kind: _load(path) for kind, path in paths.items()}


@pytest.fixture(scope="module")
def ggml():
    """ik_llama.cpp's libggml (a peer reference); None when the wheel is missing."""
    try:
        import ik_llama_cpp
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(ik_llama_cpp.__file__), "lib", "libggml.so")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)
    lib.quantize_row_q8_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.quantize_row_q8_K_ref.restype = None

    class InitParams(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

    # ggml_init fills the fp16 -> fp32 table its dot products read scales through
    lib.ggml_init.argtypes = [InitParams]
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free(lib.ggml_init(InitParams(1 << 16, None, True)))
    return lib


# The wheel's ggml build lays block_q8_K out as 296 bytes: d, 4 unused bytes,
# qs, bsums (ours, like upstream ggml's, is 292 bytes without the gap).
IK_Q8K_BYTES = Q8K_BYTES + 4


def to_ik_q8_K(raw):
    out = np.zeros((raw.shape[0], IK_Q8K_BYTES), dtype=np.uint8)
    out[:, :4] = raw[:, :4]
    out[:, 8:] = raw[:, 4:]
    return out


def from_ik_q8_K(raw):
    assert not raw[:, 4:8].any()
    return np.ascontiguousarray(np.concatenate([raw[:, :4], raw[:, 8:]], axis=1))


# ---- data ------------------------------------------------------------------

def random_blocks(rng, name, n_blocks, scale=1e-2, negative=True):
    """Random bytes with the fp16 scale fields overwritten by finite values."""
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes(name)), dtype=np.uint8)
    for off in TYPES[name][1]:
        d = rng.uniform(-1 if negative else 0.05, 1, size=n_blocks) * scale
        raw[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw


def gguf_dequant(name, raw):
    return dequantize(raw.reshape(-1), TYPES[name][0]).astype(np.float32)


def ptr(a):
    assert a.flags.c_contiguous
    return a.ctypes.data


def q8_K(lib, x):
    """Quantize float32 x (length n) with lib; returns raw bytes (n/256, 292)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.size // QK_K, Q8K_BYTES), dtype=np.uint8)
    lib.quantize_row_q8_K(ptr(x), ptr(out), x.size)
    return out


def q8_K_t(lib, x):
    """The transposed q8_K activations of the repacked k-quants, raw bytes (n/256, 292)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.size // QK_K, Q8K_BYTES), dtype=np.uint8)
    lib.quantize_row_q8_K_t(ptr(x), ptr(out), x.size)
    return out


def repack_k_r(lib, name, raw_row):
    """a row of GGUF type REPACKED[name] repacked to name (the same number of bytes)"""
    out = np.zeros_like(raw_row)
    getattr(lib, f"repack_row_{name}")(ptr(raw_row), ptr(out), raw_row.size // block_bytes(REPACKED[name]) * QK_K)
    return out


def q8_K_fields(raw):
    d = raw[:, :4].copy().view(np.float32).reshape(-1)
    qs = raw[:, 4:4 + QK_K].view(np.int8)
    bsums = raw[:, 4 + QK_K:].copy().view(np.int16)
    return d, qs, bsums


def q8_K_dequant(raw):
    d, qs, _ = q8_K_fields(raw)
    return (d[:, None].astype(np.float64) * qs).reshape(-1)


def dot(lib, name, w_row, a_raw):
    return float(getattr(lib, f"vec_dot_{name}")(a_raw.shape[0] * QK_K, ptr(w_row), ptr(a_raw)))


# ---- q8_K ------------------------------------------------------------------

def activations(rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, size=n // 64)] *= 20  # outliers, as in real activations
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_q8_K_invariants(libs, kind):
    rng = np.random.default_rng(1)
    x = activations(rng, 2048)
    x[256:512] = 0.0                          # an all-zero block
    x[512:768] = np.abs(x[512:768])           # max-magnitude value positive -> d < 0
    x[768:1024] = -np.abs(x[768:1024])        # ... negative -> d > 0
    raw = q8_K(libs[kind], x)
    d, qs, bsums = q8_K_fields(raw)
    assert d[1] == 0 and not qs[1].any() and not bsums[1].any()
    assert d[2] < 0 and d[3] > 0
    xb = x.reshape(-1, QK_K)
    amax = np.abs(xb).max(axis=1)
    np.testing.assert_allclose(np.abs(d), amax / 127, rtol=1e-6)
    assert (np.abs(qs).max(axis=1)[amax > 0] == 127).all()
    np.testing.assert_array_equal(bsums, qs.reshape(-1, 16, 16).sum(axis=2, dtype=np.int32))
    # every value rounds to the nearest step
    err = np.abs(q8_K_dequant(raw) - x).reshape(-1, QK_K)
    assert (err <= np.abs(d)[:, None] * 0.5000001 + 1e-30).all()


def test_q8_K_simd_matches_scalar(libs):
    rng = np.random.default_rng(2)
    for n in LENGTHS:
        x = activations(rng, n)
        np.testing.assert_array_equal(q8_K(libs["simd"], x), q8_K(libs["scalar"], x))
    # ties in magnitude: the first one sets the sign, like the reference
    x = np.zeros(QK_K, dtype=np.float32)
    x[3], x[7], x[100] = -2.0, 2.0, 1.0
    for kind in ("simd", "scalar"):
        d, qs, _ = q8_K_fields(q8_K(libs[kind], x))
        assert d[0] == np.float32(1.0) / np.float32(-127.0 / -2.0)
        assert qs[0, 3] == -127 and qs[0, 7] == 127


@pytest.mark.peer
@pytest.mark.parametrize("kind", KINDS)
def test_q8_K_matches_ggml_reference(libs, ggml, kind):
    if ggml is None:
        pytest.skip("ik_llama_cpp wheel not available")
    rng = np.random.default_rng(3)
    x = activations(rng, 4096)
    x[:256] = 0.0
    x[256:512] = np.float32(3.0)
    x[512:768] = rng.integers(-4, 5, size=256).astype(np.float32) * 0.5  # many exact .5 ties
    ref = np.zeros((x.size // QK_K, IK_Q8K_BYTES), dtype=np.uint8)
    ggml.quantize_row_q8_K_ref(ptr(x), ptr(ref), x.size)
    np.testing.assert_array_equal(q8_K(libs[kind], x), from_ik_q8_K(ref))


# ---- dequantization --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_bit_exact(libs, kind, name):
    rng = np.random.default_rng(4)
    deq = getattr(libs[kind], f"dequantize_row_{name}")
    for n in LENGTHS:
        raw = random_blocks(rng, name, n // QK_K)
        out = np.full(n, np.nan, dtype=np.float32)
        deq(ptr(raw), ptr(out), n)
        np.testing.assert_array_equal(out.view(np.uint32), gguf_dequant(name, raw).view(np.uint32))
    # edge cases: all-zero block, all-ones bytes (max codes and scales), tiny and big d
    raw = random_blocks(rng, name, 4)
    raw[0] = 0
    raw[1] = 0xFF
    for off in TYPES[name][1]:
        raw[1, off:off + 2] = np.array([-3.5], np.float16).view(np.uint8)
        raw[2, off:off + 2] = np.array([6e-8], np.float16).view(np.uint8)  # subnormal half
        raw[3, off:off + 2] = np.array([60000.0], np.float16).view(np.uint8)
    out = np.empty(4 * QK_K, dtype=np.float32)
    deq(ptr(raw), ptr(out), out.size)
    np.testing.assert_array_equal(out.view(np.uint32), gguf_dequant(name, raw).view(np.uint32))


# ---- dot products ------------------------------------------------------------

def check_dots(lib, name, raw_rows, x, a_raw, dot_name=None, kernel_rows=None, kernel_acts=None):
    """vec_dot of each weight row against numpy on the dequantized operands; dot_name (with the
    rows and activations in its own layout) checks a repacked type against the same references."""
    n = x.size
    w = gguf_dequant(name, raw_rows).reshape(len(raw_rows), n).astype(np.float64)
    a = q8_K_dequant(a_raw)
    d_a = np.repeat(np.abs(q8_K_fields(a_raw)[0]).astype(np.float64), QK_K)
    rows = raw_rows if kernel_rows is None else kernel_rows
    acts = a_raw if kernel_acts is None else kernel_acts
    got = np.array([dot(lib, dot_name or name, np.ascontiguousarray(r), acts) for r in rows])
    # same operands: only float32 rounding of the per-block scales and the sum
    exact = w @ a
    scale = np.abs(w) @ np.abs(a) + 1e-30
    assert (np.abs(got - exact) <= 2e-6 * scale).all(), np.max(np.abs(got - exact) / scale)
    # float activations: plus at most half a q8_K step per value
    bound = np.abs(w) @ (d_a * 0.5) + 2e-6 * scale
    assert (np.abs(got - w @ x.astype(np.float64)) <= bound).all()
    return got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(TYPES))
def test_vec_dot_matches_numpy(libs, kind, name):
    rng = np.random.default_rng(5)
    lib = libs[kind]
    for n in LENGTHS:
        raw = random_blocks(rng, name, 6 * (n // QK_K)).reshape(6, -1)
        x = activations(rng, n)
        check_dots(lib, name, raw, x, q8_K(lib, x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(TYPES))
def test_vec_dot_edge_cases(libs, kind, name):
    rng = np.random.default_rng(6)
    lib = libs[kind]
    n = 4 * QK_K
    raw = random_blocks(rng, name, 4 * 4).reshape(4, -1)
    bb = block_bytes(name)
    raw[0] = 0                       # all-zero weights
    raw[1] = 0xFF                    # every code and scale at its maximum, negative d
    for b in range(4):
        for off in TYPES[name][1]:
            raw[1, b * bb + off:b * bb + off + 2] = np.array([-1.0], np.float16).view(np.uint8)
    x = np.ones(n, dtype=np.float32)  # every q8 is -127: the extreme of the integer sums
    x[QK_K:2 * QK_K] = -1.0           # ... and +127
    x[2 * QK_K:3 * QK_K] = 0.0        # an all-zero activation block
    got = check_dots(lib, name, raw, x, q8_K(lib, x))
    assert got[0] == 0.0


def test_vec_dot_simd_matches_scalar(libs):
    rng = np.random.default_rng(7)
    n = 2048
    x = activations(rng, n)
    a_raw = q8_K(libs["scalar"], x)
    for name in TYPES:
        raw = random_blocks(rng, name, 16 * (n // QK_K)).reshape(16, -1)
        simd = np.array([dot(libs["simd"], name, np.ascontiguousarray(r), a_raw) for r in raw])
        scalar = np.array([dot(libs["scalar"], name, np.ascontiguousarray(r), a_raw) for r in raw])
        w = gguf_dequant(name, raw).reshape(16, n).astype(np.float64)
        scale = np.abs(w) @ np.abs(q8_K_dequant(a_raw))
        assert (np.abs(simd - scalar) <= 2e-6 * scale).all(), name


@pytest.mark.peer
@pytest.mark.parametrize("name", list(TYPES))
def test_vec_dot_matches_ggml(libs, ggml, name):
    """ggml's own dot product kernel, on the same weight and q8_K blocks."""
    if ggml is None:
        pytest.skip("ik_llama_cpp wheel not available")
    fn = getattr(ggml, f"ggml_vec_dot_{name}_q8_K")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = None
    rng = np.random.default_rng(8)
    n = 2048
    x = activations(rng, n)
    a_raw = q8_K(libs["simd"], x)
    raw = random_blocks(rng, name, 8 * (n // QK_K)).reshape(8, -1)
    w = gguf_dequant(name, raw).reshape(8, n).astype(np.float64)
    scale = np.abs(w) @ np.abs(q8_K_dequant(a_raw))
    a_ik = to_ik_q8_K(a_raw)
    s = ctypes.c_float()
    for i, r in enumerate(raw):
        r = np.ascontiguousarray(r)
        fn(n, ctypes.byref(s), 0, ptr(r), 0, ptr(a_ik), 0, 1)
        assert abs(dot(libs["simd"], name, r, a_raw) - s.value) <= 2e-6 * scale[i], (name, i)


# ---- IQ1_S repacked to 2-bit codes (load-time conversion) -------------------

IQ1_S_U_BYTES = 74


def repack_iq1_s_u(lib, raw_row):
    n = raw_row.size // block_bytes("iq1_s") * QK_K
    out = np.zeros(n // QK_K * IQ1_S_U_BYTES, dtype=np.uint8)
    lib.repack_row_iq1_s_u(ptr(raw_row), ptr(out), n)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_iq1_s_u_repack_is_exact(libs, kind):
    """Repacked rows dequantize like gguf.quants does the IQ1_S row, and their dot
    products are bit-identical to vec_dot_iq1_s on the original row."""
    rng = np.random.default_rng(9)
    lib = libs[kind]
    for n in LENGTHS:
        x = activations(rng, n)
        a_raw = q8_K(lib, x)
        raw = random_blocks(rng, "iq1_s", 4 * (n // QK_K)).reshape(4, -1)
        raw[0, :50] = 0                                  # an all-zero block
        for r in raw:
            r = np.ascontiguousarray(r)
            u = repack_iq1_s_u(lib, r)
            out = np.empty(n, dtype=np.float32)
            lib.dequantize_row_iq1_s_u(ptr(u), ptr(out), n)
            np.testing.assert_array_equal(out.view(np.uint32), gguf_dequant("iq1_s", r).view(np.uint32))
            got = np.float32(lib.vec_dot_iq1_s_u(n, ptr(u), ptr(a_raw)))
            assert got.view(np.uint32) == np.float32(dot(lib, "iq1_s", r, a_raw)).view(np.uint32)


# ---- tiles (rows x activation rows) ------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(TYPES) + ["iq1_s_u"] + list(REPACKED))
def test_tile_bit_identical_to_vec_dot(libs, kind, name):
    """Every (row, activation) of a tile equals vec_dot bit for bit, for tile shapes
    below, at and above the register tile (4 rows x 8 activations), with padded strides."""
    rng = np.random.default_rng(10)
    lib = libs[kind]
    n = 512
    src = "iq1_s" if name == "iq1_s_u" else REPACKED.get(name, name)
    rows = random_blocks(rng, src, 7 * (n // QK_K)).reshape(7, -1)
    if name == "iq1_s_u":
        rows = np.stack([repack_iq1_s_u(lib, np.ascontiguousarray(r)) for r in rows])
    if name in REPACKED:
        rows = np.stack([repack_k_r(lib, name, np.ascontiguousarray(r)) for r in rows])
    quantize = q8_K_t if name in REPACKED else q8_K
    w = np.zeros((7, rows.shape[1] + 6), dtype=np.uint8)   # padded row stride
    w[:, :rows.shape[1]] = rows
    acts = np.stack([quantize(lib, activations(rng, n)).reshape(-1) for _ in range(10)])
    a = np.zeros((10, acts.shape[1] + 8), dtype=np.uint8)
    a[:, :acts.shape[1]] = acts
    vec_dot = getattr(lib, f"vec_dot_{name}")
    want = np.array([[vec_dot(n, ptr(np.ascontiguousarray(rows[r])), ptr(np.ascontiguousarray(acts[c])))
                      for r in range(7)] for c in range(10)], dtype=np.float32)
    tile = getattr(lib, f"tile_{name}")
    for nr, nc in [(1, 1), (4, 1), (7, 1), (1, 4), (3, 2), (4, 4), (7, 6), (4, 8), (7, 10)]:
        out = np.full((10, 9), np.nan, dtype=np.float32)    # out_stride 9 floats
        tile(n, ptr(w), w.shape[1], ptr(a), a.shape[1], ptr(out), 9, nr, nc)
        np.testing.assert_array_equal(out[:nc, :nr].view(np.uint32), want[:nc, :nr].view(np.uint32))
        assert np.isnan(out[nc:]).all() and np.isnan(out[:, nr:]).all()


# ---- Q4_K / Q5_K / Q6_K repacked to the transposed group order (load-time conversion) ----

@pytest.mark.parametrize("kind", KINDS)
def test_q8_K_t_is_q8_K_transposed(libs, kind):
    rng = np.random.default_rng(11)
    lib = libs[kind]
    x = activations(rng, 2048)
    a, at = q8_K(lib, x), q8_K_t(lib, x)
    d, qs, bsums = q8_K_fields(a)
    dt, qst, bsumst = q8_K_fields(at)
    np.testing.assert_array_equal(d, dt)
    np.testing.assert_array_equal(bsums, bsumst)
    np.testing.assert_array_equal(qst, qs[:, t_index(np.arange(QK_K))])
    assert not np.array_equal(qst, qs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(REPACKED))
def test_k_r_repack_dequantizes_and_dots_like_the_original(libs, kind, name):
    """The repacked rows hold the original values (dequantized bit for bit like gguf.quants
    does the original rows), and vec_dot on them meets check_dots' bounds against those
    values, edge cases included (zero, maximal codes and scales, extreme activations)."""
    rng = np.random.default_rng(12)
    lib = libs[kind]
    src = REPACKED[name]
    for n in LENGTHS:
        raw = random_blocks(rng, src, 6 * (n // QK_K)).reshape(6, -1)
        raw[0] = 0
        raw[1] = 0xFF
        for off in TYPES[src][1]:
            raw[1, off::block_bytes(src)][:n // QK_K] = 0  # finite scale halves: ...
            raw[1, off + 1::block_bytes(src)][:n // QK_K] = 0x3C  # ... 1.0
        rep = np.stack([repack_k_r(lib, name, np.ascontiguousarray(r)) for r in raw])
        assert not np.array_equal(rep[2:], raw[2:])
        for r, u in zip(raw, rep):
            out = np.full(n, np.nan, dtype=np.float32)
            getattr(lib, f"dequantize_row_{name}")(ptr(u), ptr(out), n)
            np.testing.assert_array_equal(out.view(np.uint32), gguf_dequant(src, r).view(np.uint32))
        for x in (activations(rng, n), np.where(np.arange(n) % 3 == 0, 1.0, -1.0).astype(np.float32)):
            check_dots(lib, src, raw, x, q8_K(lib, x), dot_name=name, kernel_rows=rep, kernel_acts=q8_K_t(lib, x))


def test_k_r_simd_matches_scalar(libs):
    rng = np.random.default_rng(13)
    n = 2048
    x = activations(rng, n)
    for name, src in REPACKED.items():
        raw = random_blocks(rng, src, 16 * (n // QK_K)).reshape(16, -1)
        rep = [repack_k_r(libs["scalar"], name, np.ascontiguousarray(r)) for r in raw]
        assert all(np.array_equal(u, repack_k_r(libs["simd"], name, np.ascontiguousarray(r))) for u, r in zip(rep, raw))
        a_raw = q8_K_t(libs["scalar"], x)
        simd = np.array([dot(libs["simd"], name, u, a_raw) for u in rep])
        scalar = np.array([dot(libs["scalar"], name, u, a_raw) for u in rep])
        w = gguf_dequant(src, raw).reshape(16, n).astype(np.float64)
        scale = np.abs(w) @ np.abs(q8_K_dequant(q8_K(libs["scalar"], x)))
        assert (np.abs(simd - scalar) <= 2e-6 * scale).all(), name
