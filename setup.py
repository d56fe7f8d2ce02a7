"""Build the Cython extensions: every ``shmrcu/**/*.pyx`` becomes a module.

Globbing (instead of a hand-written list) lets a new Cython module join the
package without touching this file.
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
# the folders that hold C headers (`cdef extern from "_layout.h"` finds them by name)
INCLUDE_DIRS = sorted({str(h.parent) for h in Path("shmrcu").rglob("*.h")})
extensions = [
    Extension(
        str(p.with_suffix("")).replace("/", "."),
        [str(p)],
        include_dirs=INCLUDE_DIRS,
        extra_compile_args=["-O3", "-std=gnu11", "-Wno-unused-function"],
        define_macros=[("_GNU_SOURCE", "1")],
    )
    for p in sorted(Path("shmrcu").rglob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
