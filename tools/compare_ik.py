"""Distance table: ik_llama.cpp vs itself and the numpy reference vs ik_llama.cpp.

    python tools/compare_ik.py model.gguf [more.gguf ...]
    python tools/compare_ik.py --make tiny:f16 --make tiny:iq1_s:k_b_v_b_2d --make tiny-v3-nogroups:f16

``--make CONFIG:MIXTURE[:KV_LAYOUT]`` writes a synthetic file (minillm.synthetic, seed 0,
kv_layout "kv_b" unless given) into a temporary directory first.  For each file, random
token ids (seeded) are evaluated in one batch by ik's attention paths (tests/ik_peer.py) and
by ``minillm.reference.ReferenceModel`` in both modes ("plain" float32 and "emulated" ik
rounding), each forced to the routing of the ik path it is compared with.  Columns:
relative RMS logit error and max |log-prob| difference over ik's top-10 tokens (median and
worst position), top-1 agreement, all over the positions where every ik path routed alike;
then positions (and position x MoE-layer pairs) whose expert choice differs from ik mla0's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import ik_peer  # noqa: E402


def format_rows(rows: list[dict]) -> str:
    head = (f"{'comparison':30s} {'n':>4s}  {'relRMS med':>10s} {'relRMS max':>10s}  "
            f"{'dlogp med':>9s} {'dlogp max':>9s}  {'top1':>5s}  {'flips':>11s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pairs = f"({r['flip_pairs']})" if r["flip_pairs"] >= 0 else ""
        lines.append(f"{r['what']:30s} {r['n']:4d}  {r['rel_rms_median']:10.2e} {r['rel_rms_max']:10.2e}  "
                     f"{r['logprob_median']:9.2e} {r['logprob_max']:9.2e}  {r['top1']:5.3f}  "
                     f"{r['flip_positions']:4d} {pairs:>6s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="GGUF files")
    ap.add_argument("--make", action="append", default=[], metavar="CONFIG:MIXTURE[:KV_LAYOUT]",
                    help="write a synthetic file first (repeatable)")
    ap.add_argument("--tokens", type=int, default=256, help="sequence length (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--threads", type=int, default=None, help="ik threads (default min(2, cores))")
    ap.add_argument("--modes", default="plain,emulated", help="reference modes, comma-separated")
    ap.add_argument("--no-witnesses", action="store_true",
                    help="run only ik's mla0 and mla3+fa paths (no mla0+fa / mla1 witnesses)")
    args = ap.parse_args(argv)
    if not ik_peer.available():
        print("ik-llama-cpp-python is not installed", file=sys.stderr)
        return 2
    files = list(args.files)
    tmp = None
    if args.make:
        from minillm.synthetic import write_model
        tmp = tempfile.TemporaryDirectory(prefix="compare_ik_")
        for spec in args.make:
            parts = spec.split(":")
            if len(parts) not in (2, 3):
                ap.error(f"--make wants CONFIG:MIXTURE[:KV_LAYOUT], got {spec!r}")
            layout = parts[2] if len(parts) == 3 else "kv_b"
            path = os.path.join(tmp.name, f"{parts[0]}-{parts[1]}-{layout}.gguf")
            files.append(write_model(path, config=parts[0], mixture=parts[1], seed=0, kv_layout=layout))
    if not files:
        ap.error("no files")
    modes = tuple(m for m in args.modes.split(",") if m)
    for path in files:
        t = time.perf_counter()
        pc = ik_peer.PeerComparison(path, n_tokens=args.tokens, seed=args.seed, modes=modes,
                                    n_threads=args.threads,
                                    witnesses=() if args.no_witnesses else tuple(ik_peer.IK_WITNESS_PATHS))
        which = "all: ik's paths rarely route alike" if pc.all_positions else "routed alike by every ik path"
        print(f"\n{os.path.basename(path)}: {args.tokens} tokens, {int(pc.positions.sum())} positions compared "
              f"({which}; {time.perf_counter() - t:.0f} s)")
        print(format_rows(pc.rows()))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
