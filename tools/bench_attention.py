"""Benchmark one-token MLA attention (absorbed, latent cache) per layer.

For each cache type, strategy ("heads", "kparallel"), thread count and depth,
the median seconds of one mla_decode call (H=16 heads, 576-wide rows, 512-wide
outputs: one layer of DeepSeek-V2-Lite), expressed two ways against limits the
tool measures in the same run:
  gbps / bw_fraction     : cache bytes (n_kv x row bytes, read once) per second vs
                           the streaming read bandwidth at that thread count
  gflops / flop_fraction : 2·H·n_kv·(576+512) flops per second vs the fp32 FMA peak
                           at that thread count (int16 rows can exceed it: the 8-bit
                           caches, and on AVX-512 f16/bf16 too, attention.tile_int16)
Then the crossover depth where kparallel overtakes heads, and the ratio to
ik_llama.cpp's FlashMLA per-layer figures (fit of llama-sweep-bench, 2 threads,
Zen3; ../shared/reference/ik_llama_cpp_sweeps.md): different machines, orientation only.
With --ik, ik_llama.cpp's own FlashMLA (ggml_flash_attn_ext through the
ik-llama-cpp-python wheel or a native --ik-lib, on the same cache bytes: f16, q8_0 and q8_KV caches, and
bf16 with a native library on a CPU with AVX512-BF16) is timed
in the same run, its calls alternating with ours: the side-by-side ratio.

    python tools/bench_attention.py                 # full table
    python tools/bench_attention.py --json          # records only
    python tools/bench_attention.py --types q8_0 --depths 1024,4096 --threads 2
    python tools/bench_attention.py --wait-policy passive   # on a machine shared with other jobs
    python tools/bench_attention.py --ik --types f16,q8_0 --depths 4096,8192,16384 --threads 2

Each call reads its cache from memory, not from the last-level cache, as decoding
does (every layer has its own cache): the calls cycle over copies of the cache that
together exceed --pool-bytes (0: one copy, which then sits in the L2/L3 caches).
Figures are medians of --reps calls ("seconds" in the JSON records); the table also
shows the fastest call, which is what survives on a machine shared with other jobs
(an OpenMP team whose second thread is descheduled stalls for whole time slices).
The crossover is reported from both statistics, and from a sweep of small depths.
"""
import os
import argparse
import itertools
import json
import sys
import time

# numpy's OpenBLAS threads spin after a BLAS call and take cores from the kernels' OpenMP team
# (the F16 MoE prefill measured 5-20% faster with one): numpy only prepares data here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
attn = None  # imported in main(), after OMP_WAIT_POLICY is set: minillm_kernels.kernels(--isa).attention
ISA = None  # its level

N_HEAD, WIDTH, DV = 16, 576, 512
DEPTHS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SMALL_DEPTHS = (1, 8, 16, 32, 48, 64, 96)
TYPES = ("f16", "bf16", "q8_0", "q8_KV")
STRATEGIES = ("heads", "kparallel")
# ik_llama.cpp FlashMLA attention, ms per layer per token at depth (2 threads), from the fitted sweeps
IK_MS = {"f16": {4096: 1.43, 8192: 2.87, 16384: 5.73}, "q8_0": {4096: 1.16, 8192: 2.32, 16384: 4.64}}


