"""models.md's measurements of the default model, as markdown on stdout.

    python tools/eval_model.py corpus/ release/ [--ik-perplexity PATH/llama-perplexity] [-c 512]

``corpus/`` is tools/prepare_corpus.py's output (train.txt, test.txt), ``release/`` is
``tools/train_model.py release``'s (minillm-docs-{f16,q8_0,iq4_nl,iq1_s}.gguf).  Prints:

- the unigram baseline: the perplexity of the scored test tokens under the training
  text's token frequencies (add-one smoothed), the floor any language model must beat;
- per file: size, held-out PPL by ``minillm perplexity`` (llama-perplexity's method), mean
  KL-divergence from F16 with its 99th percentile and the same-top-token rate, and, with
  ``--ik-perplexity``, ik_llama.cpp's ``llama-perplexity`` PPL on the same file and text;
- greedy continuations of three prompts by the F16 and Q8_0 files.
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import minillm
from minillm.generate import generate_text
from minillm.perplexity import mean_and_error, perplexity, scored_positions

FILES = ("f16", "q8_0", "iq4_nl", "iq1_s")
PROMPTS = ("The standard library", "To create a virtual environment,", "A list comprehension")
N_SAMPLE = 48


def unigram_ppl(model, train: str, test: str, n_ctx: int) -> float:
    """PPL of the tokens llama-perplexity scores in ``test`` under add-one-smoothed
    unigram frequencies of ``train``."""
    counts = np.bincount(model.tokenize(train, add_bos=False), minlength=model.config.n_vocab) + 1.0
    logp = np.log(counts / counts.sum())
    tokens = np.asarray(model.tokenize(test, add_bos=True))
    first, end = scored_positions(n_ctx)
    n = len(tokens) // n_ctx
    chunks = tokens[:n * n_ctx].reshape(n, n_ctx)
    return math.exp(-logp[chunks[:, first + 1:end + 1]].mean())


def ik_perplexity(binary: str, model: Path, text: Path, n_ctx: int, n_chunks: int, threads: int):
    """(PPL, error) printed by ik_llama.cpp's llama-perplexity (MLA 3, flash attention)."""
    cmd = [binary, "-m", str(model), "-f", str(text), "-c", str(n_ctx), "-t", str(threads), "-mla", "3", "-fa", "1"]
    if n_chunks > 0:
        cmd += ["--chunks", str(n_chunks)]
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=True)
    m = re.search(r"Final estimate: PPL(?: over \d+ chunks for n_ctx=\d+)? = ([\d.]+) \+/- ([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"no final estimate in llama-perplexity's output:\n{out.stderr[-2000:]}")
    return float(m.group(1)), float(m.group(2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("release", type=Path)
    ap.add_argument("--ik-perplexity", help="ik_llama.cpp's llama-perplexity binary")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="at most this many chunks (0: all)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args(argv)
    test_file = args.corpus / "test.txt"
    test = test_file.read_text(encoding="utf-8")
    paths = {name: args.release / f"minillm-docs-{name}.gguf" for name in FILES}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = str(Path(tmp) / "f16.kld")
        for name, path in paths.items():
            m = minillm.load(path, n_ctx=args.ctx_size, n_threads=args.threads)
            if name == "f16":
                unigram = unigram_ppl(m, (args.corpus / "train.txt").read_text(encoding="utf-8"), test,
                                      args.ctx_size)
                r = perplexity(m, test, args.ctx_size, args.chunks, save_base=base)
            else:
                r = perplexity(m, test, args.ctx_size, args.chunks, kl_base=base)
            row = dict(name=name.upper(), mib=path.stat().st_size / 2**20, ppl=r.ppl, chunks=r.n_chunks,
                       n_scored=len(r.nll))
            if r.kld is not None:
                row.update(kld=mean_and_error(r.kld), kld99=float(np.percentile(r.kld, 99)),
                           same=mean_and_error(r.same_top))
            if args.ik_perplexity:
                row["ik"] = ik_perplexity(args.ik_perplexity, path, test_file, args.ctx_size, args.chunks,
                                          args.threads)
            rows.append(row)
            print(f"{name}: PPL {r.ppl.mean:.4f} +/- {r.ppl.err:.4f}", file=sys.stderr)

    print(f"Held-out text: {rows[0]['chunks']} chunks of {args.ctx_size} tokens, "
          f"{rows[0]['n_scored']} tokens scored. Unigram baseline PPL: {unigram:.2f}\n")
    print("| file | size (MiB) | PPL (minillm) | PPL (ik_llama.cpp llama-perplexity) | mean KLD vs F16 "
          "| 99% KLD | same top token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ik = f"{row['ik'][0]:.4f} ± {row['ik'][1]:.4f}" if "ik" in row else "-"
        if "kld" in row:
            kld = f"{row['kld'].mean:.5f} ± {row['kld'].err:.5f}"
            k99 = f"{row['kld99']:.4f}"
            same = f"{100 * row['same'].mean:.2f} ± {100 * row['same'].err:.2f} %"
        else:
            kld = k99 = same = "(base)"
        print(f"| {row['name']} | {row['mib']:.2f} | {row['ppl'].mean:.4f} ± {row['ppl'].err:.4f} | {ik} "
              f"| {kld} | {k99} | {same} |")

    for name in ("f16", "q8_0"):
        m = minillm.load(paths[name], n_ctx=256, n_threads=args.threads)
        print(f"\nGreedy continuations, {name.upper()} ({N_SAMPLE} tokens):\n")
        for prompt in PROMPTS:
            text = "".join(generate_text(m, prompt, max_tokens=N_SAMPLE))
            print(f"```\n{prompt}{text}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
