"""Small per-token operations of the forward pass: RMSNorm, RoPE, MoE routing.

Each is a few thousand flops per token; in numpy every one of them costs 10-25 us of
call overhead, more than the work, and a decode step makes ~200 of them.  These plain
single-threaded loops take 1-3 us.  Arrays are float32 with a contiguous last axis (other
axes may be strided views); the functions check shapes and raise ValueError before the loops.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport expf, sqrtf, INFINITY

cnp.import_array()

cdef enum:
    GATING_SOFTMAX = 1
    GATING_SIGMOID = 2


def rms_norm(const float[:, :] x, const float[::1] w, float eps, float[:, :] out=None):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w (sum of squares in double, as the reference)."""
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], i, j
    if w.shape[0] != k:
        raise ValueError(f"norm weight has {w.shape[0]} values, rows have {k}")
    if out is None:
        out = np.empty((n, k), np.float32)
    elif out.shape[0] != n or out.shape[1] != k:
        raise ValueError("out shape differs from x")
    cdef double ss
    cdef float scale
    with nogil:
        for i in range(n):
            ss = 0.0
            for j in range(k):
                ss += <double>x[i, j] * x[i, j]
            scale = 1.0 / sqrtf(<float>(ss / k) + eps)
            for j in range(k):
                out[i, j] = x[i, j] * scale * w[j]
    return np.asarray(out)


def rope(const float[:, :, :] x, const float[:, ::1] cos, const float[:, ::1] sin, float[:, :, :] out):
    """Rotate the adjacent pairs of x [N, M, d] by the angles of row N: out (same shape, may be
    a view into a larger array) = (x0 c - x1 s, x0 s + x1 c); cos, sin [N, d/2]."""
    cdef Py_ssize_t n = x.shape[0], m = x.shape[1], d = x.shape[2], t, h, i
    if d % 2 or cos.shape[0] != n or sin.shape[0] != n or cos.shape[1] * 2 != d or sin.shape[1] * 2 != d:
        raise ValueError("rope: x [N, M, d] needs cos and sin [N, d/2]")
    if out.shape[0] != n or out.shape[1] != m or out.shape[2] != d:
        raise ValueError("rope: out shape differs from x")
    cdef float x0, x1, c, s
    with nogil:
        for t in range(n):
            for h in range(m):
                for i in range(d // 2):
                    x0 = x[t, h, 2 * i]
                    x1 = x[t, h, 2 * i + 1]
                    c = cos[t, i]
                    s = sin[t, i]
                    out[t, h, 2 * i] = x0 * c - x1 * s
                    out[t, h, 2 * i + 1] = x0 * s + x1 * c


def route(const float[:, ::1] logits, int k, int gating, const float[::1] bias=None, bint norm=False,
          float scale=1.0, int n_group=0, int n_group_used=0):
    """Top-k experts per token (int32 [N, k], best first; ties to the lower id) and their
    mixing weights (float32 [N, k]).

    probs = softmax(logits) or sigmoid(logits); selection score = probs (+ bias); with expert
    groups only the n_group_used groups with the largest sum of their two best scores compete;
    weights = the chosen probs, divided by their sum when norm, times scale."""
    cdef Py_ssize_t n = logits.shape[0], E = logits.shape[1], t, e, j, g, best
    if not 0 < k <= E:
        raise ValueError(f"k={k} must be in 1..{E}")
    if gating not in (GATING_SOFTMAX, GATING_SIGMOID):
        raise ValueError(f"unknown gating function {gating}")
    if bias is not None and bias.shape[0] != E:
        raise ValueError("bias must have one value per expert")
    cdef bint grouped = n_group > 0 and n_group_used < n_group
    if grouped and (E % n_group or n_group_used < 1 or n_group > 256):
        raise ValueError("expert groups inconsistent with the expert count")
    ids = np.empty((n, k), np.int32)
    weights = np.empty((n, k), np.float32)
    cdef int[:, ::1] oi = ids
    cdef float[:, ::1] ow = weights
    cdef float[::1] probs = np.empty(E, np.float32), sel = np.empty(E, np.float32)
    cdef float gscore[256]
    cdef char[::1] taken = np.empty(E, np.int8)
    cdef bint has_bias = bias is not None
    cdef Py_ssize_t per = E // n_group if grouped else E
    cdef float mx, total, a, b, v
    with nogil:
        for t in range(n):
            if gating == GATING_SOFTMAX:
                mx = -INFINITY
                for e in range(E):
                    if logits[t, e] > mx:
                        mx = logits[t, e]
                total = 0.0
                for e in range(E):
                    probs[e] = expf(logits[t, e] - mx)
                    total += probs[e]
                for e in range(E):
                    probs[e] = probs[e] / total
            else:
                for e in range(E):
                    probs[e] = 1.0 / (1.0 + expf(-logits[t, e]))
            for e in range(E):
                sel[e] = probs[e] + bias[e] if has_bias else probs[e]
            if grouped:
                for g in range(n_group):             # sum of each group's two best scores
                    a = -INFINITY
                    b = -INFINITY
                    for e in range(g * per, (g + 1) * per):
                        if sel[e] > a:
                            b = a
                            a = sel[e]
                        elif sel[e] > b:
                            b = sel[e]
                    gscore[g] = a + b if per > 1 else a
                for j in range(n_group - n_group_used):  # drop the worst groups (ties: the later)
                    best = -1
                    for g in range(n_group):
                        if gscore[g] != INFINITY and (best < 0 or gscore[g] < gscore[best] or
                                                      (gscore[g] == gscore[best] and g > best)):
                            best = g
                    gscore[best] = INFINITY
                    for e in range(best * per, (best + 1) * per):
                        sel[e] = -INFINITY
            for e in range(E):
                taken[e] = 0
            total = 0.0
            for j in range(k):                      # selection sort: k is small
                best = -1
                for e in range(E):
                    if not taken[e] and (best < 0 or sel[e] > sel[best]):
                        best = e
                taken[best] = 1
                oi[t, j] = <int>best
                ow[t, j] = probs[best]
                total += probs[best]
            for j in range(k):
                v = ow[t, j] / total if norm else ow[t, j]
                ow[t, j] = v * scale
    return ids, weights
