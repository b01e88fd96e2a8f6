"""The wheel carries the compiled loop; the sdist carries the Cython sources."""
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree"),
]


def _source_copy(tmp_path):
    # Build from a clean copy so the work tree's build/ and in-place .so files don't leak in.
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT, copy,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "*.so", ".venv*",
                                      "__pycache__", ".pytest_cache", "loop.c"),
    )
    return copy


def test_wheel_is_a_platform_wheel_holding_the_compiled_loop(tmp_path):
    source = _source_copy(tmp_path)
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
         "--no-build-isolation", "-q", "-w", str(out)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = out.glob("simpletcp-*.whl")
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("simpletcp/_loop.") and n.endswith(".so") for n in names), names
    assert "simpletcp/tcpserver.py" in names
    assert not any(n.startswith("src_pyx/") for n in names)


def test_sdist_holds_the_cython_sources(tmp_path):
    source = _source_copy(tmp_path)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        check=True, cwd=source, capture_output=True,
    )
    (sdist,) = (tmp_path / "dist").glob("simpletcp-*.tar.gz")
    names = tarfile.open(sdist).getnames()
    for needed in ("src_pyx/loop.pyx", "src_pyx/serverloop.pxi", "src_pyx/includes/epoll.pxd",
                   "setup.py", "pyproject.toml", "simpletcp/tcpserver.py", "LICENSE"):
        assert any(n.endswith(needed) for n in names), needed
    assert not any(n.endswith(".so") for n in names)
