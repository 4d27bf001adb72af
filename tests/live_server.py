"""Start and stop a real ``minillm serve`` process on a free loopback port (for the server tests)."""
from __future__ import annotations

import contextlib

from minillm.server_process import ServerProcess, free_port
from minillm.synthetic import default_model_path

try:                      # the OpenAI client's HTTP library: httpx2 in openai 3, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

N_CTX = 1024
_running: dict[str, ServerProcess] = {}

__all__ = ["N_CTX", "free_port", "httpx", "running_server", "server_log"]


@contextlib.contextmanager
def running_server(*args: str, n_ctx: int = N_CTX):
    """Yield the base URL (``http://127.0.0.1:PORT``) of ``minillm serve`` on the built-in model
    (2 threads, ``n_ctx``), started with ``args`` and stopped afterwards."""
    with ServerProcess(["-m", default_model_path(), "-c", str(n_ctx), "-t", "2", *args]) as server:
        _running[server.url] = server
        try:
            yield server.url
        finally:
            del _running[server.url]


def server_log(url: str) -> str:
    """What the server at ``url`` wrote so far."""
    return _running[url].log_text()
