"""`minillm bench --sweep`: prompt and decode speed against context depth in one pass, as
ik_llama.cpp's ``llama-sweep-bench`` measures it, with rooflines.

One context is filled in ``n_ubatch`` steps.  At each depth N_KV = 0, ub, 2 ub, ... the sweep
times ``n_gen`` single-token decode steps at that depth (S_TG; their rows are dropped again),
then the next ``n_ubatch`` prompt tokens (S_PP), which stay and deepen the context: a 16k curve
costs one prefill.  Tokens are random, as in llama-sweep-bench.

Rooflines per row:
- TG: the bytes of the weights a decode step touches (n_expert_used of the routed experts) over
  the read bandwidth measured in the same run (``bench --sweep``: the median of readings before and
  after each engine's run), plus for the cache the longer of reading its rows
  and the attention's FLOPs over the decode attention kernel's peak (deep contexts make decode
  attention compute-bound: 16 heads x 1088 multiply-adds per cached row; on int16 rows, the 8-bit
  caches and on AVX-512 every cache, that peak lies past the fp32 FMA peak);
- PP: the work of the ubatch over the measured compute peaks: the matmul operations over the
  GEMM peak of the kernels (cache-resident weights, so bandwidth does not enter) and the
  attention FLOPs over the prompt attention's peak (the kernels on a cache-resident cache: on
  the "amx" level they run on AMX tiles, past the fp32 FMA peak); long prompts attend on
  decompressed rows: their kv_b GEMM over the GEMM peak, the heads over that kernel's own peak
  (int16 products on AVX2 and up, twice the products per instruction of fp32 FMAs).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from .deepseek2 import mha_min_tokens
from .model import Model
from .weights import LayerWeights

# ik's llama-sweep-bench --output-format jsonl keys, in its order
JSONL_KEYS = ("n_kv_max", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads", "n_threads_batch",
              "pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg")


# -- what a step costs ---------------------------------------------------------------------

def matmul_params_per_token(model: Model) -> int:
    """Weight elements one token multiplies (each a multiply-add): every layer matrix, the
    routed experts' n_expert_used of n_expert, attn_kv_b only where attn_k_b / attn_v_b are
    absent (the absorbed path uses those).  The output matrix is left out (a prompt computes
    the logits of its last token only) and so is the embedding (a lookup)."""
    c, w = model.config, model.weights
    total = 0
    for lw in w.layers:
        absorbed = lw.attn_k_b is not None and lw.attn_v_b is not None
        for f in dataclasses.fields(LayerWeights):
            t = getattr(lw, f.name)
            if t is None or len(t.ne) < 2 or (f.name == "attn_kv_b" and absorbed):
                continue
            n = int(np.prod(t.ne))
            total += n // c.n_expert * c.n_expert_used if f.name.endswith("_exps") else n
    return total


def attention_flops(model: Model, n_kv: int, n_tokens: int) -> float:
    """FLOPs of MLA attention for ``n_tokens`` new tokens after ``n_kv`` cached ones (causal):
    per head and key, the score over kv_lora_rank + rope dims and the value over kv_lora_rank,
    a multiply-add each."""
    c = model.config
    keys = n_tokens * n_kv + n_tokens * (n_tokens + 1) / 2
    return 2.0 * c.n_layer * c.n_head * (2 * c.kv_lora_rank + c.qk_rope_head_dim) * keys


def decompressed_attention_flops(model: Model, n_kv: int, n_tokens: int) -> tuple[float, float]:
    """(GEMM, attention) FLOPs of the same attention on decompressed rows (long prompts,
    deepseek2.mha_min_tokens): every row of the cache and the new tokens through attn_kv_b, then
    per head and key the score over nope + rope dims and the value over v_head_dim."""
    c = model.config
    keys = n_tokens * n_kv + n_tokens * (n_tokens + 1) / 2
    kv_b = 2.0 * c.n_layer * (n_kv + n_tokens) * c.kv_lora_rank * c.n_head * (c.qk_nope_head_dim + c.v_head_dim)
    heads = 2.0 * c.n_layer * c.n_head * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * keys
    return kv_b, heads


@dataclasses.dataclass
class Peaks:
    """What the machine can do, measured in this run."""
    read_bw: float          # bytes/s, streaming read
    gemm_ops: float         # GEMM operations/s of the kernels, cache-resident weights
    fma_flops: float        # fp32 FMA FLOPs/s
    attn_flops: float       # FLOPs/s of the kernels' prompt attention, cache-resident cache
    mha_flops: float        # FLOPs/s of the decompressed prompt attention's heads, rows in L2
    decode_attn_flops: float  # FLOPs/s of a decode step's attention, cache-resident cache


def _best_rate(work: float, call, reps: int = 5) -> float:
    """work / seconds of the fastest of ``reps`` calls"""
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        best = max(best, work / (time.perf_counter() - t0))
    return best


def _random_cache(cache_type: str, n_rows: int, width: int = 576):
    """A latent cache of n_rows random rows, and the generator to draw the queries from."""
    from minillm_kernels import attention

    rng = np.random.default_rng(0)
    cache = np.zeros((n_rows, attention.row_bytes(cache_type, width)), np.uint8)
    attention.kv_cache_store(cache, cache_type, 0, rng.standard_normal((n_rows, width)).astype(np.float32))
    return cache, rng


def prefill_attention_peak(n_threads: int, cache_type: str = "f16") -> float:
    """FLOPs/s of mla_prefill at its best: 64 tokens after 1024 cached rows (a cache in L2), the
    DeepSeek2 shapes (16 heads, rows of 576, values of 512)."""
    from minillm_kernels import attention

    width, dv, heads, n_tok, pos0 = 576, 512, 16, 64, 1024
    cache, rng = _random_cache(cache_type, pos0 + n_tok, width)
    q = rng.standard_normal((n_tok, heads, width)).astype(np.float32)
    out = np.zeros((n_tok, heads, dv), np.float32)
    flops = 2.0 * heads * (2 * dv + width - dv) * (n_tok * pos0 + n_tok * (n_tok + 1) / 2)
    return _best_rate(flops, lambda: attention.mla_prefill(q, cache, cache_type, pos0, 0.07, out, n_threads))


def decode_attention_peak(n_threads: int, cache_type: str = "f16") -> float:
    """FLOPs/s of mla_decode (kparallel) at its best: one token over 2048 cached rows (a cache in L3),
    the DeepSeek2 shapes.  Its limit on the kernels' own arithmetic: fp32 FMAs on float rows, int16
    products (twice the FMAs' rate) where attention.tile_int16(cache_type)."""
    from minillm_kernels import attention

    width, dv, heads, n_kv = 576, 512, 16, 2048
    cache, rng = _random_cache(cache_type, n_kv, width)
    q = rng.standard_normal((heads, width)).astype(np.float32)
    out = np.zeros((heads, dv), np.float32)
    flops = 2.0 * heads * (2 * dv + width - dv) * n_kv
    return _best_rate(flops, lambda: attention.mla_decode(q, cache, cache_type, n_kv, 0.07, out, "kparallel", n_threads),
                      reps=20)


def decompressed_attention_peak(n_threads: int) -> float:
    """FLOPs/s of mha_prefill at its best: 128 tokens after 1024 rows of 2 heads (the rows in L2),
    DeepSeek2's decompressed shapes (keys 128 + 64, values 128); int16 products on AVX2 and up."""
    from minillm_kernels import attention

    heads, n_tok, pos0, dn, dr, dv = 2, 128, 1024, 128, 64, 128
    rng = np.random.default_rng(0)
    q = rng.standard_normal((n_tok, heads, dn + dr)).astype(np.float32)
    kvb = rng.standard_normal((pos0 + n_tok, heads, dn + dv)).astype(np.float32)
    kr = rng.standard_normal((pos0 + n_tok, dr)).astype(np.float32)
    out = np.zeros((n_tok, heads, dv), np.float32)
    flops = 2.0 * heads * (dn + dr + dv) * (n_tok * pos0 + n_tok * (n_tok + 1) / 2)
    return _best_rate(flops, lambda: attention.mha_prefill(q, kvb, kr, pos0, 0.07, out, n_threads))


def measure_peaks(n_threads: int, bw_bytes: int = 1 << 30, cache_type: str = "f16") -> Peaks:
    from minillm_kernels import attention, matmul
    from minillm_kernels.random_blocks import random_weights

    from .bench import read_bandwidth

    x = np.random.default_rng(0).normal(size=(512, 2048)).astype(np.float32)
    best = 0.0
    for wtype in (8, 20):                     # Q8_0, IQ4_NL: the types prefill spends its time in
        # 2048 rows: with 256 (16 row tiles) the per-tile packing and the threads' start showed
        # 263 GOPS where the MoE prefill ran at 370-480 (Zen 4, 2 threads)
        raw, t = random_weights(wtype, (2048, 2048), seed=0), wtype
        if t in matmul.REPACKED:
            raw, t = matmul.repack(raw, t, n_threads)
        matmul.matmul(raw, t, x, n_threads=n_threads)
        best = max(best, _best_rate(2 * 2048 * 2048 * 512, lambda: matmul.matmul(raw, t, x, n_threads=n_threads)))
    sec, flops = min((attention.bench_fma(20_000_000, n_threads) for _ in range(3)), key=lambda r: r[0])
    return Peaks(read_bandwidth(n_threads, bw_bytes), best, flops / sec, prefill_attention_peak(n_threads, cache_type),
                 decompressed_attention_peak(n_threads), decode_attention_peak(n_threads, cache_type))


def prompt_attention_seconds(model: Model, n_kv: int, n_tokens: int, peaks: Peaks) -> float:
    """The prompt attention at its limit, on the path the engine takes: absorbed, its FLOPs over the
    measured prompt-attention peak; decompressed (long prompts, not on AMX), the kv_b GEMM over the
    GEMM peak and the heads' FLOPs over the decompressed attention's peak."""
    from minillm_kernels import attention

    if n_tokens < mha_min_tokens(model.cache_type) or attention.amx_on():
        return attention_flops(model, n_kv, n_tokens) / peaks.attn_flops
    kv_b, heads = decompressed_attention_flops(model, n_kv, n_tokens)
    return kv_b / peaks.gemm_ops + heads / peaks.mha_flops


def add_rooflines(row: dict, model: Model, peaks: Peaks) -> dict:
    """The roofline columns of a sweep row (``tg_roofline``, ``pp_roofline``: t/s at the limit),
    and the decode step's work they come from (``tg_weight_bytes``, ``tg_bytes_per_token``,
    ``tg_attn_flops``: :func:`tg_roofline` recomputes the TG roof from them for other peaks)."""
    from .bench import decode_bytes_per_token

    n_kv, pp, tg = row["n_kv"], row["pp"], row["tg"]
    depth = n_kv + tg // 2                  # the middle decode step stands for the tg steps
    row["tg_weight_bytes"] = decode_bytes_per_token(model, 0)
    row["tg_bytes_per_token"] = decode_bytes_per_token(model, depth)
    row["tg_attn_flops"] = attention_flops(model, depth, 1)
    row["tg_roofline"] = tg_roofline(row, peaks)
    row["pp_roofline"] = pp / (2.0 * matmul_params_per_token(model) * pp / peaks.gemm_ops +
                               prompt_attention_seconds(model, n_kv, pp, peaks))
    return row


def tg_roofline(row: dict, peaks: Peaks) -> float:
    """t/s of a decode step at its limit: the weights at the read bandwidth, then the cache rows
    read while the attention computes on them (whichever takes longer)."""
    weights = row["tg_weight_bytes"]
    cache_s = max((row["tg_bytes_per_token"] - weights) / peaks.read_bw, row["tg_attn_flops"] / peaks.decode_attn_flops)
    return 1.0 / (weights / peaks.read_bw + cache_s)


# -- the sweep --------------------------------------------------------------------------------

def sweep_rows(model: Model, n_gen: int = 32, n_kv_max: Optional[int] = None, seed: int = 0,
               progress: bool = False) -> Iterator[dict]:
    """Yield one row per depth (ik's jsonl keys), as llama-sweep-bench: at N_KV = 0, ub, 2 ub,
    ... below ``n_kv_max`` (default the model's n_ctx): ``n_gen`` decode steps timed, then
    dropped; the next ``n_ubatch`` prompt tokens timed, kept."""
    ub = model.n_ubatch
    n_kv_max = n_kv_max or model.n_ctx
    if n_kv_max > model.n_ctx:
        raise ValueError(f"the sweep needs a context of {n_kv_max} tokens; the model was loaded with "
                         f"n_ctx={model.n_ctx}")
    if not isinstance(n_gen, (int, np.integer)) or n_gen < 1 or n_gen > ub:
        raise ValueError(f"n_gen must be an int in [1, n_ubatch={ub}], not {n_gen!r}")
    if n_kv_max < ub:
        raise ValueError(f"the context ({n_kv_max}) must hold at least one ubatch ({ub})")
    rng = np.random.default_rng(seed)
    vocab = model.config.n_vocab
    depths = range(0, n_kv_max - ub + 1, ub)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(depths), desc="minillm sweep", unit="depth", leave=False)
    model.reset()
    model.eval(rng.integers(0, vocab, size=ub), logits_all=False)      # warm-up, as llama-sweep-bench
    model.reset()
    try:
        for n_kv in depths:
            t0 = time.perf_counter()
            for tid in rng.integers(0, vocab, size=n_gen):
                model.eval([int(tid)], logits_all=False)
            t_tg = time.perf_counter() - t0
            model.truncate(n_kv)
            t0 = time.perf_counter()
            model.eval(rng.integers(0, vocab, size=ub), logits_all=False)
            t_pp = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            yield {"n_kv_max": n_kv_max, "n_batch": ub, "n_ubatch": ub, "flash_attn": 1, "n_gpu_layers": 0,
                   "n_threads": model.n_threads, "n_threads_batch": model.n_threads, "pp": ub, "tg": n_gen,
                   "n_kv": n_kv, "t_pp": t_pp, "speed_pp": ub / t_pp, "t_tg": t_tg, "speed_tg": n_gen / t_tg}
    finally:
        if bar is not None:
            bar.close()


