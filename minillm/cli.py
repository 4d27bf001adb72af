"""The `minillm` command line: info, generate, bench."""
from __future__ import annotations

import argparse
import sys
import time

from .errors import GGUFError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _model_path(args) -> str:
    if args.model:
        return args.model
    from .synthetic import default_model_path
    print("no -m given: using the built-in tiny synthetic DeepSeek2 model", file=sys.stderr)
    return default_model_path()


def cmd_info(args) -> int:
    from . import load
    from .kv_cache import CACHE_TYPES

    path = _model_path(args)
    t0 = time.perf_counter()
    m = load(path, n_ctx=args.ctx, cache_type=args.cache_type)
    dt = time.perf_counter() - t0
    c = m.config
    print(f"file:          {m.path}")
    print(f"architecture:  {c.arch} ({m.metadata.get('general.name', 'unnamed')}), loaded in {dt * 1e3:.0f} ms")
    attn = f"q_lora_rank {c.q_lora_rank}" if c.q_lora_rank else "plain attn_q"
    print(f"layers:        {c.n_layer} ({c.n_layer_dense_lead} dense, {c.n_layer - c.n_layer_dense_lead} MoE)")
    print(f"embedding:     {c.n_embd}, vocab {c.n_vocab}, trained context {c.n_ctx_train}")
    print(f"attention:     MLA, {c.n_head} heads, kv_lora_rank {c.kv_lora_rank}, qk {c.qk_nope_head_dim}+"
          f"{c.qk_rope_head_dim} (nope+rope), v {c.v_head_dim}, {attn}")
    gating = {1: "softmax", 2: "sigmoid"}[c.expert_gating_func]
    groups = f", groups {c.expert_group_used_count}/{c.expert_group_count}" if c.expert_group_count else ""
    print(f"experts:       {c.n_expert} routed ({c.n_expert_used} used) + {c.n_expert_shared} shared, "
          f"ff {c.n_ff_exp}, {gating} gating, scale {c.expert_weights_scale:g}, "
          f"norm {c.expert_weights_norm}{groups}; dense ff {c.n_ff}")
    rope = f"{c.rope_scaling_type} x{c.rope_scaling_factor:g} (orig ctx {c.rope_orig_ctx}, " \
           f"log mul {c.rope_yarn_log_mul:g})" if c.rope_scaling_type != "none" else "none"
    print(f"rope:          base {c.rope_freq_base:g}, scaling {rope}; kq_scale {c.kq_scale:.6f}")
    print(f"rms eps:       {c.rms_eps:g}")
    print("tensor types:")
    total = m.weight_bytes()
    for name, (count, size) in m.type_mixture().items():
        print(f"  {name:8s} {count:5d} tensors  {_human(size):>10s}  {100 * size / total:5.1f}%")
    print(f"  {'total':8s} {len(m.tensors):5d} tensors  {_human(total):>10s}")
    print(f"memory for a context of {args.ctx} tokens (latent KV cache, all layers):")
    for ct in CACHE_TYPES:
        mark = " <-" if ct == args.cache_type else ""
        print(f"  {ct:6s} {_human(m.kv_cache_bytes(args.ctx, ct)):>10s}{mark}")
    print(f"weights are memory-mapped: {_human(total)} of file pages, read on demand")
    return 0


def cmd_generate(args) -> int:
    from .generate import generate_text

    path = _model_path(args)
    for piece in generate_text(path, args.prompt, max_tokens=args.n_predict, chat=args.chat,
                               temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                               seed=args.seed, n_threads=args.threads):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_bench(args) -> int:
    from .generate import bench_decode

    path = _model_path(args)
    print(f"| model | engine | test | t/s |")
    print(f"|---|---|---|---:|")
    for depth in args.depth:
        r = bench_decode(path, n_gen=args.n_gen, depth=depth, n_threads=args.threads, reps=args.reps)
        print(f"| {r['model']} | {r['engine']} | tg{args.n_gen}@pp{depth} | {r['tps']:.2f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minillm", description="CPU inference for DeepSeek MLA models in GGUF files")
    sub = p.add_subparsers(dest="command", required=True)

    def model_arg(sp):
        sp.add_argument("-m", "--model", help="GGUF file (default: the built-in tiny synthetic model)")
        sp.add_argument("-t", "--threads", type=int, default=0, help="threads (0: all cores)")

    s = sub.add_parser("info", help="print architecture, hyperparameters, tensor types and memory needs")
    model_arg(s)
    s.add_argument("-c", "--ctx", type=int, default=4096, help="context length for the memory estimate")
    s.add_argument("--cache-type", default="f16", help="latent KV cache type (f16, bf16, q8_0, q8_KV)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("generate", help="generate text from a prompt")
    model_arg(s)
    s.add_argument("-p", "--prompt", default="The capital of France is")
    s.add_argument("-n", "--n-predict", type=int, default=16)
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    s.add_argument("--temp", type=float, default=0.0, help="temperature (0: greedy)")
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("bench", help="decode speed tgN@ppD (llama-bench style)")
    model_arg(s)
    s.add_argument("-n", "--n-gen", type=int, default=8, help="tokens to generate per test")
    s.add_argument("-d", "--depth", type=int, nargs="+", default=[0, 32], help="context depths")
    s.add_argument("-r", "--reps", type=int, default=1)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GGUFError as e:
        print(f"minillm: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"minillm: error: {e}", file=sys.stderr)
        return 2
