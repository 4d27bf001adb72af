"""Time tokenizing 1 MB of text (the issue asks for < 1 s).

    python tools/bench_tokenizer.py [--vocab FILE.gguf] [--text FILE] [--repeat N]

Without --text it times two generated 1 MB texts: the repository's own Python
sources (code and English) and a multilingual mix (prose, CJK, Cyrillic, emoji,
digits).  Prints the median wall-clock time of --repeat runs, and the process CPU
time (HF tokenizers encodes newline-cut chunks on all cores), which is the figure
to trust when other work shares the machine.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minillm.tokenizer import Tokenizer  # noqa: E402

MB = 1_000_000


def _fit(text: str, size: int = MB) -> str:
    while len(text.encode("utf-8")) < size:
        text += text
    return text.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def source_text() -> str:
    files = sorted(glob.glob(os.path.join(ROOT, "minillm", "*.py")) + glob.glob(os.path.join(ROOT, "tests", "*.py")))
    return _fit("".join(open(f, encoding="utf-8").read() for f in files))


def multilingual_text(seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ("the of and to in is that for it as with was on be by this are from at or an have not "
             "model token layer attention expert cache memory speed").split()
    others = ["我想在apple工作1314151天～", "日本語のテキスト", "한국어 텍스트", "нещо на Български", "Ελληνικά",
              "مرحبا بالعالم", "🚀😶‍🌫️✅", "3.14159 2718281828", "naïve café", "  \t  ", "\n\n"]
    parts = []
    size = 0
    while size < MB:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
        if rng.random() < 0.4:
            s += " " + rng.choice(others)
        s += rng.choice([". ", ".\n", ", ", "\n"])
        parts.append(s)
        size += len(s.encode("utf-8"))
    return _fit("".join(parts))


def bench(tok: Tokenizer, text: str, repeat: int) -> tuple[float, float, int]:
    """Median wall-clock and process CPU seconds (all threads) of tokenizing ``text``."""
    walls, cpus, n = [], [], 0
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        n = len(tok.tokenize(text, add_bos=False))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", default=os.path.join(ROOT, "minillm", "data", "ggml-vocab-deepseek-llm.gguf"))
    ap.add_argument("--text", help="a UTF-8 text file to tokenize instead of the generated texts")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf(args.vocab)
    print(f"vocabulary: {tok!r}, loaded in {time.perf_counter() - t0:.2f} s")
    if args.text:
        texts = {os.path.basename(args.text): open(args.text, encoding="utf-8").read()}
    else:
        texts = {"repository sources (code/English)": source_text(), "multilingual mix": multilingual_text()}
    for name, text in texts.items():
        size = len(text.encode("utf-8"))
        wall, cpu, n = bench(tok, text, args.repeat)
        print(f"{name}: {size / MB:.2f} MB -> {n} tokens in {wall:.3f} s wall, {cpu:.3f} s CPU "
              f"(medians of {args.repeat}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
