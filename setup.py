"""Build of the native engine: Cython modules over liburing and a crc32c kernel."""

from Cython.Build import cythonize
from setuptools import Extension, setup

COMMON = {
    "extra_compile_args": ["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function"],
    "include_dirs": ["shoal/engine/src"],
}

extensions = [
    Extension(
        "shoal.engine._crc",
        sources=["shoal/engine/_crc.pyx", "shoal/engine/src/crc32c.c"],
        **COMMON,
    ),
    Extension(
        "shoal.engine._batch",
        sources=[
            "shoal/engine/_batch.pyx",
            "shoal/engine/src/crc32c.c",
            "shoal/engine/src/blake2b.c",
        ],
        **COMMON,
    ),
    Extension(
        "shoal.engine._slots",
        sources=[
            "shoal/engine/_slots.pyx",
            "shoal/engine/src/crc32c.c",
            "shoal/engine/src/blake2b.c",
        ],
        **COMMON,
    ),
    Extension(
        "shoal.engine._fs",
        sources=["shoal/engine/_fs.pyx", "shoal/engine/src/beneath.c"],
        **COMMON,
    ),
    Extension(
        "shoal.engine._uring",
        sources=[
            "shoal/engine/_uring.pyx",
            "shoal/engine/src/uring_engine.c",
            "shoal/engine/src/crc32c.c",
        ],
        libraries=["uring"],
        **COMMON,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
