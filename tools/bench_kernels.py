"""Benchmark the matmul kernels on the DeepSeek-V2-Lite shapes (issue 5).

For each weight type: GEMV (1 token) time and weight GB/s as a fraction of the
read bandwidth (a streaming-read kernel over as many bytes of the same weight
pool, timed alternating with the GEMV so that both see the same machine load;
the median of the per-round ratios), GEMM throughput at 512 tokens (GFLOP/s), and the
fused MoE op (8 and 6 active of 64 experts for one token; 6 of 64 for 512
tokens).  Weights are random valid blocks; for GEMV and decode MoE several
copies are cycled so that the weights come from RAM, not the last-level cache.
Every figure is the median of repetitions; ik_llama.cpp's figures for the same
op (IK_OPS below) are printed beside ours with the ratio, and with --ik its
mul_mat is also timed in this run, alternating with ours on the same weights
(the fairest comparison on a shared machine).  On an oversubscribed machine
set OMP_WAIT_POLICY=passive: spinning OpenMP workers then stall each other.

The internal types are rows repacked at load time by minillm (matmul.repack):
IQ1_S_R (74 bytes per 256 values instead of 50, bit-identical results), Q4_K_R,
Q5_K_R, Q6_K_R (the same bytes in the transposed group order) and IQ4_NL_R (the
same bytes in groups of 4 blocks, bit-identical results).  Their rows are timed
on the repacked weights, but GB/s and bw% count the ORIGINAL bytes (the file's
weights, the same bytes as the source type's row), and they are compared with ik's
figures for the source type.

    python tools/bench_kernels.py                      # all types, table
    python tools/bench_kernels.py --types Q8_0,IQ4_NL --ops gemv --json out.json
    python tools/bench_kernels.py --ops gemm,moe --isa avx512 --ik-lib ~/ik/build/ggml/src/libggml.so

--isa LEVEL runs minillm's kernels at that ISA level (minillm_kernels.kernels: scalar, avx2, avx512,
amx; default the best this CPU has); every row and JSON record names its level.  --ik-lib PATH times
ik_llama.cpp's mul_mat from that libggml.so (a native build: the wheel's is an AVX2 build).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

# numpy's OpenBLAS threads spin after a BLAS call and take cores from the kernels' OpenMP team
# (the F16 MoE prefill measured 5-20% faster with one): numpy only prepares data here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minillm_kernels  # noqa: E402
from minillm_kernels import matmul as mm  # noqa: E402  (main() rebinds it for --isa)
from minillm_kernels.random_blocks import TYPE_IDS as GGUF_TYPE_IDS  # noqa: E402
from minillm_kernels.random_blocks import TYPES, random_weights, row_bytes  # noqa: E402

from ik_ggml import IkGgml  # noqa: E402  (tools/ is on sys.path when run as a script)

# every type the kernels take: the GGUF types and minillm's internal load-time conversions
TYPE_IDS = {**GGUF_TYPE_IDS, **{name: t for t, name in mm.supported_types().items() if t in mm.INTERNAL_TYPES}}
TYPE_NAMES = {t: name for name, t in TYPE_IDS.items()}


def gguf_type(t):
    """the GGUF type whose weights t is made from (t itself unless an internal conversion)"""
    return mm.INTERNAL_TYPES.get(t, t)


def bench_weights(t, shape, seed):
    """(weights in type t, the same weights in their GGUF type): random valid GGUF blocks,
    converted as the model loader would for an internal type"""
    src = random_weights(gguf_type(t), shape, seed=seed)
    return (mm.repack(src, gguf_type(t), target=t)[0] if t in mm.INTERNAL_TYPES else src), src

# ik_llama.cpp per-op figures on this machine kind (commit 8337e4cd3, native build), copied from
# /work/shared/reference/ik_llama_cpp_ops.md (measured by the project's reference session):
IK_OPS = {  # (type, op name): (N=1 1thr GB/s, N=1 2thr GB/s, N=512 1thr GFLOP/s, N=512 2thr GFLOP/s)
    ("Q8_0", "attn_q"): (13.5, 23.8, 84.1, 202.9),
    ("Q8_0", "attn_output"): (13.6, 21.6, 78.3, 158.7),
    ("Q8_0", "exp_up"): (14.1, 21.9, 93.7, 188.0),
    ("Q8_0", "exp_down"): (11.6, 23.1, 71.2, 145.9),
    ("Q8_0", "dense"): (13.6, 22.6, 77.7, 163.0),
    ("Q8_0", "output"): (13.5, 12.4, 103.0, 185.8),
    ("Q8_0", "moe_up"): (12.1, 25.0, 80.7, 164.9),
    ("Q8_0", "moe_down"): (11.3, 20.1, 66.3, 140.0),
    ("Q4_0", "attn_q"): (11.1, 18.6, 104.9, 161.0),
    ("Q4_0", "attn_output"): (11.4, 21.3, 93.2, 122.6),
    ("Q4_0", "exp_up"): (10.9, 18.8, 104.7, 207.6),
    ("Q4_0", "exp_down"): (11.5, 21.9, 106.3, 204.4),
    ("Q4_0", "dense"): (11.5, 20.6, 105.5, 193.8),
    ("Q4_0", "output"): (11.9, 22.7, 94.7, 182.3),
    ("Q4_0", "moe_up"): (7.5, 16.3, 85.6, 181.8),
    ("Q4_0", "moe_down"): (10.0, 18.2, 66.7, 151.6),
    ("Q5_0", "attn_q"): (9.9, 16.4, 90.7, 168.2),
    ("Q5_0", "attn_output"): (9.3, 17.7, 96.8, 153.1),
    ("Q5_0", "exp_up"): (10.5, 16.4, 85.6, 155.2),
    ("Q5_0", "exp_down"): (9.9, 18.2, 82.9, 186.7),
    ("Q5_0", "dense"): (8.1, 17.9, 92.7, 153.1),
    ("Q5_0", "output"): (8.5, 12.5, 92.8, 148.7),
    ("Q5_0", "moe_up"): (8.5, 16.8, 70.4, 146.8),
    ("Q5_0", "moe_down"): (8.4, 16.1, 86.9, 125.8),
    ("Q4_K", "attn_q"): (11.7, 18.5, 100.2, 200.6),
    ("Q4_K", "attn_output"): (11.9, 19.6, 103.9, 176.9),
    ("Q4_K", "exp_up"): (11.6, 18.1, 126.9, 201.0),
    ("Q4_K", "dense"): (9.9, 19.1, 129.4, 190.0),
    ("Q4_K", "output"): (9.9, 18.8, 111.3, 189.3),
    ("Q4_K", "moe_up"): (9.8, 18.9, 77.6, 154.4),
    ("Q5_K", "attn_q"): (9.9, 18.9, 114.5, 184.1),
    ("Q5_K", "attn_output"): (9.7, 19.3, 83.3, 149.3),
    ("Q5_K", "exp_up"): (9.8, 17.3, 116.1, 172.6),
    ("Q5_K", "dense"): (10.6, 17.0, 120.8, 209.1),
    ("Q5_K", "output"): (10.3, 14.3, 102.9, 165.9),
    ("Q5_K", "moe_up"): (9.1, 17.6, 80.8, 165.4),
    ("Q6_K", "attn_q"): (11.0, 17.2, 88.9, 147.4),
    ("Q6_K", "attn_output"): (10.5, 21.0, 96.0, 138.3),
    ("Q6_K", "exp_up"): (10.6, 18.3, 73.4, 139.8),
    ("Q6_K", "dense"): (11.7, 18.0, 96.1, 139.1),
    ("Q6_K", "output"): (9.6, 16.4, 91.0, 166.7),
    ("Q6_K", "moe_up"): (9.6, 19.6, 56.2, 105.7),
    ("Q2_K", "attn_q"): (8.3, 13.8, 97.3, 171.6),
    ("Q2_K", "attn_output"): (6.8, 14.2, 99.6, 182.7),
    ("Q2_K", "exp_up"): (7.5, 11.5, 88.2, 136.6),
    ("Q2_K", "dense"): (7.6, 14.5, 116.8, 181.5),
    ("Q2_K", "output"): (8.0, 15.7, 115.4, 235.2),
    ("Q2_K", "moe_up"): (9.6, 15.7, 81.1, 153.4),
    ("IQ4_NL", "attn_q"): (10.6, 20.2, 105.7, 184.9),
    ("IQ4_NL", "attn_output"): (10.3, 19.4, 104.9, 206.0),
    ("IQ4_NL", "exp_up"): (8.4, 15.5, 101.5, 201.0),
    ("IQ4_NL", "exp_down"): (10.1, 12.4, 59.0, 116.2),
    ("IQ4_NL", "dense"): (10.3, 16.7, 96.5, 159.6),
    ("IQ4_NL", "output"): (8.1, 15.6, 91.6, 173.9),
    ("IQ4_NL", "moe_up"): (8.2, 17.0, 81.9, 134.1),
    ("IQ4_NL", "moe_down"): (9.6, 16.1, 81.7, 144.4),
    ("IQ1_S", "attn_q"): (2.1, 2.9, 89.5, 177.8),
    ("IQ1_S", "attn_output"): (1.6, 2.8, 97.9, 167.3),
    ("IQ1_S", "exp_up"): (1.5, 3.8, 85.8, 106.5),
    ("IQ1_S", "dense"): (1.6, 4.4, 114.7, 209.5),
    ("IQ1_S", "output"): (2.1, 3.3, 111.8, 201.5),
    ("IQ1_S", "moe_up"): (2.3, 3.5, 78.9, 166.4),
    ("F16", "attn_q"): (15.0, 25.5, 50.1, 110.6),
    ("F16", "attn_output"): (15.9, 24.4, 54.2, 106.7),
    ("F16", "exp_up"): (15.5, 26.9, 51.4, 109.3),
    ("F16", "exp_down"): (13.8, 23.4, 55.9, 107.0),
    ("F16", "dense"): (14.9, 31.0, 52.8, 105.5),
    ("F16", "output"): (16.4, 30.2, 64.2, 113.7),
    ("F16", "moe_up"): (17.6, 31.0, 57.6, 116.5),
    ("F16", "moe_down"): (14.6, 20.7, 70.2, 128.0),
    ("BF16", "attn_q"): (14.9, 30.3, 53.2, 108.8),
    ("BF16", "attn_output"): (14.2, 26.2, 54.9, 110.0),
    ("BF16", "exp_up"): (15.8, 30.1, 55.7, 110.7),
    ("BF16", "exp_down"): (11.7, 22.3, 53.6, 105.5),
    ("BF16", "dense"): (15.1, 26.4, 63.4, 101.2),
    ("BF16", "output"): (15.8, 25.3, 60.4, 108.3),
    ("BF16", "moe_up"): (16.2, 25.4, 48.5, 91.1),
    ("BF16", "moe_down"): (14.1, 21.2, 45.9, 91.1),
}

def alternated_times(fns, min_reps, min_seconds):
    """call fns in turn, round after round, so all see the same machine load: their times per round"""
    times, start = [[] for _ in fns], time.perf_counter()
    while len(times[0]) < min_reps or time.perf_counter() - start < min_seconds:
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f(len(ts))
            ts.append(time.perf_counter() - t0)
    return times


def paired_median_times(ours, theirs, min_reps, min_seconds):
    """alternate our call and ik's so both see the same machine load; medians of each"""
    a, b = alternated_times([ours, theirs], min_reps, min_seconds)
    return statistics.median(a), statistics.median(b)


