"""The wheel carries the compiled loop; the sdist carries the Cython sources."""
import pathlib
import shutil
import signal
import socket
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


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A wheel built by pip from a clean source copy: (the copy, the wheel)."""
    tmp_path = tmp_path_factory.mktemp("build")
    source = _source_copy(tmp_path)
    # A module another Python built in this tree: it must stay out of this wheel.
    (source / "simpletcp" / "_loop.cpython-30-x86_64-linux-gnu.so").write_bytes(b"not ours")
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
         "--no-build-isolation", "-q", "-w", str(out)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = out.glob("simpletcp-*.whl")
    return source, wheel


def built_module(source):
    """The module the build left in the source tree (not the stray one)."""
    (module,) = (source / "simpletcp").glob(f"_loop.{sys.implementation.cache_tag}-*.so")
    return module


@pytest.mark.slow
def test_wheel_is_a_platform_wheel_holding_the_compiled_loop(built):
    source, wheel = built
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith(".so")] == [f"simpletcp/{built_module(source).name}"]
    assert "simpletcp/tcpserver.py" in names
    assert not any(n.startswith("src_pyx/") for n in names)


@pytest.mark.slow
def test_a_build_also_leaves_the_compiled_loop_in_the_source_tree(built):
    # So that python -m simpletcp, or a prompt, at a checkout's root (where the tree's
    # simpletcp/ shadows the installed one) imports the tree whole.
    source, _ = built
    imported = subprocess.run(
        [sys.executable, "-c", "import simpletcp._loop as m; print(m.__file__)"],
        cwd=source, capture_output=True, text=True, check=True,
    )
    assert imported.stdout.strip() == str(built_module(source))


@pytest.mark.slow
def test_a_server_running_from_the_tree_survives_a_rebuild(built):
    # The build replaces the tree's module with a new file: rewriting the one a running
    # server has mapped would crash it (pip install . again, from a second terminal).
    source, _ = built
    module = built_module(source)
    before = module.stat().st_ino
    server = subprocess.Popen([sys.executable, "-m", "simpletcp", "--port", "0"], cwd=source,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext"], cwd=source,
                       check=True, capture_output=True)
        assert built_module(source).stat().st_ino != before
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"still here")
            assert client.recv(100) == b"still here"
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, server.stderr.read()
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("command", [["-c", "import simpletcp"], ["-m", "simpletcp", "--help"]])
def test_a_source_tree_without_its_build_says_what_to_run(tmp_path, command):
    # A fresh clone: the package's .py files, setup.py and src_pyx/, nothing compiled.
    tree = tmp_path / "clone"
    shutil.copytree(ROOT / "simpletcp", tree / "simpletcp",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "src_pyx", tree / "src_pyx", ignore=shutil.ignore_patterns("*.c"))
    shutil.copy(ROOT / "setup.py", tree)
    result = subprocess.run([sys.executable, *command], cwd=tree, capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert "No module named" not in result.stderr.splitlines()[-1]
    message = result.stderr
    assert f"imported from its source tree, {tree / 'simpletcp'}" in message
    assert f"Run `pip install .` in {tree}" in message
    assert "run Python from another directory" in message


@pytest.mark.slow
def test_sdist_holds_the_cython_sources(tmp_path):
    source = _source_copy(tmp_path)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        check=True, cwd=source, capture_output=True,
    )
    (sdist,) = (tmp_path / "dist").glob("simpletcp-*.tar.gz")
    names = tarfile.open(sdist).getnames()
    for needed in ("src_pyx/loop.pyx", "src_pyx/loop.pxd", "src_pyx/serverloop.pyx",
                   "src_pyx/simpletcp/_loop.pxd", "src_pyx/includes/epoll.pxd",
                   "setup.py", "pyproject.toml", "simpletcp/tcpserver.py", "LICENSE"):
        assert any(n.endswith(needed) for n in names), needed
    assert not any(n.endswith(".so") for n in names)
