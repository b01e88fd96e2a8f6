"""Build script: cythonizes src_pyx/ into extension modules inside the simpletcp package.

Metadata lives in pyproject.toml; this file only describes the compiled part.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("src_pyx")


class build_ext_also_in_place(build_ext):
    """Build as usual, then also copy each compiled module into the source tree.

    From a checkout, `pip install . && python -m simpletcp` (or a Python prompt) at the
    checkout's root imports the tree's `simpletcp/`, which shadows the installed package:
    with its own freshly built `_loop` beside the .py files it imports whole, and
    consistently (both from this tree). From an unpacked sdist the copy is harmless, and
    an in-place build (`pip install -e .`, `build_ext --inplace`) already put it there.
    """

    def run(self):
        super().run()
        if self.inplace or self.dry_run:
            return
        for extension in self.extensions:
            built = self.get_ext_fullpath(extension.name)
            in_tree = os.path.join(HERE, self.get_ext_filename(extension.name))
            if os.path.isdir(os.path.dirname(in_tree)):
                # A new file renamed over the old, never the old one rewritten: a server
                # still running from the tree has it mapped, and would crash.
                staged = in_tree + ".new"
                self.copy_file(built, staged)
                os.replace(staged, in_tree)


extensions = [
    Extension(
        "simpletcp._loop",
        [os.path.join(SRC, "loop.pyx")],
        extra_compile_args=["-O2"],
    ),
]

setup(
    cmdclass={"build_ext": build_ext_also_in_place},
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
            # Nothing in the loop may be rebuilt from outside: an unpickled poller or
            # connection would own a descriptor it never opened.
            "auto_pickle": False,
            # No __test__ doctest dictionary in the module: it is not API.
            "autotestdict": False,
        },
        annotate=bool(os.environ.get("SIMPLETCP_ANNOTATE")),
    ),
)