# (name, K, M): weight [K -> M]; the ik row with the same name is the comparison
SHAPES = [("attn_q", 2048, 3072), ("attn_output", 2048, 2048), ("exp_up", 2048, 1408),
          ("exp_down", 1408, 2048), ("dense", 2048, 10944), ("dense_down", 10944, 2048),
          ("output", 2048, 102400)]
LARGE = {"dense", "dense_down", "output"}  # where the >= 85 % of bandwidth target applies
N_EMBD, N_FF_EXP = 2048, 1408
# experts' down projection has K = 1408, not a multiple of 256: llama.cpp quantizes it with a
# 32-block type instead (its fallback for the 256-block types)
DOWN_FALLBACK = {"Q2_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0", "IQ1_S": "IQ4_NL",
                 "IQ1_S_R": "IQ4_NL_R", "Q4_K_R": "Q5_0", "Q5_K_R": "Q5_0", "Q6_K_R": "Q8_0"}


def median_time(fn, min_reps, min_seconds):
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(len(times))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth(buf, n_threads, reps=5):
    """bytes/s of a streaming read of buf (median)"""
    mm.stream_read(buf, n_threads)
    return buf.size / median_time(lambda i: mm.stream_read(buf, n_threads), reps, 0)


def copies_of(w, pool_bytes):
    """enough copies of w to overflow the last-level cache when cycled"""
    n = max(1, min(64, math.ceil(pool_bytes / w.nbytes)))
    return [w] + [w.copy() for _ in range(n - 1)]


