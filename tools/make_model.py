#!/usr/bin/env python3
"""Write a synthetic DeepSeek2 GGUF file (random weights, real layout and tokenizer).

    python tools/make_model.py --config lite --mixture iq4_nl -o models/lite-iq4_nl.gguf --seed 0
    python tools/make_model.py --config tiny --mixture q8_0 -o /tmp/tiny.gguf --kv-layout kv_b
    python tools/make_model.py --config lite --mixture iq1_s --plan      # list tensors, write nothing
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minillm.synthetic import CONFIGS, KV_LAYOUTS, MIXTURES, plan_tensors, write_model  # noqa: E402


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, qtype = item.partition("=")
        if not sep:
            raise SystemExit(f"--type expects NAME=TYPE, got {item!r}")
        out[name] = qtype
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--mixture", default="f16", choices=sorted(MIXTURES))
    ap.add_argument("-o", "--output", help="output .gguf path (required unless --plan)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-layout", default="k_b_v_b_2d", choices=KV_LAYOUTS)
    ap.add_argument("--merged-gate-up", action="store_true", help="write ffn_gate_up_exps")
    ap.add_argument("--n-layer", type=int, default=None, help="override the layer count")
    ap.add_argument("--type", action="append", default=[], metavar="NAME=TYPE",
                    help="override a tensor's type, e.g. ffn_down_exps=q4_k (repeatable)")
    ap.add_argument("--no-tokenizer", action="store_true",
                    help="leave out the tokenizer (small test files; ik_llama.cpp cannot load them)")
    ap.add_argument("--plan", action="store_true", help="print the tensor types and sizes, write nothing")
    args = ap.parse_args(argv)
    kw = dict(config=args.config, mixture=args.mixture, kv_layout=args.kv_layout,
              merged_gate_up=args.merged_gate_up, n_layer=args.n_layer, type_overrides=_overrides(args.type))

    plan = plan_tensors(**kw)
    count, size = Counter(), Counter()
    for t in plan:
        count[t.type.name] += 1
        size[t.type.name] += t.nbytes
    total = sum(size.values())
    print(f"{args.config} / {args.mixture}: {len(plan)} tensors, {total / 1e9:.3f} GB")
    for name in sorted(size, key=size.get, reverse=True):
        print(f"  {name:7s} {count[name]:5d} tensors {size[name] / 1e9:9.3f} GB")
    if args.plan:
        return 0
    if not args.output:
        ap.error("-o/--output is required unless --plan is given")
    t0 = time.perf_counter()
    path = write_model(args.output, seed=args.seed, progress=True, tokenizer=not args.no_tokenizer, **kw)
    dt = time.perf_counter() - t0
    print(f"wrote {path}: {os.path.getsize(path) / 1e9:.3f} GB in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
