"""Start and stop a real ``minillm serve`` process on a free loopback port (for the server tests)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

try:                      # the OpenAI client's HTTP library: httpx2 in openai 3, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

from minillm.synthetic import default_model_path

N_CTX = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, n_ctx: int = N_CTX, timeout: float = 120.0):
    """Yield the base URL (``http://127.0.0.1:PORT``) of ``minillm serve`` on the built-in model,
    started with ``args`` and stopped (and its log shown on failure) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "minillm", "serve", "-m", default_model_path(), "--port", str(port),
           "-c", str(n_ctx), "-t", "2", *args]
    log = open(os.devnull if os.environ.get("MINILLM_QUIET_SERVER") else _log_path(port), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"minillm serve exited with {proc.returncode}: {_tail(port)}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"minillm serve did not come up in {timeout:.0f} s: {_tail(port)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _log_path(port: int) -> str:
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"minillm-serve-{port}.log")


def _tail(port: int) -> str:
    try:
        with open(_log_path(port)) as f:
            return f.read()[-3000:]
    except OSError:
        return "(no log)"


def server_log(port_or_url) -> str:
    """The server's combined stdout/stderr so far."""
    port = int(str(port_or_url).rsplit(":", 1)[-1])
    try:
        with open(_log_path(port)) as f:
            return f.read()
    except OSError:
        return ""