def converted_copies(t, ws_src):
    return [mm.repack(w, gguf_type(t), target=t)[0] for w in ws_src] if t in mm.INTERNAL_TYPES else ws_src


def ik_fig(tname, op_name, col):
    fig = IK_OPS.get((tname, op_name))
    return fig[col] if fig else None


def bench_type(tname, args, bw, records, rows):
    t = TYPE_IDS[tname]
    src_t = gguf_type(t)  # ik runs this type, and its bytes are the ones counted
    src_name = TYPE_NAMES[src_t]
    bs = TYPES[src_t][1]
    rng = np.random.default_rng(0)
    for name, K, M in SHAPES:
        if K % bs or (args.skip_output and name == "output") or name not in args.shapes:
            continue
        if t == mm.IQ4_NL_ROWS4 and (M % 4 or K % mm.ROWS4_VALUES):  # (its matrices: whole row groups)
            continue
        w, w_src = bench_weights(t, (M, K), seed=1)
        if w.nbytes > args.max_weight_bytes:
            continue
        if "gemv" in args.ops:
            ws_src = copies_of(w_src, args.pool_bytes)
            ws = converted_copies(t, ws_src)
            x = rng.standard_normal(K, dtype=np.float32)
            out = np.empty(M, np.float32)
            ikc = args.ik.prepare(ws_src, src_t, x.reshape(1, K)) if args.ik else None
            if t != src_t:
                del ws_src
            # the read bandwidth is measured alternating with the GEMV, by streaming the same
            # number of bytes from the same pool (its figure then sees the same machine load)
            n_stream = ws[0].nbytes // 4096 * 4096
            streams = [w.reshape(-1)[:n_stream] for w in ws]
            for nth in args.threads:
                fns = [lambda i: mm.matmul(ws[i % len(ws)], t, x, out=out, n_threads=nth),  # noqa: E731
                       lambda i: mm.stream_read(streams[(i + len(ws) // 2) % len(ws)], nth)]
                if ikc:
                    fns.append(lambda i: args.ik.compute(ikc[0], ikc[1][i % len(ws)], nth))
                times = alternated_times(fns, args.reps, args.min_seconds)
                s = statistics.median(times[0])
                s_ik = statistics.median(times[2]) if ikc else None
                bw_frac = statistics.median(w_src.nbytes / n_stream * ts / tg for tg, ts in zip(times[0], times[1]))
                gbps = w_src.nbytes / s / 1e9
                ik = ik_fig(src_name, name, 0 if nth == 1 else 1) if nth <= 2 else None
                add(records, rows, "gemv", tname, f"{K}x{M}", 1, nth, s, gbps, bw_frac,
                    None, ik, gbps / ik if ik else None, name, s_ik / s if s_ik else None)
            if ikc:
                args.ik.free(ikc[0])
            del ws
        if "gemm" in args.ops and not (name == "output" and not args.gemm_output):
            x = rng.standard_normal((args.tokens, K), dtype=np.float32)
            out = np.empty((args.tokens, M), np.float32)
            ikc = args.ik.prepare([w_src], src_t, x) if args.ik else None
            for nth in args.threads:
                ours = lambda i: mm.matmul(w, t, x, out=out, n_threads=nth)  # noqa: E731
                if ikc:
                    s, s_ik = paired_median_times(ours, lambda i: args.ik.compute(ikc[0], ikc[1][0], nth),
                                                  args.gemm_reps, 0)
                else:
                    s, s_ik = median_time(ours, args.gemm_reps, 0), None
                gflops = 2.0 * K * M * args.tokens / s / 1e9
                ik = ik_fig(src_name, name, 2 if nth == 1 else 3) if nth <= 2 else None
                add(records, rows, "gemm", tname, f"{K}x{M}", args.tokens, nth, s, w_src.nbytes / s / 1e9,
                    w_src.nbytes / s / bw[nth], gflops, ik, gflops / ik if ik else None, name,
                    s_ik / s if s_ik else None)
            if ikc:
                args.ik.free(ikc[0])
        del w, w_src
    if "moe" in args.ops:
        bench_moe(tname, args, bw, records, rows)


def bench_moe(tname, args, bw, records, rows):
    gt = TYPE_IDS[tname]
    gt_src = gguf_type(gt)
    dname = tname if N_FF_EXP % TYPES[gt_src][1] == 0 else DOWN_FALLBACK[tname]
    dt = TYPE_IDS[dname]
    label = tname if dname == tname else f"{tname}/{dname}"
    K, F = N_EMBD, N_FF_EXP
    per_expert = 2 * F * row_bytes(gt_src, K) + K * row_bytes(gguf_type(dt), F)  # GGUF bytes
    n_expert = 64
    while n_expert * per_expert > args.max_weight_bytes * 2 and n_expert > 8:
        n_expert //= 2
    gate, gate_src = bench_weights(gt, (n_expert, F, K), seed=2)
    up, up_src = bench_weights(gt, (n_expert, F, K), seed=3)
    down, down_src = bench_weights(dt, (n_expert, K, F), seed=4)
    rng = np.random.default_rng(5)
    up_ik = lambda col: ik_fig(TYPE_NAMES[gt_src], "moe_up", col)  # noqa: E731
    down_ik = lambda col: ik_fig(dname, "moe_down", col) or ik_fig(dname, "exp_down", col)  # noqa: E731
    for n_tok, k_used in ((1, 8), (1, 6), (args.tokens, 6)):
        x = rng.standard_normal((n_tok, K), dtype=np.float32)
        n_routes = 16 if n_tok == 1 else 2
        routes = [np.stack([rng.permutation(n_expert)[:k_used] for _ in range(n_tok)]).astype(np.int32)
                  for _ in range(n_routes)]
        ew = np.full((n_tok, k_used), 1.0 / k_used, np.float32)
        out = np.empty((n_tok, K), np.float32)
        n_sel = [len(np.unique(r)) for r in routes]
        ikc = (args.ik.prepare_moe(x, routes, gate_src, gt_src, up_src, down_src, gguf_type(dt))
               if args.ik else None)
        for nth in args.threads:
            reps = args.reps if n_tok == 1 else args.gemm_reps
            ours = lambda i: mm.moe_forward(x, routes[i % n_routes], ew, gate, gt, up, gt, down, dt, out=out,  # noqa: E731
                                            n_threads=nth)
            if ikc:
                s, s_ik = paired_median_times(ours, lambda i: args.ik.compute(ikc[0], ikc[1][i % n_routes], nth),
                                              reps, args.min_seconds if n_tok == 1 else 0)
            else:
                s, s_ik = median_time(ours, reps, args.min_seconds if n_tok == 1 else 0), None
            wbytes = statistics.median(n_sel) * per_expert
            gbps = wbytes / s / 1e9
            flops = 2.0 * n_tok * k_used * 3 * K * F
            col = (0 if nth == 1 else 1) if n_tok == 1 else (2 if nth == 1 else 3)
            ik = None
            if nth <= 2 and up_ik(col) and down_ik(col):
                if n_tok == 1:  # ik time for the same bytes: gate + up at its moe_up rate, down at moe_down's
                    b_up, b_down = 2 * F * row_bytes(gt_src, K), K * row_bytes(gguf_type(dt), F)
                    ik = (b_up + b_down) / (b_up / up_ik(col) + b_down / down_ik(col))
                else:
                    ik = 3 / (2 / up_ik(col) + 1 / down_ik(col))
            ours = gbps if n_tok == 1 else flops / s / 1e9
            add(records, rows, "moe", label, f"{K}x{F}/{k_used}of{n_expert}", n_tok, nth, s, gbps,
                wbytes / s / bw[nth], flops / s / 1e9, ik, ours / ik if ik else None, "moe",
                s_ik / s if s_ik else None)
        if ikc:
            args.ik.free(ikc[0])


def add(records, rows, op, tname, shape, tokens, nth, s, gbps, frac, gflops, ik, ratio, label, same_run=None):
    rec = {"op": op, "type": tname, "shape": shape, "tokens": tokens, "threads": nth, "isa": mm.isa_level(),
           "seconds": s, "gbps": gbps, "bw_fraction": frac}
    if same_run:  # with --ik / --ik-lib: ik's time for the same op in this run, as t_ik / t_ours
        rec["ik_same_run_ratio"] = same_run
    records.append(rec)
    rows.append((op, tname, label, shape, tokens, nth, mm.isa_level(), s * 1e3, gbps, frac, gflops, ik, ratio,
                 same_run))
    if not rows_quiet[0]:
        print_row(rows[-1], sys.stderr)


rows_quiet = [False]
INTERNAL_NAMES = {TYPE_NAMES[t] for t in mm.INTERNAL_TYPES}
HEADER = ("op", "type", "name", "shape", "tok", "thr", "isa", "ms", "GB/s", "bw%", "GFLOP/s", "ik fig", "ratio",
          "ik same run: t_ik/t_ours")


def print_row(r, f):
    op, tname, label, shape, tok, nth, isa, ms, gbps, frac, gflops, ik, ratio, same_run = r
    cells = [op, tname, label, shape, str(tok), str(nth), isa, f"{ms:.3f}", f"{gbps:.2f}", f"{100 * frac:.0f}",
             f"{gflops:.1f}" if gflops else "", f"{ik:.1f}" if ik else "", f"{ratio:.2f}" if ratio else "",
             f"{same_run:.2f}" if same_run else ""]
    print("| " + " | ".join(cells) + " |", file=f, flush=True)


def main():
    global mm
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(TYPE_NAMES[t] for t in sorted(mm.supported_types())))
    ap.add_argument("--ops", default="gemv,gemm,moe")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=512, help="tokens for GEMM and prefill MoE")
    ap.add_argument("--reps", type=int, default=15, help="minimum repetitions of GEMV / decode MoE")
    ap.add_argument("--gemm-reps", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.3, help="minimum time per GEMV figure")
    ap.add_argument("--pool-bytes", type=float, default=384e6, help="GEMV weights cycled (bytes)")
    ap.add_argument("--bw-bytes", type=float, default=512e6, help="read-bandwidth buffer (bytes)")
    ap.add_argument("--max-weight-bytes", type=float, default=600e6, help="skip larger weight tensors")
    ap.add_argument("--skip-output", action="store_true", help="skip the 2048x102400 output shape")
    ap.add_argument("--shapes", default=",".join(n for n, _, _ in SHAPES), help="shape names to run (GEMV/GEMM)")
    ap.add_argument("--gemm-output", action="store_true", help="also GEMM the output shape (slow)")
    ap.add_argument("--ik", action="store_true",
                    help="also time ik_llama.cpp's mul_mat (ik-llama-cpp-python wheel) in the same run")
    ap.add_argument("--ik-lib", metavar="PATH", help="with --ik, or alone: ik's libggml.so to time (a native build)")
    ap.add_argument("--isa", choices=minillm_kernels.LEVELS, help="minillm's ISA level (default: the best here)")
    ap.add_argument("--json", nargs="?", const="-", help="write the records as JSON (to stdout with no file)")
    args = ap.parse_args()
    args.ops = set(args.ops.split(","))
    args.shapes = set(args.shapes.split(","))
    if args.isa:
        mm = minillm_kernels.kernels(args.isa).matmul
    args.ik = IkGgml(args.ik_lib) if args.ik or args.ik_lib else None
    args.threads = [int(v) for v in args.threads.split(",")]
    types = [v.strip().upper() for v in args.types.split(",")]
    for tn in types:
        if tn not in TYPE_IDS or TYPE_IDS[tn] not in mm.supported_types():
            ap.error(f"unknown or unsupported type {tn}")

    buf = np.ones(int(args.bw_bytes) // 4096 * 4096, np.uint8)
    print(f"# isa={mm.isa_level()} cores={os.cpu_count()} ik={args.ik.path if args.ik else None}", file=sys.stderr)
    print("| " + " | ".join(HEADER) + " |", file=sys.stderr)
    records, rows, bws = [], [], {n: [] for n in args.threads}
    for tn in types:
        bw = {}
        for nth in args.threads:  # re-measured before every type: the machine is shared
            bw[nth] = read_bandwidth(buf, nth)
            bws[nth].append(bw[nth])
            print(f"# read bandwidth {nth} thr: {bw[nth] / 1e9:.2f} GB/s", file=sys.stderr)
        bench_type(tn, args, bw, records, rows)
    summary = {nth: statistics.median(v) / 1e9 for nth, v in bws.items()}
    out = sys.stdout
    print(f"\nminillm ISA level {mm.isa_level()}; ik_llama.cpp: {args.ik.path if args.ik else 'not timed'}", file=out)
    print("read bandwidth (median over the run): " +
          ", ".join(f"{n} thr {v:.2f} GB/s" for n, v in summary.items()), file=out)
    print("| " + " | ".join(HEADER) + " |", file=out)
    print("|" + "---|" * len(HEADER), file=out)
    for r in rows:
        print_row(r, out)
    if any(r[1].split("/")[0] in INTERNAL_NAMES for r in rows):
        print("\n*_R types: rows repacked at load time by minillm (IQ1_S_R: 74 B per 256 values; Q4_K_R, "
              "Q5_K_R, Q6_K_R, IQ4_NL_R: the same bytes); their GB/s and bw% count the ORIGINAL type's "
              "bytes, ik figures are ik's for the original type.", file=out)
    if args.json:
        text = json.dumps(records, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
