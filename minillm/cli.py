"""The `minillm` command line: info, generate, bench, serve, perplexity, quantize."""
from __future__ import annotations

import argparse
import os
import sys

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
    from .model import BUILTIN_MODEL
    print("no -m given: using the built-in model (minillm-docs, Q8_0, trained on the Python docs; "
          "see models.md)", file=sys.stderr)
    return BUILTIN_MODEL


def cmd_info(args) -> int:
    from minillm_kernels import supported_levels

    from . import load, runtime
    from .kv_cache import CACHE_TYPES

    path = _model_path(args)
    m = load(path, n_ctx=args.ctx_size, cache_type=args.cache_type, prepare=False)
    c = m.config
    print(f"file:          {m.path}")
    print(f"architecture:  {c.arch} ({m.metadata.get('general.name', 'unnamed')}), "
          f"opened in {m.load_seconds * 1e3:.0f} ms")
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
    print(f"kernels:       ISA level {runtime.isa_level()} (supported here: {', '.join(supported_levels())}; "
          f"MINILLM_ISA forces a lower one)")
    print("tensor types:")
    total = m.weight_bytes()
    for name, (count, size) in m.type_mixture().items():
        print(f"  {name:8s} {count:5d} tensors  {_human(size):>10s}  {100 * size / total:5.1f}%")
    print(f"  {'total':8s} {len(m.tensors):5d} tensors  {_human(total):>10s}")
    print(f"memory for a context of {args.ctx_size} tokens (latent KV cache, all layers):")
    for ct in CACHE_TYPES:
        mark = " <-" if ct == args.cache_type else ""
        print(f"  {ct:6s} {_human(m.kv_cache_bytes(args.ctx_size, ct)):>10s}{mark}")
    private, mapped = m.prepared_bytes()
    print(f"prepared weights: {_human(private)} of private memory (repacked copies), "
          f"{_human(mapped)} of mapped file pages")
    print(f"loaded with -c {args.ctx_size} -ctk {args.cache_type}: {_human(private + m.kv_cache_bytes())} "
          f"private (repacked weights + KV cache) + {_human(mapped)} mapped")
    return 0


def cmd_generate(args) -> int:
    from .generate import GenerationStats, generate_text

    path = _model_path(args)
    stats = GenerationStats()
    for piece in generate_text(path, args.prompt, max_tokens=args.n_predict, chat=args.chat,
                               temperature=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                               n_threads=args.threads, n_ctx=args.ctx_size, cache_type=args.cache_type,
                               stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(stats.format(), file=sys.stderr)
    return 0


def cmd_perplexity(args) -> int:
    from . import load
    from .perplexity import main_file_text, perplexity

    if args.kl_divergence and not args.kl_divergence_base:
        raise ValueError("--kl-divergence needs --kl-divergence-base FILE (made by an earlier run without it)")
    text = main_file_text(args.file)
    m = load(_model_path(args), n_ctx=args.ctx_size, cache_type=args.cache_type, n_threads=args.threads,
             n_ubatch=args.ubatch_size)
    save = args.kl_divergence_base if args.kl_divergence_base and not args.kl_divergence else None
    compare = args.kl_divergence_base if args.kl_divergence else None
    r = perplexity(m, text, args.ctx_size, args.chunks, progress=not args.no_progress, save_base=save,
                   kl_base=compare)
    print(f"perplexity: {r.n_chunks} chunks of {r.n_ctx} tokens, {len(r.nll)} tokens scored")
    print(", ".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(r.running_ppl)))
    print(r.report())
    if save:
        print(f"saved the base log-probabilities to {save}", file=sys.stderr)
    return 0


