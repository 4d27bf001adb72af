"""Load-test a running ``minillm serve``: N concurrent clients for T seconds.

    python tools/load_test.py [--url http://127.0.0.1:8080] [-c N] [-t SECONDS] [--endpoint completions|chat]
                              [--no-stream] [--max-tokens K] [--prompt TEXT] [--temperature X] [--api-key KEY]
                              [--start] [--json]

Each client (a thread with its own HTTP connection) sends one request after another until the
time is up; requests still running then are waited for.  Streaming requests (the default) ask for
``stream_options.include_usage`` and take the generated-token count from the usage chunk; the
time to first token is the arrival of the first SSE chunk that carries text.  Non-streaming
requests read ``usage`` (no time to first token).  A 503 (queue full) makes that client wait for
its Retry-After (at most 1 s) before trying again; a 4xx refusal (a wrong API key, a bad
request) ends that client, as asking again would get the same answer.

Prints requests completed, errors by status, requests/s, generated tokens/s (all clients together)
and p50/p90/p99 of the time to first token and the total latency; --json prints one JSON object.
--start runs ``minillm serve`` itself (the built-in tiny model, a free loopback port) for the
test and stops it afterwards.  Only loopback servers are accepted: this is a tool for a local
server, not for loading someone else's.
"""
from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

try:
    import httpx
except ImportError:         # the pydantic fork, the same API (what newer openai releases pull in)
    import httpx2 as httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MAX_CLIENTS = 64
MAX_SECONDS = 600


@dataclass
class Result:
    ok: bool
    status: str                    # "200", "503", "connect", "timeout", "stream error"...
    total_s: float
    ttft_s: Optional[float] = None
    tokens: int = 0
    started: float = 0.0
    message: str = ""              # a failure's explanation (the server's error message)


@dataclass
class Run:
    results: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, r: Result) -> None:
        with self.lock:
            self.results.append(r)


# -- the loopback rule -------------------------------------------------------------------

def loopback_url(url: str) -> str:
    """The base URL without a trailing slash; ValueError unless it is http(s) on a loopback host."""
    try:
        u = httpx.URL(url)
    except Exception as e:
        raise ValueError(f"not a URL: {url!r} ({e})") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = u.host
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(f"refusing to load {host}: only loopback servers (localhost, 127.0.0.0/8, ::1) "
                             "may be load-tested with this tool") from None
    return str(u).rstrip("/")


# -- one client ------------------------------------------------------------------------

def request_body(args) -> dict:
    body: dict = {"max_tokens": args.max_tokens, "temperature": args.temperature, "stream": args.stream}
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        body["prompt"] = args.prompt
    return body


def _chunk_text(chunk: dict) -> str:
    for choice in chunk.get("choices") or ():
        if "delta" in choice:
            text = (choice.get("delta") or {}).get("content")
        else:
            text = choice.get("text")
        if text:
            return text
    return ""


def one_request(client: httpx.Client, path: str, body: dict, stream: bool) -> tuple[Result, Optional[float]]:
    """Send one request; the Result, and how long to wait before the next (Retry-After) or None."""
    t0 = time.perf_counter()

    def fail(status: str, wait: Optional[float] = None, message: str = ""):
        return Result(False, status, time.perf_counter() - t0, started=t0, message=message), wait

    try:
        if not stream:
            resp = client.post(path, json=body)
            if resp.status_code != 200:
                return fail(str(resp.status_code), _retry_after(resp), _error_message(resp))
            usage = resp.json().get("usage") or {}
            return Result(True, "200", time.perf_counter() - t0, None, int(usage.get("completion_tokens", 0)),
                          started=t0), None
        ttft, tokens, text_chunks, done = None, None, 0, False
        with client.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                return fail(str(resp.status_code), _retry_after(resp), _error_message(resp))
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return fail("stream error", message=str(chunk["error"].get("message", chunk["error"])))
                if _chunk_text(chunk):
                    text_chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = int(chunk["usage"].get("completion_tokens", 0))
        if not done:
            return fail("stream cut")
        # without a usage chunk (another server), count the text chunks: one per token here
        return Result(True, "200", time.perf_counter() - t0, ttft, text_chunks if tokens is None else tokens,
                      started=t0), None
    except httpx.TimeoutException as e:
        return fail("timeout", message=repr(e))
    except httpx.TransportError as e:
        return fail("connect", 0.1, repr(e))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return fail("bad response", message=repr(e))


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def _retry_after(resp: httpx.Response) -> Optional[float]:
    try:
        return min(1.0, max(0.0, float(resp.headers["retry-after"])))
    except (KeyError, ValueError):
        return None


def client_loop(base: str, args, deadline: float, run: Run) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    body = request_body(args)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        while time.perf_counter() < deadline:
            result, wait = one_request(client, path, body, args.stream)
            run.add(result)
            if result.status.startswith("4") and result.status not in ("408", "429"):
                break        # refused (bad key, bad request): asking again gets the same answer
            if wait:
                time.sleep(min(wait, max(0.0, deadline - time.perf_counter())))


