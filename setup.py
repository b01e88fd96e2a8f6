"""Build script: cythonizes src_pyx/ into extension modules inside the simpletcp package.

Metadata lives in pyproject.toml; this file only describes the compiled part.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("src_pyx")

extensions = [
    Extension(
        "simpletcp._loop",
        [os.path.join(SRC, "loop.pyx")],
        extra_compile_args=["-O2"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[SRC],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
        annotate=bool(os.environ.get("SIMPLETCP_ANNOTATE")),
    ),
)
