"""Build the Cython kernel layer (minillm_kernels).

Every ``minillm_kernels/*.pyx`` kernel module (matmul, attention, ops) is built once per ISA
level into a subpackage of its own, from the same sources with different compiler flags:

* ``minillm_kernels/_scalar``: no SIMD flags (the scalar C bodies; any x86-64 or other CPU),
* ``minillm_kernels/_avx2``: AVX2, FMA, F16C, BMI2 (the AVX2 bodies),
* ``minillm_kernels/_avx512``: the AVX2 flags plus AVX-512 F/BW/DQ/VL/VNNI/BF16 and AMX
  (int8/bf16 tiles): the AVX-512 bodies, and the AMX ones, used only where the CPU and the
  OS allow them (chosen at run time).

``minillm_kernels/__init__.py`` imports the best level the CPU supports (cpuid and xgetbv,
``minillm_kernels/cpu.pyx``, built without SIMD flags), so one build runs on any of them.
On a CPU other than x86-64 only the scalar level is built.  Code is tuned (``-mtune``) for
the build machine, which changes speed, never results or the instructions used.
"""
import glob
import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

BASE_ARGS = ["-O3", "-fopenmp", "-std=gnu11", "-Wno-unused-function"]
AVX2 = ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt", "-mpopcnt", "-mmovbe"]
AVX512 = AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd", "-mavx512vnni",
                 "-mavx512bf16", "-mamx-tile", "-mamx-int8", "-mamx-bf16"]
x86 = platform.machine().lower() in ("x86_64", "amd64")
LEVELS = {"scalar": []}
if x86:
    LEVELS.update(avx2=AVX2 + ["-mtune=native"], avx512=AVX512 + ["-mtune=native"])

# each kernel module's C sources (minillm_kernels/csrc)
KERNEL_MODULES = {
    "matmul": ["quants_scalar.c", "quants_avx2.c", "type_table.c", "matmul_driver.c", "kquants_link.c",
               "membench.c", "workspace.c", "quants_avx512.c", "amx_gemm.c"],
    "attention": ["attention.c", "attn_store.c", "attn_bench.c", "amx_attention.c", "workspace.c"],
    "ops": [],
}
CSRC = os.path.join("minillm_kernels", "csrc")
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]


def level_sources(level, files):
    """one C file per source and level that includes the source: setuptools names an object file
    after its source's path, so that each level's objects (other flags) get paths of their own"""
    out = []
    for f in files:
        path = os.path.join("build", "csrc", level, f)
        text = f'#include "{os.path.abspath(os.path.join(CSRC, f))}"\n'
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as fh:
                fh.write(text)
        out.append(path)
    return out


def extension(name, c_file, flags, level, sources=()):
    return Extension(
        name,
        [c_file, *sources],
        include_dirs=[np.get_include(), CSRC],
        # every C file and header: some sources are pulled in by others (kquants_link.c),
        # so an edit to any of them must rebuild the module
        depends=sorted(glob.glob(os.path.join(CSRC, "*"))),
        define_macros=macros + [("MINILLM_ISA_LEVEL", f'"{level}"')],
        extra_compile_args=BASE_ARGS + flags,
        extra_link_args=["-fopenmp"],
    )


def cython_c(name, pyx, level):
    """the C file Cython generates for module `name` from pyx, in a folder of the level's own (so
    that every module carries its own qualified name, minillm_kernels._avx2.matmul); the extension
    is then built from it here: cythonize merges the options of extensions that share a .pyx"""
    (ext,) = cythonize([Extension(name, [pyx], include_dirs=[np.get_include()])], language_level=3,
                       compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
                       build_dir=os.path.join("build", "cython", level))
    return ext.sources[0]


ext_modules = [extension("minillm_kernels.cpu", cython_c("minillm_kernels.cpu", "minillm_kernels/cpu.pyx", "cpu"),
                         [], "scalar")]
for level, flags in LEVELS.items():
    for m, files in KERNEL_MODULES.items():
        name = f"minillm_kernels._{level}.{m}"
        ext_modules.append(extension(name, cython_c(name, f"minillm_kernels/{m}.pyx", level), flags, level,
                                     level_sources(level, files)))

setup(ext_modules=ext_modules)
