"""The ISA levels (minillm_kernels: scalar, avx2, avx512, amx) and how one is chosen.

* The levels found by cpuid/xgetbv agree with the flags Linux reports in /proc/cpuinfo (an
  independent reader of the same cpuid bits).
* MINILLM_ISA forces a lower level: the import, `minillm info` and the kernels then use it.
* Every supported level other than the default runs the kernel test files (test_matmul,
  test_attention, test_ops, test_kquants) in a process of its own with MINILLM_ISA set: each
  level's kernels meet the same derived bounds against the float64 products and the scalar
  build.  The default level runs them in this session.
* The avx512 build carries the AVX2 bodies compiled with AVX-512 flags: with the AMX GEMM off
  its results equal the avx2 build's bit for bit.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minillm_kernels
from minillm_kernels.random_blocks import random_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = minillm_kernels.supported_levels()
# what each level needs, by the names Linux gives the flags (arch/x86/include/asm/cpufeatures.h)
CPUINFO_NEEDS = {
    "avx2": {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "popcnt", "movbe"},
    "avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16"},
    "amx": {"amx_tile", "amx_int8", "amx_bf16"},
}


def cpuinfo_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(autouse=True)
def _default_level():
    yield
    minillm_kernels.kernels(minillm_kernels.LEVEL)  # a test may have switched the AMX paths off


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_levels_match_cpuinfo():
    flags = cpuinfo_flags()
    expected = ["scalar"]
    for level in ("avx2", "avx512", "amx"):
        if not CPUINFO_NEEDS[level] <= flags:
            break
        expected.append(level)
    assert minillm_kernels.cpu.supported_levels() == expected
    assert LEVELS == expected  # every level is built here
    if not os.environ.get("MINILLM_ISA"):
        assert minillm_kernels.LEVEL == expected[-1]


def test_kernels_report_their_level():
    for level in LEVELS:
        k = minillm_kernels.kernels(level)
        assert k.level == level and k.matmul.isa_level() == level
        assert k.matmul.simd_enabled() == (level != "scalar")
        assert k.attention.amx_on() == (level == "amx")  # the AMX score and value tiles
    with pytest.raises(ValueError, match="unknown ISA level"):
        minillm_kernels.kernels("sse9")


def run_forced(level, code):
    env = dict(os.environ, MINILLM_ISA=level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("level", LEVELS)
def test_minillm_isa_forces_the_level(level):
    r = run_forced(level, "import minillm_kernels as k, minillm_kernels.matmul as m; "
                          "print(k.LEVEL, m.isa_level(), m.__name__)")
    assert r.returncode == 0, r.stderr
    build = "avx512" if level == "amx" else level
    assert r.stdout.split() == [level, level, f"minillm_kernels._{build}.matmul"]


def test_choose_level():
    levels = ["scalar", "avx2"]
    assert minillm_kernels.choose_level(levels, "") == "avx2"
    assert minillm_kernels.choose_level(levels, " Scalar ") == "scalar"
    with pytest.warns(RuntimeWarning, match="MINILLM_ISA=amx: this CPU or install does not support it; using avx2"):
        assert minillm_kernels.choose_level(levels, "amx") == "avx2"
    with pytest.raises(ValueError, match="is not an ISA level"):
        minillm_kernels.choose_level(levels, "avx3")


def test_minillm_isa_errors():
    r = run_forced("sse9", "import minillm_kernels")
    assert r.returncode != 0 and "MINILLM_ISA='sse9' is not an ISA level" in r.stderr


def test_info_prints_the_level():
    level = LEVELS[1] if len(LEVELS) > 1 else "scalar"
    env = dict(os.environ, MINILLM_ISA=level)
    r = subprocess.run([sys.executable, "-m", "minillm", "info"], env=env, capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"kernels:       ISA level {level}" in r.stdout


KERNEL_TESTS = ["tests/test_matmul.py", "tests/test_attention.py", "tests/test_ops.py", "tests/test_kquants.py"]


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv != minillm_kernels.LEVEL])
def test_kernel_tests_pass_at_level(level):
    env = dict(os.environ, MINILLM_ISA=level)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", *KERNEL_TESTS],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"ISA level {level} " in r.stdout  # conftest's report header: the run used the level
    assert " passed" in r.stdout.splitlines()[-1]


@pytest.mark.skipif("avx512" not in LEVELS, reason="the CPU has no AVX-512")
def test_avx512_build_equals_avx2_build_without_amx():
    a2, a5 = minillm_kernels.kernels("avx2").matmul, minillm_kernels.kernels("avx512").matmul
    assert not a5.amx_gemm(20, 512)
    rng = np.random.default_rng(0)
    for t in sorted(a2.supported_types()):
        src = a2.INTERNAL_TYPES.get(t, t)
        k = 512 if a2.block_geometry(t)[0] > 1 else 77
        raw = random_weights(src, (40 if t == a2.IQ4_NL_ROWS4 else 37, k), seed=t)  # (R4: groups of 4 rows)
        if t != src:
            raw = a2.repack(raw, src, target=t)[0]
        for n in (1, 5, 40):
            x = rng.standard_normal((n, k), dtype=np.float32)
            assert np.array_equal(a2.matmul(raw, t, x), a5.matmul(raw, t, x)), (t, n)
