"""``minillm serve`` as a child process on a free loopback port, up once ``/health`` answers
(for tests, ``tools/load_test.py`` and programs that want a server of their own)::

    with ServerProcess(["-m", "model.gguf", "-c", "1024"]) as server:
        ...  # talk to server.url
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start ``python -m minillm serve ARGS --host 127.0.0.1 --port <free>``; its output goes to
    a log file (``log_text()``).  ``env`` adds environment variables (e.g. MINILLM_API_KEY, which
    keeps a key off the command line)."""

    def __init__(self, args: Sequence[str] = (), env: Optional[dict] = None, timeout: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile("w+", prefix="minillm-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "minillm", "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"minillm serve exited with {self._proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"minillm serve did not answer /health in {timeout:.0f} s:\n"
                                   f"{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def log_text(self) -> str:
        """Everything the server wrote so far."""
        self._log.flush()
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
