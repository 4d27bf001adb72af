"""Run a native ik_llama.cpp build's ``llama-sweep-bench`` and ``llama-bench`` on the same file
and settings as a minillm benchmark (``minillm bench --vs-ik PATH``): ``-mla 3 -fa 1``, the
same threads, cache type and ubatch, and this process's environment (so the same OpenMP wait
policy: minillm sets GOMP_SPINCOUNT at import unless you set it)."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Optional, Sequence


def find_binary(path: str, name: str) -> str:
    """``path`` is the binary itself, its folder, a build folder (``bin/NAME``) or an ik checkout
    (``build/bin/NAME``)."""
    candidates = [path] if os.path.basename(path) == name else []
    candidates += [os.path.join(path, name), os.path.join(path, "bin", name), os.path.join(path, "build", "bin", name)]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise ValueError(f"no executable {name} at {path} (give ik_llama.cpp's build/bin folder or the binary)")


def _common(n_threads: int, cache_type: str, n_ubatch: int) -> list[str]:
    return ["-t", str(n_threads), "-ctk", cache_type, "-ub", str(n_ubatch), "-b", str(n_ubatch), "-mla", "3", "-fa", "1"]


def _run(cmd: list[str], on_line=None, merge_stderr: bool = False) -> list[str]:
    """Run ``cmd``; its output lines (``on_line`` sees each as it comes): stdout, or stdout and
    stderr together (llama-sweep-bench logs its rows to stderr).  ValueError on failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            text=True, env=dict(os.environ))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if on_line is not None:
            on_line(line)
    err = "".join(lines[-20:]) if merge_stderr else proc.stderr.read()
    if proc.wait() != 0:
        raise ValueError(f"{os.path.basename(cmd[0])} failed ({proc.returncode}): {err[-1500:]}")
    return lines


def sweep(path: str, model_path: str, n_ctx: int, n_ubatch: int, n_gen: int, n_threads: int, cache_type: str,
          progress: bool = False) -> list[dict]:
    """ik's ``llama-sweep-bench --output-format jsonl`` rows."""
    cmd = [find_binary(path, "llama-sweep-bench"), "-m", model_path, "-c", str(n_ctx), "-n", str(n_gen),
           *_common(n_threads, cache_type, n_ubatch), "--output-format", "jsonl"]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_ctx // n_ubatch, desc="ik sweep", unit="depth", leave=False)
    try:
        lines = _run(cmd, (lambda line: bar.update(1) if line.startswith("{") else None) if bar else None,
                     merge_stderr=True)
    finally:
        if bar is not None:
            bar.close()
    rows = [json.loads(line) for line in lines if line.startswith("{") and '"n_kv"' in line]
    if not rows:
        raise ValueError("llama-sweep-bench printed no jsonl rows")
    return rows


def bench(path: str, model_path: str, n_prompt: Sequence[int], n_gen: Sequence[int], depths: Sequence[int],
          reps: int, n_threads: int, cache_type: str, n_ubatch: int) -> dict[str, dict]:
    """ik's ``llama-bench -o json`` rows by test name (``pp512``, ``tg64``, ``tg64@pp4096``).
    Decode tests at a depth run as ``-gp D,N``; ik has no prompt test at a depth."""
    cmd = [find_binary(path, "llama-bench"), "-m", model_path, "-r", str(reps), *_common(n_threads, cache_type, n_ubatch),
           "-o", "json"]
    plain_p = [p for p in n_prompt if p] if 0 in depths else []
    plain_n = [n for n in n_gen if n] if 0 in depths else []
    cmd += ["-p", ",".join(map(str, plain_p or [0])), "-n", ",".join(map(str, plain_n or [0]))]
    for d in depths:
        for n in n_gen:
            if d and n:
                cmd += ["-gp", f"{d},{n}"]
    rows = json.loads("".join(_run(cmd)) or "[]")
    return {r["test"]: r for r in rows if r.get("n_prompt") or r.get("n_gen")}


def label(path: str) -> Optional[str]:
    """ik's version line (``version: 4840 (8337e4cd3)``), from ``llama-sweep-bench --version``."""
    try:
        out = subprocess.run([find_binary(path, "llama-sweep-bench"), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.lower().startswith("version"):
            return line.strip()
    return None
