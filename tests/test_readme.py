"""README.md's commands, verbatim, in a fresh clone, as a newcomer runs them.

Opt-in (minutes: it builds simpletcp three times and runs the whole suite):
``pytest -m readme``; `.ci/run` runs it, and counts the README's ``pytest`` as its one
full run of the suite on the main Python. The tracked files of this work tree (what
``git ls-files`` lists, with their uncommitted edits) are copied to a scratch directory,
a fresh venv is made there (only what ``python -m venv`` gives it: pip), and each
```` ```sh```` block of README.md is run with bash, from the copy's root, in order, with
the venv active. A block must exit 0.

The rule for commands that serve until stopped: a block whose last line starts a server
(``python -m simpletcp``, the ``simpletcp`` command, ``python examples/*/server.py``;
not ``--help``/``--version``) is started in the background, must answer on its port
(the number after ``--port``, or after ``server.py``; else 5000) within the time the
block takes to build, and keeps serving while the next block runs (the README says
"from a second terminal"); then it gets Ctrl-C (SIGINT) and must exit 0.

A block that runs a third-party client the machine lacks (redis-cli, redis-benchmark,
wrk, curl, nc, socat: the protocol examples' clients, which `.ci/run` installs as root)
is left out with a warning naming it.

Last, the quick start (the README's first ```` ```python```` block) is run by ``python``
at the copy's root, where Python imports the checkout's ``simpletcp/``, not the
installed one: it too must answer on its port and stop on Ctrl-C.

The README's servers use port 5000: runs of this test on one machine take turns (a
lock file), and a port 5000 held by another program fails the test, saying so.
"""
import contextlib
import fcntl
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


#: A build from source (pip install .) on a busy 2-core machine takes about a minute.
BLOCK_TIMEOUT = 900.0
SERVER_START_TIMEOUT = 600.0
DEFAULT_PORT = 5000
SERVES = re.compile(
    r"(^|&&\s*|;\s*)(python3? -m simpletcp|simpletcp)\b(?!.*--(help|version))"
    r"|python3? \S*examples/\S+/server\.py"
)


#: Third-party programs README blocks use as clients.
CLIENTS = ("redis-cli", "redis-benchmark", "wrk", "curl", "nc", "socat")


def clients_missing(block):
    return [client for client in CLIENTS
            if re.search(rf"(^|[|&;]\s*){re.escape(client)}\b", block, re.MULTILINE)
            and shutil.which(client) is None]


def fenced_blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def last_command(block):
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return lines[-1]


def port_of(command):
    match = re.search(r"--port[ =](\d+)|server\.py (\d+)", command)
    return int(next(group for group in match.groups() if group)) if match else DEFAULT_PORT


@pytest.fixture
def clone(tmp_path):
    """The tracked files of the work tree, as they are now, in a fresh directory."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    copy = tmp_path / "simpletcp"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # deleted in the work tree but not yet in git: gone
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture
def shell_environment(tmp_path):
    """The environment of a terminal with a fresh venv activated."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV", "COV_"))}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def port_5000_to_ourselves():
    """Take turns with other runs of this test on this machine; fail if another program
    holds the README's port."""
    lock_path = pathlib.Path(tempfile.gettempdir()) / f"simpletcp-readme-{DEFAULT_PORT}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", DEFAULT_PORT))
            except OSError as exc:
                pytest.fail(f"port {DEFAULT_PORT}, which the README's commands use, is "
                            f"held by another program: {exc}")
        yield


