"""Build the one extension, fastln._cpu, with OpenMP where the compiler has it.

FASTLN_OPENMP=1 insists on OpenMP (the build fails without it), FASTLN_OPENMP=0 builds the serial
library; unset, OpenMP is probed and the build falls back to serial with a warning.
No flag here reads the build machine's CPU: the kernels pick their SIMD path at run time.
"""

import os
import shutil
import sys
import tempfile
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PKG = os.path.join("src", "fastln")

# (compile flags, link flags) per compiler family.
OPENMP_FLAGS = {
    "msvc": (["/openmp"], []),
    "unix": (["-fopenmp"], ["-fopenmp"]),
}
OPT_FLAGS = {
    "msvc": ["/O2"],
    "unix": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
}

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def compiler_family(compiler):
    return "msvc" if compiler.compiler_type == "msvc" else "unix"


def compiles_with_openmp(compiler, cflags, ldflags):
    """True if a tiny OpenMP program compiles and links with these flags."""
    tmp = tempfile.mkdtemp(prefix="fastln-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
        compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=ldflags)
        return True
    except Exception:  # any compiler or linker failure means "no OpenMP"
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        family = compiler_family(self.compiler)
        cflags, ldflags = OPENMP_FLAGS[family]
        wanted = os.environ.get("FASTLN_OPENMP", "").strip().lower()
        if wanted in ("0", "no", "off", "false"):
            use_openmp = False
        elif wanted in ("1", "yes", "on", "true"):
            use_openmp = True
            if not compiles_with_openmp(self.compiler, cflags, ldflags):
                sys.exit(f"FASTLN_OPENMP=1 but {self.compiler.compiler_type} cannot build OpenMP "
                         f"code with {cflags}")
        else:
            use_openmp = compiles_with_openmp(self.compiler, cflags, ldflags)
            if not use_openmp:
                warnings.warn("fastln: the compiler has no working OpenMP; building a serial "
                              "library (install libgomp/libomp, or set FASTLN_OPENMP=0 to silence "
                              "this)", stacklevel=1)
        for ext in self.extensions:
            ext.extra_compile_args += OPT_FLAGS[family]
            if use_openmp:
                ext.extra_compile_args += cflags
                ext.extra_link_args += ldflags
            ext.define_macros.append(("FASTLN_BUILD_FLAGS",
                                      '"' + " ".join(ext.extra_compile_args) + '"'))
        super().build_extensions()


extension = Extension(
    "fastln._cpu",
    sources=[os.path.join(PKG, "_cpu.pyx")],
    depends=[os.path.join(PKG, name)
             for name in ("_rows.h", "_rows_path.h", "_rows_impl.h", "_half_impl.h",
                          "_openmp.pxd")],
    include_dirs=[numpy.get_include(), PKG],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": 3},
    ),
    cmdclass={"build_ext": BuildExt},
)
