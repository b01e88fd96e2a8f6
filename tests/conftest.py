"""Shared test configuration."""
import shutil
import subprocess

import pytest

from support import BENCH


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path, monkeypatch):
    # Subprocesses (python -m simpletcp, python -c ...) put their working directory on
    # sys.path. From the repository root that would import the source tree, which has
    # no compiled loop, instead of the installed package the tests are meant to check.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def bench_programs(tmp_path_factory):
    """The benchmark suite's C programs (bench/), compiled once: name -> path. c_uring_echo
    is None where it does not compile (headers older than Linux 6.1)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not (BENCH / "loadgen.c").exists():
        pytest.skip("needs a C compiler and the source tree's bench/")
    build = tmp_path_factory.mktemp("bench-build")
    programs = {}
    for name, source, required in [("loadgen", BENCH / "loadgen.c", True),
                                   ("c_epoll_echo", BENCH / "servers" / "c_epoll_echo.c", True),
                                   ("c_uring_echo", BENCH / "servers" / "c_uring_echo.c", False)]:
        binary = build / name
        compiled = subprocess.run([compiler, "-O2", "-o", str(binary), str(source)],
                                  capture_output=True, text=True)
        assert compiled.returncode == 0 or not required, compiled.stderr
        programs[name] = binary if compiled.returncode == 0 else None
    return programs