class Shell:
    """Runs README blocks in the clone, as a newcomer's terminals would."""

    def __init__(self, clone, env, logs):
        self.clone = clone
        self.env = env
        self.logs = logs
        self.count = 0

    def _log(self):
        self.count += 1
        return self.logs / f"block-{self.count}.log"

    def run(self, block):
        log = self._log()
        with open(log, "w") as output:
            result = subprocess.run(["bash", "-e", "-c", block], cwd=self.clone, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, f"{block!r} exited {result.returncode}:\n{tail(log)}"

    @contextlib.contextmanager
    def serving(self, command, port):
        """Start a command that serves until stopped; it must answer on `port`."""
        log = self._log()
        with open(log, "w") as output:
            server = subprocess.Popen(command, cwd=self.clone, env=self.env,
                                      stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_it_answers(server, port, log, tls="--certfile" in command[-1])
            yield
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
            status = server.wait(timeout=60)
            assert status == 0, f"{command!r} exited {status} on Ctrl-C:\n{tail(log)}"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def tail(log, lines=40):
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until_it_answers(server, port, log, tls=False):
    """Until the server answers "ping" on ``port``: over TLS (any certificate) if ``tls``,
    as a server started with --certfile only speaks TLS."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"exited {server.returncode} before answering on port {port}:\n"
                        f"{tail(log)}")
        try:
            with contextlib.ExitStack() as stack:
                client = stack.enter_context(
                    socket.create_connection(("127.0.0.1", port), timeout=10))
                if tls:
                    client = stack.enter_context(context.wrap_socket(client))
                client.sendall(b"ping\n")
                if client.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"nothing answered on port {port} within {SERVER_START_TIMEOUT:.0f} s:\n"
                f"{tail(log)}")


def test_rules_recognise_the_readmes_clients():
    assert clients_missing("printf 'x' | nc -N localhost 5000") == (
        [] if shutil.which("nc") else ["nc"])
    assert clients_missing("echo redis-cli is mentioned, not run") == []


def test_rules_recognise_the_readmes_servers():
    # The rule itself, on the README as it is: which blocks serve, and where.
    serving = [(last_command(block), port_of(last_command(block)))
               for block in fenced_blocks(README.read_text(), "sh")
               if SERVES.search(last_command(block))]
    assert serving, "the README has no server command?"
    for command, port in serving:
        assert port == DEFAULT_PORT, command
    assert not SERVES.search("python -m simpletcp --help")
    assert SERVES.search("pip install . && python -m simpletcp --port 5000")


def test_every_shell_block_of_the_readme_is_one_the_test_runs():
    # A block the fresh-clone test does not recognise as sh would never be run: a fence
    # spelled ```bash, ```console or ```shell, one indented (in a list), or one left open.
    text = README.read_text()
    fences = re.findall(r"^([ \t]*)```(.*)$", text, flags=re.MULTILINE)
    assert all(indent == "" for indent, _ in fences), "an indented fence is not run"
    openings = [language.strip() for language in [lang for _, lang in fences][::2]]
    assert set(openings) <= {"sh", "python", "text"}, openings
    assert len(fences) % 2 == 0 and all(lang == "" for _, lang in fences[1::2]), fences
    assert len(fenced_blocks(text, "sh")) == openings.count("sh")


@pytest.mark.readme
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git work tree")
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_readme_commands_work_verbatim_in_a_fresh_clone(clone, shell_environment, tmp_path,
                                                        port_5000_to_ourselves):
    text = (clone / "README.md").read_text()
    blocks = fenced_blocks(text, "sh")
    logs = tmp_path / "logs"
    logs.mkdir()
    shell = Shell(clone, shell_environment, logs)
    with contextlib.ExitStack() as background:
        for block in blocks:
            command = last_command(block)
            if SERVES.search(command):
                background.close()  # a server still running from before stops first
                background.enter_context(shell.serving(["bash", "-e", "-c", block],
                                                       port_of(command)))
                continue
            missing = clients_missing(block)
            if missing:
                # The README's third-party clients (the protocol examples'): .ci/run
                # installs them as root; elsewhere their block is left out, saying so.
                warnings.warn(f"README block not run, needs {', '.join(missing)}: {block!r}")
            else:
                shell.run(block)
            background.close()  # its "second terminal" is done
    # The quick start, as typed into python at the checkout's root.
    quick_start = fenced_blocks(text, "python")[0]
    with shell.serving([str(pathlib.Path(shell_environment["VIRTUAL_ENV"], "bin", "python")),
                        "-c", quick_start], DEFAULT_PORT):
        pass