# -- the summary -------------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> Optional[float]:
    """Linear interpolation between order statistics; None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(run: Run, wall_s: float, args, base: str, server: Optional[dict]) -> dict:
    ok = [r for r in run.results if r.ok]
    errors = collections.Counter(r.status for r in run.results if not r.ok)
    tokens = sum(r.tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    total = [r.total_s for r in ok]
    out = {
        "url": base, "endpoint": args.endpoint, "stream": args.stream, "clients": args.concurrency,
        "duration_s": args.duration, "wall_s": round(wall_s, 3), "max_tokens": args.max_tokens,
        "requests_completed": len(ok), "errors": dict(sorted(errors.items())),
        "error_examples": {k: next(r.message for r in run.results if not r.ok and r.status == k) for k in errors},
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "generated_tokens": tokens, "generated_tokens_per_s": tokens / wall_s if wall_s else 0.0,
        "tokens_per_request_mean": tokens / len(ok) if ok else 0.0,
        "ttft_s": {f"p{q}": percentile(ttft, q) for q in (50, 90, 99)} | {"max": max(ttft, default=None)},
        "latency_s": {f"p{q}": percentile(total, q) for q in (50, 90, 99)} | {"max": max(total, default=None)},
    }
    if server:
        out["server"] = server
    return out


def print_summary(s: dict) -> None:
    mode = "streaming" if s["stream"] else "non-streaming"
    print(f"{s['clients']} clients x {s['duration_s']:g} s against {s['url']} ({s['endpoint']}, {mode}, "
          f"max_tokens {s['max_tokens']}); wall {s['wall_s']:.1f} s")
    errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"
    print(f"requests completed   {s['requests_completed']}")
    print(f"errors               {errors}")
    for status, message in s["error_examples"].items():
        if message:
            print(f"  {status}: {message[:150]}")
    print(f"requests/s           {s['requests_per_s']:.2f}")
    print(f"generated tokens/s   {s['generated_tokens_per_s']:.1f}  ({s['generated_tokens']} tokens, "
          f"{s['tokens_per_request_mean']:.1f} per request)")

    def ms(v):
        return "-" if v is None else f"{1e3 * v:.0f}"

    print(f"{'':14s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}")
    for name, key in (("first token", "ttft_s"), ("total", "latency_s")):
        d = s[key]
        print(f"{name:14s}{ms(d['p50']):>9s}{ms(d['p90']):>9s}{ms(d['p99']):>9s}{ms(d['max']):>9s}")
    if "server" in s:
        sv = s["server"]
        print(f"server /metrics      {sv['tokens_predicted']:.0f} tokens predicted, decode "
              f"{sv['decode_tokens_per_s']:.1f} t/s while generating; requests deferred now "
              f"{sv['requests_deferred']:.0f}")


# -- the server's own view (/metrics), before and after --------------------------------------

def read_metrics(base: str, headers: dict) -> Optional[dict]:
    try:
        text = httpx.get(base + "/metrics", headers=headers, timeout=5.0).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:") and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                values[name[len("llamacpp:"):]] = float(value)
            except ValueError:
                pass
    return values


def metrics_delta(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    if not before or not after:
        return None

    def d(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    tokens, seconds = d("tokens_predicted_total"), d("tokens_predicted_seconds_total")
    return {"tokens_predicted": tokens, "decode_tokens_per_s": tokens / seconds if seconds else 0.0,
            "requests_deferred": after.get("requests_deferred", 0.0)}


# -- --start: our own server ---------------------------------------------------------------

def own_server(args):
    """``minillm serve`` on the built-in model and a free loopback port, for the length of the test."""
    from minillm.server_process import ServerProcess
    from minillm.synthetic import default_model_path

    cmd = ["-m", default_model_path(), "-c", str(args.ctx_size), "-t", str(args.server_threads),
           "--max-queue", str(args.max_queue), "--log-level", "warning"]
    # the key goes through the environment, not the command line, where ps shows it
    return ServerProcess(cmd, env={"MINILLM_API_KEY": args.api_key} if args.api_key else None)


def run_load(base: str, args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    before = read_metrics(base, headers)
    run = Run()
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    threads = [threading.Thread(target=client_loop, args=(base, args, deadline, run), daemon=True,
                                name=f"client-{i}") for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return summarize(run, wall, args, base, metrics_delta(before, read_metrics(base, headers)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080",
                    help="the server's base URL (loopback only; not with --start)")
    ap.add_argument("-c", "--concurrency", type=int, default=4, help=f"concurrent clients (1..{MAX_CLIENTS})")
    ap.add_argument("-t", "--duration", type=float, default=20.0, help=f"seconds to send requests (..{MAX_SECONDS})")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--no-stream", dest="stream", action="store_false", help="plain JSON answers instead of SSE")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY' (--start: the server's)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (default 120)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    g = ap.add_argument_group("--start: run minillm serve (the built-in model) for the test")
    g.add_argument("--start", action="store_true")
    g.add_argument("--server-threads", type=int, default=0, help="the server's -t (0: all cores)")
    g.add_argument("--ctx-size", type=int, default=4096, help="the server's -c")
    g.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= MAX_CLIENTS:
        ap.error(f"-c must be in 1..{MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_SECONDS:
        ap.error(f"-t must be in (0, {MAX_SECONDS}] seconds")
    if args.max_tokens < 1 or args.timeout <= 0:
        ap.error("--max-tokens and --timeout must be positive")

    server = None
    try:
        if args.start:
            server = own_server(args)
            base = server.url
        else:
            base = loopback_url(args.url)
        summary = run_load(base, args)
        if server is not None and any(not k.isdigit() or k == "500" for k in summary["errors"]):
            print(f"the server's log (last lines):\n{server.log_text()[-3000:]}", file=sys.stderr)
    except (ValueError, RuntimeError) as e:
        print(f"load_test: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
