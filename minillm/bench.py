"""What `minillm bench` measures, llama-bench style: prompt speed (ppN: N tokens in one eval)
and decode speed (tgN: N single-token evals), each after a context of depth tokens filled
untimed (labelled ``tgN@ppD`` as ik_llama.cpp's ``-gp D,N``), with a decode roofline: the
bytes a decode step must read over the read bandwidth measured in the same run.

The depth is one random context, filled by batched prefill once and kept: each repetition
and each deeper test starts from the cached prefix (llama-bench fills it again for every
repetition; the timed part is the same, and an 8192-token fill takes minutes here).

    rows = run_bench(model, n_prompt=[512], n_gen=[64], depths=[0, 4096], reps=3)
    print(format_rows(rows, "md"))

Rows carry llama-bench's JSON field names, so scripts written for it read them too.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator, Optional, Sequence, TextIO

import numpy as np

from .kv_cache import cache_row_bytes
from .model import Model
from .weights import LayerWeights

BACKEND = "CPU (minillm)"
OUTPUT_FORMATS = ("md", "json", "jsonl", "csv")


# -- the plan -------------------------------------------------------------------

def plan_tests(n_prompt: Sequence[int], n_gen: Sequence[int], depths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(n_prompt, n_gen, n_depth) of each test, in llama-bench's order: per depth, the prompt
    tests, then the decode tests; a 0 in n_prompt or n_gen disables that kind."""
    for name, values in (("n_prompt", n_prompt), ("n_gen", n_gen), ("depths", depths)):
        if not values or any(not isinstance(v, (int, np.integer)) or v < 0 for v in values):
            raise ValueError(f"{name} must be a non-empty list of ints >= 0, not {list(values)!r}")
    tests = [t for d in depths for t in [(p, 0, d) for p in n_prompt if p] + [(0, n, d) for n in n_gen if n]]
    if not tests:
        raise ValueError("nothing to measure: every prompt and generation length is 0")
    return tests


def context_needed(tests: Iterable[tuple[int, int, int]]) -> int:
    """The n_ctx a model needs to run ``tests``."""
    return max(d + p + n for p, n, d in tests)


def test_name(row: dict) -> str:
    """``pp512``, ``tg64``; after a context of D tokens ``pp512@ppD``, ``tg64@ppD``."""
    name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
    return f"{name}@pp{row['n_depth']}" if row["n_depth"] else name


# -- the roofline -----------------------------------------------------------------

