#!/usr/bin/env python3
"""Where a decode step's time goes (or a prompt step's, with --prompt): inside kernel calls vs
outside them (Python, numpy glue).

Every kernel entry point the engine calls (minillm_kernels.matmul / attention / ops) is wrapped
with a timer; a decode step's time minus the time inside those calls is the glue.

    python tools/profile_step.py -m models/lite-iq4_nl.gguf --depth 0 --steps 32 -t 2
    python tools/profile_step.py -m models/lite-iq4_nl.gguf --depth 4096 --prompt 512 --steps 1 -t 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402  (first: sets the OpenMP environment)
from minillm_kernels import attention, matmul, ops  # noqa: E402

KERNELS = {matmul: ("matmul", "matmul_batched", "moe_forward", "dequantize_rows"),
           attention: ("mla_decode", "mla_prefill", "mha_prefill", "kv_cache_store"),
           ops: ("rms_norm", "rope", "route")}


def instrument() -> dict:
    """Wrap the kernel entry points; returns {name: [calls, seconds]} they accumulate into."""
    spent = defaultdict(lambda: [0, 0.0])
    for module, names in KERNELS.items():
        for name in names:
            def timed(*args, _f=getattr(module, name), _rec=spent[name], **kw):
                t0 = time.perf_counter()
                try:
                    return _f(*args, **kw)
                finally:
                    _rec[0] += 1
                    _rec[1] += time.perf_counter() - t0
            setattr(module, name, timed)
    return spent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("-d", "--depth", type=int, default=0, help="cached tokens before the measured steps")
    ap.add_argument("-n", "--steps", type=int, default=32)
    ap.add_argument("-p", "--prompt", type=int, default=1, help="tokens per step (1: decode; 512: a ubatch)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="rounds of --steps steps (median shown)")
    ap.add_argument("-ctk", "--cache-type", default="f16")
    args = ap.parse_args(argv)
    total_steps = args.steps * (args.reps + 1)
    m = minillm.load(args.model, n_ctx=args.depth + args.prompt * total_steps + 1, cache_type=args.cache_type,
                     n_threads=args.threads or None, n_ubatch=max(512, args.prompt))
    spent = instrument()
    rng = np.random.default_rng(0)
    if args.depth:
        m.eval(rng.integers(0, m.config.n_vocab, args.depth), logits_all=False)
    ids = rng.integers(0, m.config.n_vocab, (total_steps, args.prompt))
    rounds = []
    for r in range(args.reps + 1):                         # round 0 warms up
        for rec in spent.values():
            rec[:] = [0, 0.0]
        steps = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            m.eval(ids[r * args.steps + i], logits_all=False)
            steps.append(time.perf_counter() - t0)
        if r:
            rounds.append((sum(steps), sum(s for _, s in spent.values()),
                           {k: tuple(v) for k, v in spent.items()}, float(np.median(steps))))
    rounds.sort(key=lambda x: (x[0] - x[1]) / x[0])
    total, inside, calls, median = rounds[len(rounds) // 2]
    n = args.steps
    print(f"{os.path.basename(args.model)}: {m.n_threads} threads, depth {args.depth}, {m.cache_type} cache, "
          f"{args.prompt} token(s) a step; step median {median * 1e3:.1f} ms")
    print(f"outside kernel calls: {100 * (total - inside) / total:.1f}% ({(total - inside) / n * 1e3:.2f} ms a step; "
          f"rounds: {', '.join(f'{100 * (t - k) / t:.1f}%' for t, k, _, _ in rounds)})")
    print(f"{'kernel':16s} {'calls/step':>10s} {'ms/step':>8s} {'share':>6s}")
    for name, (c, s) in sorted(calls.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:16s} {c / n:10.0f} {s / n * 1e3:8.2f} {100 * s / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
