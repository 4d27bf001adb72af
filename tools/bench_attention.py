"""Benchmark one-token MLA attention (absorbed, latent cache) per layer.

For each cache type, strategy ("heads", "kparallel"), thread count and depth,
the median seconds of one mla_decode call (H=16 heads, 576-wide rows, 512-wide
outputs: one layer of DeepSeek-V2-Lite), expressed two ways against limits the
tool measures in the same run:
  gbps / bw_fraction     : cache bytes (n_kv x row bytes, read once) per second vs
                           the streaming read bandwidth at that thread count
  gflops / flop_fraction : 2·H·n_kv·(576+512) flops per second vs the fp32 FMA peak
                           at that thread count (int8 dot products can exceed it)
Then the crossover depth where kparallel overtakes heads, and the ratio to
ik_llama.cpp's FlashMLA per-layer figures (fit of llama-sweep-bench, 2 threads,
Zen3; ../shared/reference/ik_llama_cpp_sweeps.md): different machines, orientation only.

    python tools/bench_attention.py                 # full table
    python tools/bench_attention.py --json          # records only
    python tools/bench_attention.py --types q8_0 --depths 1024,4096 --threads 2
"""
import argparse
import json
import sys
import time

import numpy as np

from minillm_kernels import attention as attn

N_HEAD, WIDTH, DV = 16, 576, 512
DEPTHS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TYPES = ("f16", "bf16", "q8_0", "q8_KV")
STRATEGIES = ("heads", "kparallel")
# ik_llama.cpp FlashMLA attention, ms per layer per token at depth (2 threads), from the fitted sweeps
IK_MS = {"f16": {4096: 1.43, 8192: 2.87, 16384: 5.73}, "q8_0": {4096: 1.16, 8192: 2.32, 16384: 4.64}}


def median_time(fn, reps, min_seconds=0.15):
    fn()  # warm-up (page faults, thread pool)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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
    records = []
    for ct in types:
        n_ctx = max(depths)
        cache = np.zeros((n_ctx, attn.row_bytes(ct, WIDTH)), np.uint8)
        for p in range(0, n_ctx, 4096):
            n = min(4096, n_ctx - p)
            attn.kv_cache_store(cache, ct, p, rng.standard_normal((n, WIDTH)).astype(np.float32))
        for t in threads:
            bw, peak = limits[t]
            for d in depths:
                for st in strategies:
                    sec = median_time(lambda: attn.mla_decode(q, cache, ct, d, 0.07, out, st, t), args.reps)
                    gbps = d * cache.shape[1] / sec / 1e9
                    gflops = 2.0 * N_HEAD * d * (WIDTH + DV) / sec / 1e9
                    records.append({"strategy": st, "cache_type": ct, "depth": d, "threads": t, "seconds": sec,
                                    "gbps": gbps, "bw_fraction": gbps * 1e9 / bw,
                                    "gflops": gflops, "flop_fraction": gflops * 1e9 / peak})
    return records, limits


def crossover(records, ct, t):
    """Smallest measured depth from which kparallel is faster than heads at every larger depth."""
    times = {}
    for r in records:
        if r["cache_type"] == ct and r["threads"] == t:
            times.setdefault(r["depth"], {})[r["strategy"]] = r["seconds"]
    depths = sorted(d for d in times if len(times[d]) == 2)
    best = None
    for d in reversed(depths):
        if times[d]["kparallel"] < times[d]["heads"]:
            best = d
        else:
            break
    return best


def print_table(records, limits):
    print("machine (measured in this run, medians):")
    for t, (bw, peak) in sorted(limits.items()):
        print(f"  {t} thread(s): read {bw / 1e9:6.1f} GB/s, fp32 FMA peak {peak / 1e9:6.1f} GFLOP/s")
    print()
    print(f"{'type':6s} {'thr':>3s} {'depth':>6s} {'strategy':9s} {'ms/layer':>9s} {'GB/s':>6s} {'%bw':>5s} "
          f"{'GFLOP/s':>8s} {'%peak':>6s}")
    for r in records:
        print(f"{r['cache_type']:6s} {r['threads']:3d} {r['depth']:6d} {r['strategy']:9s} {r['seconds'] * 1e3:9.3f} "
              f"{r['gbps']:6.1f} {100 * r['bw_fraction']:5.0f} {r['gflops']:8.1f} {100 * r['flop_fraction']:6.0f}")
    print()
    keys = sorted({(r["cache_type"], r["threads"]) for r in records})
    print("crossover (kparallel faster than heads from this depth on):")
    for ct, t in keys:
        c = crossover(records, ct, t)
        print(f"  {ct:6s} {t} thread(s): {c if c is not None else 'never (in the measured depths)'}")
    print()
    print("vs ik_llama.cpp FlashMLA per-layer attention (2 threads, its Zen3 machine; ratio > 1: we are faster):")
    for r in records:
        ik = IK_MS.get(r["cache_type"], {}).get(r["depth"])
        if ik and r["threads"] == 2 and r["strategy"] == "kparallel":
            print(f"  {r['cache_type']:6s} depth {r['depth']:6d}: ik {ik:5.2f} ms, ours {r['seconds'] * 1e3:6.2f} ms, "
                  f"ratio {ik / (r['seconds'] * 1e3):5.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per figure (median)")
    ap.add_argument("--json", action="store_true", help="print the records as a JSON list")
    args = ap.parse_args(argv)
    records, limits = run(args)
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
    else:
        print_table(records, limits)


if __name__ == "__main__":
    main()