def median_rows(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """Per depth, the run with the median t_pp and t_tg (each picked on its own)."""
    out = []
    for rows in zip(*runs):
        row = dict(rows[0])
        for kind in ("pp", "tg"):
            t = float(np.median([r[f"t_{kind}"] for r in rows]))
            row[f"t_{kind}"], row[f"speed_{kind}"] = t, row[kind] / t
        out.append(row)
    return out


# -- output -------------------------------------------------------------------------------------

def sweep_table(ours: Sequence[dict], ik: Optional[Sequence[dict]] = None) -> str:
    """ik's markdown sweep table, plus the rooflines, and with ik's rows the ratios."""
    head = ["PP", "TG", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "PP roof t/s", "TG roof t/s"]
    if ik:
        head += ["ik S_PP", "ik S_TG", "PP ratio", "TG ratio"]
    ik_by_kv = {r["n_kv"]: r for r in ik or ()}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (len(h) + 1) + ":" for h in head) + "|"]
    for r in ours:
        cells = [str(r["pp"]), str(r["tg"]), str(r["n_kv"]), f"{r['t_pp']:.3f}", f"{r['speed_pp']:.2f}",
                 f"{r['t_tg']:.3f}", f"{r['speed_tg']:.2f}"]
        for kind in ("pp", "tg"):
            roof = r.get(f"{kind}_roofline")
            cells.append(f"{roof:.1f} ({100 * r[f'speed_{kind}'] / roof:.0f}%)" if roof else "")
        if ik:
            p = ik_by_kv.get(r["n_kv"])
            cells += ([f"{p['speed_pp']:.2f}", f"{p['speed_tg']:.2f}", f"{r['speed_pp'] / p['speed_pp']:.2f}",
                       f"{r['speed_tg'] / p['speed_tg']:.2f}"] if p else ["", "", "", ""])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep(ours: Sequence[dict], ik: Optional[Sequence[dict]], info: dict, fmt: str, out) -> None:
    """The sweep in ``fmt``: ``md`` (a header, ik's table with rooflines and ratios), ``json``
    (one object: info, minillm and ik rows), ``jsonl`` (one row per line with ik's keys, plus
    ``engine``), ``csv`` (the same rows)."""
    import json

    from .bench import write_csv

    rows = [{"engine": "minillm", **r} for r in ours] + [{"engine": "ik_llama.cpp", **r} for r in ik or ()]
    if fmt == "md":
        out.write(f"minillm sweep: {info['model']}\n"
                  f"cache {info['cache_type']}, {info['n_threads']} threads, ubatch {info['n_ubatch']}, "
                  f"context {info['n_ctx']}, ISA {info['isa']}, commit {info['commit']}, {info['openmp']}, "
                  f"median of {info['repetitions']} run(s) per engine\n"
                  f"read bandwidth {info['read_bw_gbs']:.1f} GB/s{_readings(info)}, GEMM peak {info['gemm_peak_gops']:.0f} GOPS, "
                  f"fp32 FMA peak {info['fma_peak_gflops']:.0f} GFLOP/s, decode attention peak "
                  f"{info['decode_attn_peak_gflops']:.0f} GFLOP/s, prompt attention peak "
                  f"{info['attn_peak_gflops']:.0f} GFLOP/s, decompressed {info['mha_peak_gflops']:.0f} GFLOP/s"
                  f"{_peer_line(info, ik)}\n\n")
        out.write(sweep_table(ours, ik) + "\n")
        out.write("\nTG roof: weight bytes / read bandwidth + max(cache bytes / read bandwidth, attention FLOPs / "
                  "decode attention peak); PP roof: matmul ops / GEMM peak + attention FLOPs / prompt attention peak (prompts of "
                  f"{mha_min_tokens(info['cache_type'])}+ tokens, decompressed: kv_b GEMM / GEMM peak + head FLOPs / decompressed "
                  "peak)\n")
    elif fmt == "json":
        out.write(json.dumps({"info": info, "minillm": list(ours), "ik_llama.cpp": list(ik or [])}, indent=2) + "\n")
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps(r) + "\n")
    elif fmt == "csv":
        write_csv(rows, out)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    out.flush()


