"""minillm's compiled kernels: quantized matrix products (``minillm_kernels.matmul``), MLA
attention (``minillm_kernels.attention``) and the small ops (``minillm_kernels.ops``).

The kernels are built once per ISA level (setup.py): scalar, avx2 and avx512; the avx512 build
also carries the AMX paths, switched on for the level "amx".  At import the best level the CPU
and the OS support is chosen (``cpu.supported_levels``); the environment variable
``MINILLM_ISA=scalar|avx2|avx512|amx`` forces a lower one.  ``matmul``, ``attention`` and ``ops``
are then that level's modules (also importable as ``minillm_kernels.matmul`` etc.), and
``LEVEL`` names it.  ``kernels(level)`` gives another supported level's modules (tests compare
the levels with each other).
"""
import importlib
import importlib.util
import os
import sys
import types
import warnings

from . import cpu

LEVELS = cpu.LEVELS
KERNEL_MODULES = ("matmul", "attention", "ops")


def supported_levels():
    """The levels this CPU can run and this install has built, lowest first."""
    return [lv for lv in cpu.supported_levels() if importlib.util.find_spec(f"{__name__}._{_build(lv)}.matmul")]


def _build(level):
    """the build (subpackage) a level runs on: AMX paths live in the avx512 build"""
    return "avx512" if level == "amx" else level


def kernels(level):
    """The kernel modules of ``level`` (a SimpleNamespace: level, matmul, attention, ops).

    "avx512" and "amx" share one build: asking for one switches that build's AMX paths on or off
    for every user of it (this process's default modules included, when they are that build)."""
    if level not in LEVELS:
        raise ValueError(f"unknown ISA level {level!r}: choose one of {', '.join(LEVELS)}")
    if level not in supported_levels():
        raise ValueError(f"ISA level {level!r} is not supported here (supported: {', '.join(supported_levels())})")
    mods = {m: importlib.import_module(f"{__name__}._{_build(level)}.{m}") for m in KERNEL_MODULES}
    if _build(level) == "avx512":
        mods["matmul"].set_amx(level == "amx")
        mods["attention"].set_amx(level == "amx")
    return types.SimpleNamespace(level=level, **mods)


def choose_level(levels, forced):
    """The level to run at: the best of ``levels`` (supported, lowest first), or ``forced`` (the value
    of MINILLM_ISA; "" for none) when it is one of them; an unsupported one warns and gives the best."""
    forced = forced.strip().lower()
    if not forced:
        return levels[-1]
    if forced not in LEVELS:
        raise ValueError(f"MINILLM_ISA={forced!r} is not an ISA level: choose one of {', '.join(LEVELS)}")
    if forced not in levels:
        warnings.warn(f"MINILLM_ISA={forced}: this CPU or install does not support it; using {levels[-1]}",
                      RuntimeWarning, stacklevel=2)
        return levels[-1]
    return forced


LEVEL = choose_level(supported_levels(), os.environ.get("MINILLM_ISA", ""))
_default = kernels(LEVEL)
matmul, attention, ops = _default.matmul, _default.attention, _default.ops
for _m in KERNEL_MODULES:
    sys.modules[f"{__name__}.{_m}"] = getattr(_default, _m)
del _m
