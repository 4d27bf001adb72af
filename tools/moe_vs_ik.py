"""The fused MoE prefill against ik_llama.cpp's mul_mat_id graph, same weights, same run:
paired times (t_ik / t_ours per round, alternating) and the error of both against a float64
product of the same weights (a few tokens), on the DeepSeek-V2-Lite expert shapes.

ik's graph (tools/ik_ggml.py prepare_moe) is what llama.cpp builds: mul_mat_id gate and up,
silu(gate) * up, mul_mat_id down; its per-expert outputs are summed with weight 1 here, as ours
are with expert_weights of 1.  Both convert the activations to fp16 for F16 weights (ours with a
power-of-two scale per row, which rounds the same where ik's do not overflow) and keep them float32
for F32 weights.

    OMP_WAIT_POLICY=passive python tools/moe_vs_ik.py --type F16 --rounds 8
"""
import argparse
import ctypes
import os
import sys
import time

# numpy's OpenBLAS threads spin after a BLAS call and take cores from the kernels' OpenMP team
# (the F16 MoE prefill measured 5-20% faster with one): numpy only prepares data here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ik_ggml import IkGgml  # noqa: E402

import minillm_kernels.matmul as mm  # noqa: E402

FLOAT_TYPES = {"F32": (0, np.float32), "F16": (1, np.float16)}  # numpy can build these directly


def reference(x, ids, gate, up, down, n_check):
    """float64 sum over each token's experts of down . (silu(gate . x) * (up . x))"""
    out = np.zeros((n_check, down.shape[1]))
    for t in range(n_check):
        for e in ids[t]:
            g, u = gate[e].astype(np.float64) @ x[t], up[e].astype(np.float64) @ x[t]
            out[t] += down[e].astype(np.float64) @ (g / (1 + np.exp(-g)) * u)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", default="F16", choices=sorted(FLOAT_TYPES))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--used", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--check-tokens", type=int, default=4)
    args = ap.parse_args()
    tid, dt = FLOAT_TYPES[args.type]
    K, F, E, k_used, N = 2048, 1408, args.experts, args.used, args.tokens
    rng = np.random.default_rng(0)
    gate, up = ((rng.standard_normal((E, F, K)) * 0.05).astype(dt) for _ in range(2))
    down = (rng.standard_normal((E, K, F)) * 0.05).astype(dt)
    x = rng.standard_normal((N, K)).astype(np.float32)
    ids = np.stack([rng.permutation(E)[:k_used] for _ in range(N)]).astype(np.int32)
    ew = np.ones((N, k_used), np.float32)

    ik = IkGgml()
    ctx, graphs = ik.prepare_moe(x, [ids], gate, tid, up, down, tid)
    raw = [a.view(np.uint8).reshape(a.shape[0], a.shape[1], -1) for a in (gate, up, down)]
    t_ik, t_ours = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        ik.compute(ctx, graphs[0], args.threads)
        t_ik.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours = mm.moe_forward(x, ids, ew, raw[0], tid, raw[1], tid, raw[2], tid, n_threads=args.threads)
        t_ours.append(time.perf_counter() - t)
    lib = ik.lib
    d_out = lib.ggml_graph_node(graphs[0], -1)
    ik_out = np.ctypeslib.as_array((ctypes.c_float * (N * k_used * K)).from_address(lib.ggml_get_data(d_out)))
    ik_sum = ik_out.reshape(N, k_used, K).sum(axis=1)
    ik.free(ctx)

    flops = 2.0 * K * F * 3 * N * k_used
    ratios = np.array(t_ik) / np.array(t_ours)
    print(f"{args.type} MoE {N} tokens, {k_used} of {E} experts, {args.threads} threads")
    print(f"  GFLOP/s (median): ik {flops / np.median(t_ik) / 1e9:.1f}  ours {flops / np.median(t_ours) / 1e9:.1f}")
    print(f"  t_ik / t_ours per round: {np.round(ratios, 2).tolist()}  median {np.median(ratios):.2f}")
    ref = reference(x, ids, gate, up, down, args.check_tokens)
    scale = np.abs(ref).max()
    err = lambda y: np.abs(y[:args.check_tokens] - ref).max() / scale  # noqa: E731
    print(f"  max error / max |ref| over {args.check_tokens} tokens: ik {err(ik_sum):.2e}  ours {err(ours):.2e}")


if __name__ == "__main__":
    main()