def read_bandwidth(n_threads: int, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the median of ``reps`` reads of an ``nbytes`` buffer
    on ``n_threads`` threads, after one untimed read."""
    from minillm_kernels.attention import bench_read

    buf = np.ones(int(nbytes), np.uint8)  # written, so its pages exist before the reads
    bench_read(buf, n_threads)
    return float(np.median([buf.size / bench_read(buf, n_threads) for _ in range(reps)]))


def decode_weight_bytes(model: Model) -> int:
    """File bytes of the weights one decode token reads: every layer tensor, of the routed
    experts the n_expert_used of n_expert a token picks, attn_kv_b only in layers without
    attn_k_b and attn_v_b (which replace it); the output norm and matrix; one embedding row."""
    c, w = model.config, model.weights
    total = w.output_norm.nbytes + w.output.nbytes + w.token_embd.nbytes // c.n_vocab
    for lw in w.layers:
        absorbed = lw.attn_k_b is not None and lw.attn_v_b is not None
        for f in dataclasses.fields(LayerWeights):
            t = getattr(lw, f.name)
            if t is None or (f.name == "attn_kv_b" and absorbed):
                continue
            total += t.nbytes // c.n_expert * c.n_expert_used if f.name.endswith("_exps") else t.nbytes
    return total


def decode_bytes_per_token(model: Model, depth: int) -> int:
    """Bytes a decode step after ``depth`` cached tokens reads: the weights and the latent
    cache rows of every layer."""
    c = model.config
    return decode_weight_bytes(model) + c.n_layer * depth * cache_row_bytes(model.cache_type, c.kv_latent_dim)


# -- the measurement ----------------------------------------------------------------

def _eval_random(model: Model, rng: np.random.Generator, n: int, one_by_one: bool) -> float:
    """Seconds to evaluate ``n`` random tokens, in one eval or one eval per token."""
    ids = rng.integers(0, model.config.n_vocab, size=n)
    t0 = time.perf_counter()
    if one_by_one:
        for i in range(n):
            model.eval(ids[i:i + 1], logits_all=False)
    else:
        model.eval(ids, logits_all=False)
    return time.perf_counter() - t0


def _fill(model: Model, context: np.ndarray, depth: int) -> None:
    """Make the cache hold the first ``depth`` tokens of ``context``, evaluating (untimed) only
    those not cached yet: one fill serves every repetition and every deeper test."""
    keep = min(model.common_prefix(context[:depth]), depth)
    model.truncate(keep)
    if keep < depth:
        model.eval(context[keep:depth], logits_all=False)


def _measure(model: Model, n_prompt: int, n_gen: int, depth: int, context: np.ndarray,
             rng: np.random.Generator) -> float:
    """One run of a test: the depth filled untimed, then the timed part."""
    _fill(model, context, depth)
    if n_prompt:
        return _eval_random(model, rng, n_prompt, one_by_one=False)
    return _eval_random(model, rng, n_gen, one_by_one=True)


def bench_rows(model: Model, n_prompt: Sequence[int] = (512,), n_gen: Sequence[int] = (64,),
               depths: Sequence[int] = (0,), reps: int = 3, read_bw: Optional[float] = None,
               bw_bytes: int = 1 << 30, seed: int = 0) -> Iterator[dict]:
    """Yield one row per test as it completes (see :func:`run_bench`)."""
    tests = plan_tests(list(n_prompt), list(n_gen), list(depths))
    if not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, not {reps!r}")
    if context_needed(tests) > model.n_ctx:
        raise ValueError(f"the tests need a context of {context_needed(tests)} tokens; the model was "
                         f"loaded with n_ctx={model.n_ctx}")
    read_bw = read_bw or read_bandwidth(model.n_threads, bw_bytes)
    common = {**_build_fields(), **_model_fields(model)}
    rng = np.random.default_rng(seed)
    context = rng.integers(0, model.config.n_vocab, size=max(d for _, _, d in tests))
    model.reset()
    for p, n, d in tests:
        test_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _measure(model, p, min(n, 1), d, context, rng)  # warm-up, as llama-bench: the prompt, or one token
        samples = [_measure(model, p, n, d, context, rng) for _ in range(reps)]
        yield _row(model, common, (p, n, d), samples, test_time, read_bw)


def run_bench(model: Model, n_prompt: Sequence[int] = (512,), n_gen: Sequence[int] = (64,),
              depths: Sequence[int] = (0,), reps: int = 3, read_bw: Optional[float] = None,
              bw_bytes: int = 1 << 30, seed: int = 0) -> list[dict]:
    """Measure every test of :func:`plan_tests` ``reps`` times (after one untimed warm-up) and
    return llama-bench's JSON rows plus ``roofline_ts``, ``bytes_per_token`` (decode tests)
    and ``read_bw_gbs``.  ``read_bw`` (bytes/s) is measured with a ``bw_bytes`` buffer unless
    given.  The model's n_ctx must hold the deepest test."""
    return list(bench_rows(model, n_prompt, n_gen, depths, reps, read_bw, bw_bytes, seed))


def _row(model: Model, common: dict, test: tuple, samples: list[float], test_time: str, read_bw: float) -> dict:
    p, n, d = test
    samples_ns = [int(s * 1e9) for s in samples]
    samples_ts = [(p or n) / s for s in samples]
    # one eval takes a prompt of any length in n_ubatch batches: n_batch is n_ubatch
    row = {**common, "n_batch": model.n_ubatch, "n_ubatch": model.n_ubatch, "n_threads": model.n_threads,
           "type_k": model.cache_type, "type_v": model.cache_type, "n_gpu_layers": 0, "flash_attn": True,
           "n_prompt": p, "n_gen": n, "n_depth": d, "test_time": test_time,
           "avg_ns": int(statistics.mean(samples_ns)), "stddev_ns": int(_stdev(samples_ns)),
           "avg_ts": statistics.mean(samples_ts), "stddev_ts": _stdev(samples_ts),
           "samples_ns": samples_ns, "samples_ts": samples_ts,
           "roofline_ts": None, "bytes_per_token": None, "read_bw_gbs": read_bw / 1e9}
    if n:  # the mean context of the n steps is about the middle step's
        row["bytes_per_token"] = decode_bytes_per_token(model, d + n // 2)
        row["roofline_ts"] = read_bw / row["bytes_per_token"]
    return row


def _stdev(values: list) -> float:
    """Sample standard deviation, 0 for one value (as llama-bench)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


# -- the static fields -----------------------------------------------------------------

def _build_fields() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*cmd) -> Optional[str]:
        try:
            r = subprocess.run(["git", "-C", here, *cmd], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    from . import __version__
    count = git("rev-list", "--count", "HEAD")
    return {"build_commit": git("rev-parse", "--short", "HEAD") or __version__,
            "build_number": int(count) if count else 0,
            "cpu_info": cpu_info(), "gpu_info": "", "backends": BACKEND}


def cpu_info() -> str:
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _model_fields(model: Model) -> dict:
    n_params = sum(int(np.prod(t.ne)) for t in model.tensors.values())
    size_label = f"{n_params / 1e9:.0f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"
    quant = quantization(model)
    name = model.metadata.get("general.name") or os.path.basename(model.path)
    return {"model_filename": str(model.path), "model_name": f"{name} {quant}",
            "model_type": f"{model.config.arch} {size_label} {quant}",
            "model_size": model.weight_bytes(), "model_n_params": n_params}


_K_SIZES = {"S": "Small", "M": "Medium", "L": "Large"}


def quantization(model: Model) -> str:
    """llama.cpp's name of the file type (``Q4_K - Medium``), or the largest weight type."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(model.metadata["general.file_type"]).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        return next(iter(model.type_mixture()))
    base, _, size = name.rpartition("_")
    return f"{base} - {_K_SIZES[size]}" if base.endswith("_K") and size in _K_SIZES else name


# -- output -------------------------------------------------------------------------------

# (header, width; negative: left-aligned), as llama-bench's markdown printer
_COLUMNS = (("model", -30), ("size", 10), ("params", 10), ("backend", -13), ("threads", 7),
            ("type_k", -6), ("test", 13), ("t/s", 20), ("roofline", 20))
_PEER_COLUMNS = (("ik t/s", 20), ("ratio", 6))


def with_peer(row: dict, peer: Optional[dict]) -> dict:
    """``row`` with ik's figures for the same test (``ik_avg_ts``, ``ik_stddev_ts``) and the
    same-run ratio ours / ik (``ik_ratio``); None where ik has no such test."""
    row = dict(row)
    row["ik_avg_ts"] = peer["avg_ts"] if peer else None
    row["ik_stddev_ts"] = peer["stddev_ts"] if peer else None
    row["ik_ratio"] = row["avg_ts"] / peer["avg_ts"] if peer else None
    return row


def _columns(row: dict) -> tuple:
    return _COLUMNS + (_PEER_COLUMNS if "ik_avg_ts" in row else ())


def _cells(row: dict) -> list[str]:
    roof = row["roofline_ts"]
    cells = [row["model_name"], f"{row['model_size'] / 2**30:.2f} GiB", f"{row['model_n_params'] / 1e9:.2f} B",
             row["backends"], str(row["n_threads"]), row["type_k"], test_name(row),
             f"{row['avg_ts']:.2f} ± {row['stddev_ts']:.2f}",
             f"{roof:.2f} ({100 * row['avg_ts'] / roof:.0f}%)" if roof else ""]
    if "ik_avg_ts" in row:
        ik = row["ik_avg_ts"]
        cells += [f"{ik:.2f} ± {row['ik_stddev_ts']:.2f}" if ik else "", f"{row['ik_ratio']:.2f}" if ik else ""]
    return cells


def _markdown_line(cells: Sequence[str], columns: Sequence) -> str:
    return "|" + "".join(f" {c:<{-w}} |" if w < 0 else f" {c:>{w}} |" for c, (_, w) in zip(cells, columns))


def _markdown_header(columns: Sequence) -> str:
    rule = ["-" * -w if w < 0 else "-" * (w - 1) + ":" for _, w in columns]
    return _markdown_line([h for h, _ in columns], columns) + "\n" + _markdown_line(rule, columns)


def _markdown_footer(row: dict) -> str:
    peer = "\nik t/s: a native ik_llama.cpp build run right after, same file and settings (-mla 3 -fa 1); " \
           "ratio = minillm / ik" if "ik_avg_ts" in row else ""
    return (f"\nbuild: {row['build_commit']} ({row['build_number']})\n"
            f"roofline: t/s if a decode step took only the time to read its bytes (weights it touches "
            f"and cache rows) at the read bandwidth measured in this run, {row['read_bw_gbs']:.1f} GB/s" + peer)


def write_csv(rows: Iterable[dict], out: TextIO) -> None:
    """Rows as CSV, one column per key of the first row (lists JSON-encoded)."""
    import csv

    writer = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), extrasaction="ignore")
            writer.writeheader()
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        out.flush()


def write_rows(rows: Iterable[dict], fmt: str, out: TextIO) -> None:
    """Print ``rows`` as they come: a markdown table (``md``), a JSON array (``json``), one
    JSON object per line (``jsonl``), as llama-bench's ``-o``, or CSV."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if fmt == "csv":
        return write_csv(rows, out)
    last = None
    for i, row in enumerate(rows):
        if fmt == "md":
            columns = _columns(row)
            out.write((_markdown_header(columns) + "\n" if i == 0 else "") + _markdown_line(_cells(row), columns) + "\n")
        elif fmt == "json":
            out.write(("[\n" if i == 0 else ",\n") + json.dumps(row, indent=2))
        else:
            out.write(json.dumps(row) + "\n")
        out.flush()
        last = row
    if fmt == "json":
        out.write("\n]\n" if last else "[]\n")
    elif fmt == "md" and last:
        out.write(_markdown_footer(last) + "\n")


def format_rows(rows: Iterable[dict], fmt: str = "md") -> str:
    """``rows`` in the ``-o`` format ``fmt`` (md, json, jsonl), as one string."""
    out = io.StringIO()
    write_rows(rows, fmt, out)
    return out.getvalue()