def _peer_line(info: dict, ik) -> str:
    """the md header's lines on the peer: how it ran, and why its columns are missing if it failed"""
    out = ""
    if ik:
        own = info.get("peer_cache_type") not in (None, info["cache_type"])
        same = f"threads and ubatch, its cache {info['peer_cache_type']}" if own else "threads, cache type and ubatch"
        out += (f"\npeer: ik_llama.cpp native ({info['peer'] or 'version unknown'}), -mla 3 -fa 1, same file, {same}, "
                "run alternately")
    if info.get("peer_error"):
        out += f"\npeer failed, no ik columns: {info['peer_error']}"
    return out


def _readings(info: dict) -> str:
    r = info.get("read_bw_readings_gbs") or []
    return f" (median of {len(r)} readings: {', '.join(f'{b:.1f}' for b in r)})" if len(r) > 1 else ""


def plot_sweep(path: str, ours: Sequence[dict], ik: Optional[Sequence[dict]] = None, title: str = "") -> None:
    """S_TG and S_PP against depth for both engines, the rooflines dashed (matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'minillm[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind, label in ((axes[0], "tg", "decode S_TG"), (axes[1], "pp", "prompt S_PP")):
        kv = [r["n_kv"] for r in ours]
        ax.plot(kv, [r[f"speed_{kind}"] for r in ours], "o-", label="minillm")
        if ik:
            ax.plot([r["n_kv"] for r in ik], [r[f"speed_{kind}"] for r in ik], "s-", label="ik_llama.cpp")
        if all(r.get(f"{kind}_roofline") for r in ours):
            ax.plot(kv, [r[f"{kind}_roofline"] for r in ours], "k--", lw=1, label="roofline")
        ax.set_xlabel("context depth N_KV (tokens)")
        ax.set_ylabel("tokens/s")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
