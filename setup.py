"""Build the Cython kernel layer (minillm_kernels).

Every ``minillm_kernels/*.pyx`` becomes one extension module, linked with all
``minillm_kernels/csrc/*.c`` files it names in a ``# distutils: sources`` line
or, by default, with none.  Flags: -O3, OpenMP, and the host's SIMD
(``-march=native``, without AVX-512: the kernels are written for AVX2 machines, and
with AVX-512's extra registers enabled GCC 12 adds a register move per accumulator
per iteration to their inner loops).  ``MINILLM_PORTABLE=1`` builds without ``-march=native``
(the kernels then take their scalar C paths); ``MINILLM_SCALAR=1`` forces the
scalar paths even on a native build (for testing them).
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

portable = os.environ.get("MINILLM_PORTABLE", "0") == "1"
scalar = os.environ.get("MINILLM_SCALAR", "0") == "1"

compile_args = ["-O3", "-fopenmp", "-std=gnu11", "-Wno-unused-function"]
if not portable:
    compile_args += ["-march=native", "-mtune=native", "-mno-avx512f"]
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if scalar or portable:
    macros.append(("MINILLM_FORCE_SCALAR", "1"))

extensions = []
for pyx in sorted(glob.glob("minillm_kernels/*.pyx")):
    name = os.path.splitext(pyx)[0].replace(os.sep, ".")
    extensions.append(
        Extension(
            name,
            [pyx],
            include_dirs=[np.get_include(), "minillm_kernels/csrc"],
            # every C file and header: some sources are pulled in by others (kquants_link.c),
            # so an edit to any of them must rebuild the module
            depends=sorted(glob.glob("minillm_kernels/csrc/*")),
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=["-fopenmp"],
        )
    )

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