def time_calls(fn, reps, min_seconds=0.15):
    """(median, fastest) seconds of fn over at least reps calls (more for short calls)."""
    fn()  # warm-up (page faults, thread pool)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def make_caches(ct, n_ctx, pool_bytes, rng):
    """Copies of one random cache of n_ctx rows, enough to exceed pool_bytes together."""
    cache = np.zeros((n_ctx, attn.row_bytes(ct, WIDTH)), np.uint8)
    for p in range(0, n_ctx, 4096):
        n = min(4096, n_ctx - p)
        attn.kv_cache_store(cache, ct, p, rng.standard_normal((n, WIDTH)).astype(np.float32))
    return [cache] + [cache.copy() for _ in range(int(pool_bytes // cache.nbytes))]


def machine_limits(threads, reps):
    """Read bandwidth (bytes/s) and FMA peak (flop/s) per thread count, medians."""
    buf = np.ones(256 << 20, np.uint8)
    limits = {}
    for t in threads:
        attn.bench_read(buf, t)
        bw = np.median([buf.size / attn.bench_read(buf, t) for _ in range(reps)])
        fl = []
        for _ in range(reps):
            sec, flops = attn.bench_fma(5_000_000, t)
            fl.append(flops / sec)
        limits[t] = (float(bw), float(np.median(fl)))
    return limits


def run(args):
    threads = [int(t) for t in args.threads.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    types = args.types.split(",")
    strategies = args.strategies.split(",")
    limits = machine_limits(threads, args.reps)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((N_HEAD, WIDTH)).astype(np.float32)
    out = np.zeros((N_HEAD, DV), np.float32)
    records, best_times = [], {}
    for ct in types:
        caches = make_caches(ct, max(depths), args.pool_bytes, rng)
        nxt = itertools.cycle(caches).__next__
        for t in threads:
            bw, peak = limits[t]
            for d in depths:
                for st in strategies:
                    sec, best = time_calls(lambda: attn.mla_decode(q, nxt(), ct, d, 0.07, out, st, t), args.reps)
                    best_times[(st, ct, d, t)] = best
                    gbps = d * caches[0].shape[1] / sec / 1e9
                    gflops = 2.0 * N_HEAD * d * (WIDTH + DV) / sec / 1e9
                    records.append({"strategy": st, "cache_type": ct, "depth": d, "threads": t, "isa": ISA,
                                    "seconds": sec,
                                    "gbps": gbps, "bw_fraction": gbps * 1e9 / bw,
                                    "gflops": gflops, "flop_fraction": gflops * 1e9 / peak})
    return records, limits, best_times


def ik_cache_types(native):
    """The cache types ik's FlashMLA is timed on: q8_KV rows are the same bytes as ours (scale, sum, int8
    values); its bf16 FlashMLA aborts without AVX512-BF16, so bf16 only with a native library on a CPU
    that has it."""
    from minillm_kernels import cpu

    types = ["f16", "q8_0", "q8_KV"]
    if native and cpu.features()["avx512_bf16"]:
        types.append("bf16")
    return types


def ik_best(records):
    """Per (threads, depth): ik's fastest cache type among those timed, and each of our records' ratio
    against it (ik_best_type, ik_best_seconds, ik_best_ratio = t_ik_best / t_ours)."""
    best = {}
    for r in records:
        key = (r["threads"], r["depth"])
        if key not in best or r["ik_seconds"] < best[key][1]:
            best[key] = (r["cache_type"], r["ik_seconds"])
    for r in records:
        ct, sec = best[(r["threads"], r["depth"])]
        r.update(ik_best_type=ct, ik_best_seconds=sec, ik_best_ratio=sec / r["seconds"])
    return records


def side_by_side(args):
    """kparallel vs ik_llama.cpp's FlashMLA on the same cache bytes, calls alternating: medians of each
    ((cache type, threads, depth, ours, ik's) rows, ik's libggml path)."""
    from ik_ggml import IkGgml
    from bench_kernels import paired_median_times

    ik = IkGgml(args.ik_lib)
    threads = [int(t) for t in args.threads.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    rng = np.random.default_rng(2)
    q = rng.standard_normal((N_HEAD, WIDTH)).astype(np.float32)
    out = np.zeros((N_HEAD, DV), np.float32)
    rows = []
    for ct in args.types.split(","):
        if ct not in ik_cache_types(args.ik_lib is not None):
            continue
        caches = make_caches(ct, max(depths), args.pool_bytes, rng)
        peers = [ik.prepare_mla(q, c, ct, depths, 0.07) for c in caches]  # ik's own copies, cycled the same way
        n = len(caches)
        for t in threads:
            for d in depths:
                ours = lambda i: attn.mla_decode(q, caches[i % n], ct, d, 0.07, out, "kparallel", t)  # noqa: E731
                theirs = lambda i: ik.compute(peers[i % n][0], peers[i % n][1][d][0], t)  # noqa: E731
                ours(0), theirs(0)
                s_ours, s_ik = paired_median_times(ours, theirs, args.reps, 0.3)
                rows.append((ct, t, d, s_ours, s_ik))
        for ctx, _ in peers:
            ik.free(ctx)
    return rows, ik.path


def small_depth_sweep(types, threads, reps):
    """Fastest-call times of both strategies at small depths (where the crossover lies)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((N_HEAD, WIDTH)).astype(np.float32)
    out = np.zeros((N_HEAD, DV), np.float32)
    best = {}
    for ct in types:
        cache = np.zeros((1024, attn.row_bytes(ct, WIDTH)), np.uint8)
        attn.kv_cache_store(cache, ct, 0, rng.standard_normal((1024, WIDTH)).astype(np.float32))
        for t in threads:
            for d in SMALL_DEPTHS:
                for st in ("heads", "kparallel"):
                    best[(st, ct, d, t)] = time_calls(lambda: attn.mla_decode(q, cache, ct, d, 0.07, out, st, t),
                                                      max(reps, 20))[1]
    return best


def crossover(times_by_key, ct, t):
    """Smallest measured depth from which kparallel is faster than heads at every larger depth."""
    times = {}
    for (st, c, d, th), sec in times_by_key.items():
        if c == ct and th == t:
            times.setdefault(d, {})[st] = sec
    depths = sorted(d for d in times if len(times[d]) == 2)
    best = None
    for d in reversed(depths):
        if times[d]["kparallel"] < times[d]["heads"]:
            best = d
        else:
            break
    return best


def print_table(records, limits, best_times, small, wait_policy):
    print(f"ISA level {ISA}; OMP_WAIT_POLICY={wait_policy}; machine (measured in this run, medians):")
    for t, (bw, peak) in sorted(limits.items()):
        print(f"  {t} thread(s): read {bw / 1e9:6.1f} GB/s, fp32 FMA peak {peak / 1e9:6.1f} GFLOP/s")
    print()
    print(f"{'type':6s} {'thr':>3s} {'depth':>6s} {'strategy':9s} {'ms/layer':>9s} {'GB/s':>6s} {'%bw':>5s} "
          f"{'GFLOP/s':>8s} {'%peak':>6s} {'best ms':>8s} {'best GF/s':>9s}")
    for r in records:
        best = best_times[(r["strategy"], r["cache_type"], r["depth"], r["threads"])]
        print(f"{r['cache_type']:6s} {r['threads']:3d} {r['depth']:6d} {r['strategy']:9s} {r['seconds'] * 1e3:9.3f} "
              f"{r['gbps']:6.1f} {100 * r['bw_fraction']:5.0f} {r['gflops']:8.1f} {100 * r['flop_fraction']:6.0f} "
              f"{best * 1e3:8.3f} {r['gflops'] * r['seconds'] / best:9.1f}")
    print()
    med = {(r["strategy"], r["cache_type"], r["depth"], r["threads"]): r["seconds"] for r in records}
    keys = sorted({(r["cache_type"], r["threads"]) for r in records})
    print("crossover (kparallel faster than heads from this depth on; medians / fastest calls / "
          f"fastest calls with the small-depth sweep {SMALL_DEPTHS}):")
    for ct, t in keys:
        cs = [crossover(med, ct, t), crossover(best_times, ct, t), crossover({**small, **best_times}, ct, t)]
        print(f"  {ct:6s} {t} thread(s): " + " / ".join(str(c) if c is not None else "never" for c in cs))
    print()
    print("vs ik_llama.cpp FlashMLA per-layer attention (2 threads, fitted from its sweeps on its Zen3 machine;\n"
          "ratio > 1: we are faster; ours as median / fastest call):")
    for r in records:
        ik = IK_MS.get(r["cache_type"], {}).get(r["depth"])
        if ik and r["threads"] == 2 and r["strategy"] == "kparallel":
            best = best_times[("kparallel", r["cache_type"], r["depth"], 2)] * 1e3
            print(f"  {r['cache_type']:6s} depth {r['depth']:6d}: ik {ik:5.2f} ms, ours {r['seconds'] * 1e3:6.2f} / "
                  f"{best:6.2f} ms, ratio {ik / (r['seconds'] * 1e3):5.2f} / {ik / best:5.2f}")


def side_by_side_records(rows, ik_path):
    return ik_best([{"strategy": "kparallel", "cache_type": ct, "depth": d, "threads": t, "isa": ISA, "seconds": s_ours,
             "ik_seconds": s_ik, "ik_ratio": s_ik / s_ours, "ik_lib": ik_path} for ct, t, d, s_ours, s_ik in rows])


def print_side_by_side(records):
    print(f"same run, ik_llama.cpp FlashMLA (ggml_flash_attn_ext, its default f16 precision; {records[0]['ik_lib']})\n"
          "vs our kparallel, calls alternating, medians; ratio = t_ik / t_ours (> 1: we are faster):")
    print(f"{'type':6s} {'thr':>3s} {'isa':>6s} {'depth':>6s} {'ik ms':>8s} {'ours ms':>8s} {'ratio':>6s} "
          f"{'ik best':>8s} {'ms':>8s} {'ratio':>6s}")
    for r in records:
        print(f"{r['cache_type']:6s} {r['threads']:3d} {r['isa']:>6s} {r['depth']:6d} {r['ik_seconds'] * 1e3:8.3f} "
              f"{r['seconds'] * 1e3:8.3f} {r['ik_ratio']:6.2f} {r['ik_best_type']:>8s} {r['ik_best_seconds'] * 1e3:8.3f} "
              f"{r['ik_best_ratio']:6.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per figure (median)")
    ap.add_argument("--json", action="store_true", help="print the records as a JSON list")
    ap.add_argument("--wait-policy", choices=("active", "passive"), default=None,
                    help="set OMP_WAIT_POLICY for this run (default: leave the environment as it is)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the small-depth crossover sweep")
    ap.add_argument("--pool-bytes", type=float, default=256e6,
                    help="cycle over cache copies exceeding this many bytes (0: one copy, cache-resident)")
    ap.add_argument("--ik", action="store_true",
                    help="only the same-run side-by-side with ik_llama.cpp's FlashMLA (each cache type it takes; ik_best_*: its fastest)")
    ap.add_argument("--ik-lib", metavar="PATH", help="ik's libggml.so for --ik (a native build; default the wheel's)")
    ap.add_argument("--isa", choices=("scalar", "avx2", "avx512", "amx"),
                    help="minillm's ISA level (default: the best here)")
    args = ap.parse_args(argv)
    if args.wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy
    global attn, ISA
    import minillm_kernels
    ISA = args.isa or minillm_kernels.LEVEL
    attn = minillm_kernels.kernels(ISA).attention
    if args.ik or args.ik_lib:
        records = side_by_side_records(*side_by_side(args))
        if args.json:
            json.dump(records, sys.stdout, indent=1)
            print()
        else:
            print_side_by_side(records)
        return
    records, limits, best_times = run(args)
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
        return
    small = {} if args.no_sweep else small_depth_sweep(args.types.split(","), [int(t) for t in args.threads.split(",")],
                                                        args.reps)
    print_table(records, limits, best_times, small, os.environ.get("OMP_WAIT_POLICY", "(unset: active spin)"))


if __name__ == "__main__":
    main()
