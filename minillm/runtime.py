"""Process-wide settings the engine makes so that a user does not have to know them.

Imported before the kernel modules (``minillm/__init__`` imports it first): OpenMP reads its
environment once, when the runtime library loads.

* OpenMP wait policy: a decode step makes some 250 kernel calls with a few microseconds of
  Python between them.  Worker threads that sleep at once between calls (``passive``) cost
  ~20 us per call to wake; spinning forever (``active``) takes cores from everything else
  on the machine.  Unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, workers
  spin for ``GOMP_SPINCOUNT`` iterations (about a millisecond: longer than the gaps inside a
  step, far shorter than a pause between requests), then sleep.
* numpy's BLAS: the engine makes no BLAS calls on the token path, but BLAS worker threads
  left spinning by the caller's own numpy work would take cores from the kernels: the engine
  limits BLAS to one thread while it evaluates (threadpoolctl).
"""
from __future__ import annotations

import contextlib
import os

SPINCOUNT = "200000"

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_blas_limiter = None


def configure_threads() -> None:
    """Make the BLAS limiter once (threadpoolctl inspects the loaded libraries: slow)."""
    global _blas_limiter
    if _blas_limiter is None:
        from threadpoolctl import ThreadpoolController
        _blas_limiter = ThreadpoolController()


@contextlib.contextmanager
def kernel_threads():
    """BLAS on one thread while the kernels run (restored afterwards)."""
    configure_threads()
    with _blas_limiter.limit(limits=1, user_api="blas"):
        yield


def isa_level() -> str:
    """The instruction set the kernels run with (minillm_kernels.LEVEL, or MINILLM_ISA):
    ``scalar``, ``avx2``, ``avx512`` or ``amx`` (AVX-512 with the AMX GEMM for prompt batches)."""
    from minillm_kernels import matmul
    return matmul.isa_level()


def openmp_wait() -> str:
    """The OpenMP wait setting in effect (what both engines of a side-by-side run inherit)."""
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if key in os.environ:
            return f"{key}={os.environ[key]}"
    return "OpenMP default"