def cmd_quantize(args) -> int:
    from .quantize import quantize_model

    quantize_model(args.input, args.output, args.mixture, args.imatrix, progress=True)
    print(f"wrote {args.output} ({_human(os.path.getsize(args.output))})", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    if args.sweep:
        return cmd_sweep(args)
    from . import bench, ik_native, load

    args.repetitions = args.repetitions or 3
    n_prompt, n_gen, depths = _flat(args.n_prompt, 512), _flat(args.n_gen, 64), _flat(args.n_depth, 0)
    tests = bench.plan_tests(n_prompt, n_gen, depths)  # bad lists fail before the load
    m = load(_model_path(args), n_ctx=bench.context_needed(tests), cache_type=args.cache_type,
             n_threads=args.threads, n_ubatch=args.ubatch_size)
    rows = bench.bench_rows(m, n_prompt, n_gen, depths, args.repetitions, bw_bytes=args.bw_bytes)
    if args.vs_ik:                     # ours first, then ik's with the same tests and settings
        rows = list(rows)
        path, n_threads = m.path, m.n_threads
        del m
        peer = ik_native.bench(args.vs_ik, path, n_prompt, n_gen, depths, args.repetitions, n_threads,
                               _peer_cache_type(args), args.ubatch_size)
        rows = [bench.with_peer(r, peer.get(bench.test_name(r))) for r in rows]
    bench.write_rows(rows, args.output, sys.stdout)
    return 0


def _peer_cache_type(args) -> str:
    """--vs-ik: the peer's cache type (--ik-cache-type, else ours)"""
    return args.ik_cache_type or args.cache_type


def cmd_sweep(args) -> int:
    """``bench --sweep``: llama-sweep-bench's curve, alternately with ik's with --vs-ik."""
    import dataclasses
    import gc

    import numpy as np

    from . import bench, ik_native, load, runtime
    from . import sweep as sw

    path = _model_path(args)
    n_gen = _flat(args.n_gen, 32)[0]
    args.repetitions = args.repetitions or 1
    ours_runs, ik_runs = [], []
    bw_readings = []               # the read bandwidth before and after every run: one reading can be a transient
    state = {"peaks": None, "n_threads": None, "peer_error": None}

    def run_ours(rep: int) -> None:
        m = load(path, n_ctx=args.ctx_size, cache_type=args.cache_type, n_threads=args.threads,
                 n_ubatch=args.ubatch_size)
        state["n_threads"] = m.n_threads
        if state["peaks"] is None:
            state["peaks"] = sw.measure_peaks(m.n_threads, args.bw_bytes, args.cache_type)
            bw_readings.append(state["peaks"].read_bw)
        ours_runs.append([sw.add_rooflines(r, m, state["peaks"])
                          for r in sw.sweep_rows(m, n_gen, args.ctx_size, seed=rep, progress=True)])
        del m                      # free our weights: the peer maps its own copy of the file
        gc.collect()
        bw_readings.append(bench.read_bandwidth(state["n_threads"], args.bw_bytes))

    def run_peer(rep: int) -> None:
        if not args.vs_ik or state["peer_error"] is not None:
            return
        try:
            ik_runs.append(ik_native.sweep(args.vs_ik, path, args.ctx_size, args.ubatch_size, n_gen,
                                           state["n_threads"], _peer_cache_type(args), progress=True))
        except ValueError as e:   # the peer's failure costs its columns, not the run measured before it
            state["peer_error"] = str(e)
            print(f"minillm: warning: {state['peer_error']}\nminillm: the sweep shows minillm's rows only", file=sys.stderr)
        else:
            bw_readings.append(bench.read_bandwidth(state["n_threads"], args.bw_bytes))

    for rep in range(args.repetitions):
        # odd repetitions run the peer first (ours, ik, ik, ours, ...): a machine whose speed drifts
        # over the runs then weighs on both engines' medians alike
        for run in ((run_ours, run_peer) if rep % 2 == 0 else (run_peer, run_ours)):
            run(rep)
    peaks, peer_error = state["peaks"], state["peer_error"]
    peaks = dataclasses.replace(peaks, read_bw=float(np.median(bw_readings)))
    ours = sw.median_rows(ours_runs)
    for r in ours:
        r["tg_roofline"] = sw.tg_roofline(r, peaks)
    ik = sw.median_rows(ik_runs) if ik_runs else None
    info = {"model": path, "cache_type": args.cache_type, "n_threads": ours[0]["n_threads"], "n_ubatch": args.ubatch_size,
            "n_ctx": args.ctx_size, "isa": runtime.isa_level(), "commit": _commit(),
            "openmp": runtime.openmp_wait(), "read_bw_gbs": peaks.read_bw / 1e9,
            "read_bw_readings_gbs": [round(b / 1e9, 2) for b in bw_readings],
            "gemm_peak_gops": peaks.gemm_ops / 1e9, "fma_peak_gflops": peaks.fma_flops / 1e9,
            "attn_peak_gflops": peaks.attn_flops / 1e9, "mha_peak_gflops": peaks.mha_flops / 1e9,
            "decode_attn_peak_gflops": peaks.decode_attn_flops / 1e9,
            "repetitions": args.repetitions, "peer": ik_native.label(args.vs_ik) if args.vs_ik else None,
            "peer_cache_type": _peer_cache_type(args) if args.vs_ik else None,
            "peer_error": peer_error}
    sw.write_sweep(ours, ik, info, args.output, sys.stdout)
    if args.plot:
        sw.plot_sweep(args.plot, ours, ik, title=f"{os.path.basename(path)}, {args.cache_type} cache, "
                                                 f"{info['n_threads']} threads, {info['isa']}")
    return 0


def _commit() -> str:
    from .bench import _build_fields
    return _build_fields()["build_commit"]


def cmd_serve(args) -> int:
    import os

    from . import load
    try:
        from .server import is_loopback, serve
    except ImportError as e:
        raise ValueError(f"serving needs the 'serve' extra ({e.name} is missing): pip install 'minillm[serve]'") from None

    api_key = args.api_key or os.environ.get("MINILLM_API_KEY") or None
    if not is_loopback(args.host) and not api_key and not args.open:   # before the load, not after
        raise ValueError(f"refusing to serve on {args.host} without an API key: pass --api-key KEY "
                         f"(or set MINILLM_API_KEY), or --open if anyone who can reach it may use the model")
    m = load(_model_path(args), n_ctx=args.ctx_size, cache_type=args.cache_type, n_threads=args.threads,
             n_ubatch=args.ubatch_size)
    serve(m, host=args.host, port=args.port, api_key=api_key, open_access=args.open, max_queue=args.max_queue,
          max_body_bytes=args.max_body, log_level=args.log_level)
    return 0


# -- argument types -----------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    """'128,512' -> [128, 512] (llama-bench's comma lists)."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected ints >= 0, got {text!r}")
    return values


def _flat(lists, default: int) -> list[int]:
    """The values of a repeatable list option (nargs + extend give lists of lists)."""
    return [v for values in lists for v in values] if lists else [default]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


_SIZE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """Bytes, with an optional binary K, M or G suffix: '256M'."""
    scale = _SIZE_SUFFIXES.get(text[-1:].upper(), 1)
    return _positive_int(text[:-1] if scale > 1 else text) * scale


def build_parser() -> argparse.ArgumentParser:
    from .bench import OUTPUT_FORMATS
    from .kv_cache import CACHE_TYPES
    from .synthetic import MIXTURES

    p = argparse.ArgumentParser(prog="minillm", description="CPU inference for DeepSeek MLA models in GGUF files")
    sub = p.add_subparsers(dest="command", required=True)

    def model_arg(sp):
        sp.add_argument("-m", "--model", help="GGUF file (default: the built-in model minillm-docs)")
        sp.add_argument("-t", "--threads", type=int, default=0, help="threads (0: all cores)")

    def cache_arg(sp):
        sp.add_argument("-ctk", "--cache-type-k", "--cache-type", dest="cache_type", choices=CACHE_TYPES,
                        default="f16", help="latent KV cache type (default: f16)")

    s = sub.add_parser("info", help="print architecture, hyperparameters, tensor types and memory needs")
    model_arg(s)
    s.add_argument("-c", "--ctx-size", "--ctx", dest="ctx_size", type=_positive_int, default=4096,
                   help="context length for the memory estimate")
    cache_arg(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("generate", help="generate text from a prompt; timings on stderr")
    model_arg(s)
    s.add_argument("-p", "--prompt", default="The capital of France is")
    s.add_argument("-n", "--n-predict", type=int, default=16)
    s.add_argument("-c", "--ctx-size", type=_positive_int, default=None,
                   help="context length (default: 4096, or more to fit the prompt and -n)")
    cache_arg(s)
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    s.add_argument("--temp", type=float, default=0.0, help="temperature (0: greedy)")
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("bench", help="prompt and decode speed, llama-bench style: ppP, tgN, tgN@ppD")
    model_arg(s)
    lists = dict(type=_int_list, nargs="+", action="extend")
    s.add_argument("-p", "--n-prompt", **lists, help="prompt tokens per test: 512, 128,512 or 128 512 "
                   "(0: no prompt test; default 512)")
    s.add_argument("-n", "--n-gen", **lists, help="generated tokens per test (0: no decode test; default 64)")
    s.add_argument("-d", "--n-depth", "--depth", dest="n_depth", **lists,
                   help="context depths the tests run after, filled untimed (default 0)")
    s.add_argument("-r", "--repetitions", "--reps", dest="repetitions", type=_positive_int, default=None,
                   help="timed runs per test, after one untimed warm-up (default 3; --sweep: whole sweeps per "
                        "engine, the median per depth, default 1)")
    cache_arg(s)
    s.add_argument("-ub", "--ubatch-size", type=_positive_int, default=512, help="prompt tokens per batch")
    s.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="md",
                   help="markdown table, JSON array or JSON lines, with llama-bench's field names")
    s.add_argument("--bw-bytes", type=_size, default=1 << 30,
                   help="buffer for the read-bandwidth measurement behind the roofline (default 1G)")
    s.add_argument("--sweep", action="store_true",
                   help="llama-sweep-bench's curve: at each depth 0, ub, 2 ub, ... below -c, time -n decode "
                        "steps (S_TG) and the next ubatch of prompt (S_PP), in one fill of the context")
    s.add_argument("-c", "--ctx-size", type=_positive_int, default=4096, help="--sweep: the context to fill")
    s.add_argument("--vs-ik", metavar="PATH", help="also run a native ik_llama.cpp build (its build/bin folder): "
                   "llama-bench / llama-sweep-bench with -mla 3 -fa 1 and the same settings; ratio columns")
    s.add_argument("--ik-cache-type", choices=CACHE_TYPES, metavar="TYPE",
                   help="--vs-ik: the peer's cache type (default: ours, -ctk), e.g. its fastest one that works "
                        "(its prompt graph aborts on q8_KV)")
    s.add_argument("--plot", metavar="PNG", help="--sweep: draw S_TG and S_PP against depth (needs matplotlib)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    model_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $MINILLM_API_KEY)")
    s.add_argument("--open", action="store_true",
                   help="allow a non-loopback --host without an API key: anyone who can reach it may use it")
    s.add_argument("-c", "--ctx-size", type=_positive_int, default=4096, help="context length (default 4096)")
    cache_arg(s)
    s.add_argument("-ub", "--ubatch-size", type=_positive_int, default=512, help="prompt tokens per batch")
    s.add_argument("--max-queue", type=_positive_int, default=16,
                   help="requests that may wait for the engine; more get 503 (default 16)")
    s.add_argument("--max-body", type=_size, default=4 << 20, help="largest request body (default 4M)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("perplexity", help="llama-perplexity: PPL of a text in chunks of -c tokens; KL-divergence")
    model_arg(s)
    s.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    s.add_argument("-c", "--ctx-size", type=_positive_int, default=512, help="chunk length (default 512)")
    s.add_argument("--chunks", type=int, default=0, help="evaluate at most this many chunks (0: all)")
    cache_arg(s)
    s.add_argument("-ub", "--ubatch-size", type=_positive_int, default=512, help="prompt tokens per batch")
    s.add_argument("--kl-divergence-base", metavar="FILE",
                   help="without --kl-divergence: save this model's log-probabilities to FILE; "
                        "with it: compare against FILE")
    s.add_argument("--kl-divergence", action="store_true",
                   help="report KL-divergence from the --kl-divergence-base run (same text and -c)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_perplexity)

    s = sub.add_parser("quantize", help="llama-quantize: a float (F32/F16/BF16) file to a type mixture")
    s.add_argument("input", help="F32/F16/BF16 DeepSeek2 GGUF")
    s.add_argument("output")
    s.add_argument("mixture", choices=sorted(MIXTURES), help="per-tensor types as ik's llama-quantize picks them")
    s.add_argument("--imatrix", help="importance matrix (llama.cpp's GGUF format); IQ1_S needs one")
    s.set_defaults(func=cmd_quantize)
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
