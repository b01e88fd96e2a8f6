"""The package and the examples type-check with mypy --strict (py.typed, _loop.pyi)."""
import os
import pathlib
import subprocess
import sys

import pytest

import simpletcp

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(simpletcp.__file__).parent

pytestmark = pytest.mark.timeout(300)
mypy = pytest.importorskip("mypy", reason="mypy is in the test extra")


def mypy_environment():
    env = dict(os.environ)
    if "site-packages" not in PACKAGE.parts:
        # An editable install is found through an import hook mypy cannot follow.
        env["MYPYPATH"] = str(PACKAGE.parent)
    return env


def run_mypy(*paths):
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, paths)],
        capture_output=True, text=True, env=mypy_environment(),
    )


def test_the_stub_matches_the_compiled_module(tmp_path):
    # Every name, signature and class of simpletcp._loop (and of the .py modules) as
    # the stub says, internal classes included; always-raising methods are NoReturn.
    # The allowlist names what the stub declares for type checkers only.
    # As under --strict, what a module imports is not its API: without this, stubtest
    # on Python 3.9 takes `from typing import Any` in a .py module for a class that
    # typing.Any is not there.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nimplicit_reexport = False\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config),
         "--allowlist", str(pathlib.Path(__file__).with_name("stubtest_allowlist.txt")),
         "simpletcp"],
        capture_output=True, text=True, env=mypy_environment(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_package_ships_its_types():
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "_loop.pyi").exists()


def test_package_passes_mypy_strict():
    # By name, as a user's mypy finds it: a path inside site-packages would make mypy
    # take site-packages itself for a source root.
    result = run_mypy("-p", "simpletcp")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not (ROOT / "examples").is_dir(), reason="needs the source tree's examples/")
@pytest.mark.parametrize("example", sorted(p.relative_to(ROOT / "examples").as_posix()
                                           for p in (ROOT / "examples").glob("*/*.py")))
def test_example_passes_mypy_strict(example):
    # One file per run: every example has a server.py, and mypy wants module names unique.
    result = run_mypy(ROOT / "examples" / example)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_user_callback_is_checked_against_the_stub(tmp_path):
    user_code = tmp_path / "user.py"
    user_code.write_text(
        "from simpletcp.tcpserver import ConnectionQueue, TCPServer\n"
        "def reply(queue: ConnectionQueue, data: bytes) -> None:\n"
        "    queue.put(data.upper())\n"
        "    queue.put('text')  # wrong: str is not bytes-like\n"
        "TCPServer('localhost', 0, reply).stop()\n"
    )
    result = run_mypy(user_code)
    assert result.returncode == 1
    assert 'Argument 1 to "put" of "ConnectionQueue" has incompatible type "str"' in result.stdout


def test_events_state_and_broadcast_are_typed(tmp_path):
    user_code = tmp_path / "events_user.py"
    user_code.write_text(
        "from typing import List, Optional\n"
        "from simpletcp import CloseReason\n"
        "from simpletcp.tcpserver import ConnectionQueue, TCPServer\n"
        "def greet(queue: ConnectionQueue) -> None:\n"
        "    queue.nickname = 'guest'  # per-connection state: any attribute\n"
        "def farewell(ip: str, queue: ConnectionQueue) -> None:\n"
        "    reason: Optional[CloseReason] = queue.close_reason\n"
        "    print(ip, queue.nickname, reason)\n"
        "def read(queue: ConnectionQueue, data: bytes) -> None:\n"
        "    left: List[ConnectionQueue] = server.broadcast(data, exclude=queue)\n"
        "    queue.put(b'%d' % len(server.connections()) + b'%d' % len(left))\n"
        "    server.broadcast('text')  # wrong: str is not bytes-like\n"
        "server = TCPServer('localhost', 0, read, on_connect=greet, on_disconnect=farewell)\n"
        "server.stop()\n"
    )
    result = run_mypy(user_code)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert 'Argument 1 to "broadcast" of "TCPServer" has incompatible type "str"' in errors[0]
