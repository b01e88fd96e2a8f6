"""python -m simpletcp: the echo server, a callback by import path, signals, --help."""
import contextlib
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import simpletcp

from support import TIMEOUT, ServingCLI, recv_exactly, recv_until_eof, reset_at_once, wait_for

pytestmark = pytest.mark.timeout(60)


MODULE = [sys.executable, "-m", "simpletcp"]
#: The `simpletcp` console script pip installs beside this interpreter.
SCRIPT = pathlib.Path(sys.executable).parent / "simpletcp"


@contextlib.contextmanager
def running(*args, cwd=None, command=MODULE):
    """The CLI serving on a free port: (child, port); killed on the way out whatever happens."""
    child = subprocess.Popen(
        [*command, "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )
    try:
        line = child.stdout.readline()
        if not line.startswith("simpletcp: listening on "):
            child.kill()
            raise AssertionError(f"no listening line: {line!r} {child.stderr.read()}")
        yield child, int(line.rsplit(":", 1)[1])
    finally:
        child.kill()
        child.wait()


def clean_exit(child):
    """Wait for the child (already signalled) to exit; it must exit 0. Its stderr."""
    _, err = child.communicate(timeout=10)
    assert child.returncode == 0, err
    return err


def ask_then_stop(child, port, request, reply):
    """One request and its reply, then SIGTERM: the server must exit cleanly."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        assert recv_exactly(client, len(reply)) == reply
    child.send_signal(signal.SIGTERM)
    clean_exit(child)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_echo_server_and_graceful_signal(signum):
    with running("--log-level", "warning") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"cli echo")
            assert recv_exactly(client, 8) == b"cli echo"
            child.send_signal(signum)
            assert recv_until_eof(client) == b""
        err = clean_exit(child)
    assert "Traceback" not in err


def test_serves_a_callback_by_import_path(tmp_path):
    (tmp_path / "shouting.py").write_text(textwrap.dedent(
        """
        class Handlers:
            @staticmethod
            def upper(ip, queue, data):
                queue.put(data.upper())
        """
    ))
    with running("shouting:Handlers.upper", cwd=tmp_path) as (child, port):
        ask_then_stop(child, port, b"quiet", b"QUIET")


@pytest.mark.parametrize("target, message", [
    ("no_such_module_here:cb", "cannot import module"),
    ("json:no_such_attribute", "has no attribute"),
    ("json:__name__", "not callable"),
    ("json", "MODULE:CALLABLE"),
    (".:cb", "MODULE:CALLABLE"),  # import_module(".") raised TypeError: a traceback
    ("json:loads.", "MODULE:CALLABLE"),
])
def test_bad_target_exits_2_with_a_message(target, message):
    result = subprocess.run([sys.executable, "-m", "simpletcp", target],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--recv-bytes", "99999999999999999999"], "argument --recv-bytes: recv_bytes must be"),
    (["--backlog", "9999999999"], "argument --backlog: maximum_connections must be"),
    (["--port", "65536"], "argument --port: port must be"),
    (["--grace-period", "nan"], "argument --grace-period: grace_period must be"),
    (["--idle-timeout", "inf"], "argument --idle-timeout: idle_timeout must be"),
    (["--high-water", "10", "--low-water", "11"], "argument --low-water: low_water must be"),
    (["--connection-limit", "0"], "argument --connection-limit: connection_limit must be"),
    (["--mode", "a" * 300], "argument --mode: mode is 300 characters long"),
])
def test_out_of_range_flags_are_usage_errors(flags, message):
    # These ended in an OverflowError traceback before.
    result = subprocess.run([sys.executable, "-m", "simpletcp", *flags],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr
    assert message in result.stderr


def test_port_in_use_exits_1():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "simpletcp", "--port", str(holder.getsockname()[1])],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert "cannot bind" in result.stderr


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--mode", "--port", "--recv-bytes", "--backlog", "--backend",
                 "--grace-period", "--high-water", "--low-water", "--connection-limit",
                 "--idle-timeout", "--log-level", "MODULE:CALLABLE", "--framing",
                 "--max-length", "--keyfile-password", "--ssl-shutdown-timeout"):
        assert flag in result.stdout


@pytest.mark.parametrize("backend", ["epoll", "poll"])
def test_a_signal_lets_a_pending_reply_out_first(tmp_path, backend):
    (tmp_path / "slow.py").write_text(textwrap.dedent(
        """
        import pathlib, threading, time

        def reply_later(queue, data):
            def worker():
                time.sleep(0.5)
                queue.put(data[::-1])
            threading.Thread(target=worker).start()
            pathlib.Path("received").touch()
        """
    ))
    with running("slow:reply_later", "--backend", backend, cwd=tmp_path) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"pending")
            wait_for(lambda: (tmp_path / "received").exists())
            child.send_signal(signal.SIGTERM)  # the reply is still half a second away
            assert recv_until_eof(client) == b"gnidnep"
        err = clean_exit(child)
    assert f"listening on 127.0.0.1:{port} ({backend})" in err


def test_flags_reach_the_server(tmp_path):
    (tmp_path / "sizes.py").write_text(textwrap.dedent(
        """
        def size(queue, data):
            queue.put(b"%d," % len(data))
        """
    ))
    flags = ("--recv-bytes", "3", "--connection-limit", "1", "--idle-timeout", "0.5",
             "--log-level", "info")
    with running("sizes:size", *flags, cwd=tmp_path) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"abcdefg")
            assert recv_exactly(client, 6) == b"3,3,1,"  # --recv-bytes 3
            assert reset_at_once(port)  # --connection-limit 1
            started = time.monotonic()
            assert recv_until_eof(client) == b""  # --idle-timeout 0.5
            assert time.monotonic() - started < 5
        child.send_signal(signal.SIGINT)
        err = clean_exit(child)
    assert "listening on 127.0.0.1:%d" % port in err  # --log-level info
    assert "connection limit (1) reached" in err


@pytest.mark.skipif(not SCRIPT.exists(), reason="simpletcp is not installed in this environment")
def test_the_console_script_is_the_same_command():
    result = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert simpletcp.__version__ in result.stdout
    with running(command=[str(SCRIPT)]) as (child, port):
        ask_then_stop(child, port, b"script", b"script")


EVENTS_APP = '''
def greet(queue):
    queue.put(b"welcome\\n")

def farewell(ip, queue):
    print("left", ip, queue.close_reason.name, flush=True)
'''


def test_the_events_are_served_from_the_command_line(tmp_path):
    (tmp_path / "events_app.py").write_text(EVENTS_APP)  # the working directory: importable
    with ServingCLI("--port", "0", "--on-connect", "events_app:greet",
                    "--on-disconnect", "events_app:farewell") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            assert recv_exactly(client, 8) == b"welcome\n"
            client.sendall(b"echo")
            assert recv_exactly(client, 4) == b"echo"
        assert server.child.stdout.readline() == "left 127.0.0.1 PEER_CLOSED\n"


@pytest.mark.parametrize("flag", ["--on-connect", "--on-disconnect"])
def test_a_bad_event_target_is_a_usage_error_naming_its_flag(flag):
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--port", "0", flag,
                             "no_such_module_xyz:f"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    assert f"argument {flag}: " in result.stderr
    assert "cannot import module 'no_such_module_xyz'" in result.stderr


FRAMED_APP = '''
from simpletcp.framing import Framer


def shout(queue, message):
    return message.upper() + b"\\n"


def sizes(queue, message):
    return b"%d," % len(message)


class Bang(Framer):
    """Messages that end with "!" (kept)."""

    def frame(self, data, start):
        end = data.find(b"!", start)
        return None if end < 0 else end + 1 - start


def bang_framer():
    return Bang(max_length=100)


FRAMED = "not a framer"
NOTHING = None


def no_framer():
    return None
'''


@pytest.mark.parametrize("framing, sent, replies", [
    # However the bytes arrive, the callback gets whole messages.
    (["lines"], [b"hel", b"lo\nwor", b"ld\n"], b"HELLO\nWORLD\n"),
    (["length-prefixed"], [b"\x00\x00", b"\x00\x03abc\x00\x00\x00\x01", b"d"], b"ABC\nD\n"),
    (["fixed:3"], [b"ab", b"cdefg", b"hi"], b"ABC\nDEF\nGHI\n"),
    (["framed_app:Bang"], [b"one!tw", b"o!"], b"ONE!\nTWO!\n"),  # a class: made once
    (["framed_app:bang_framer"], [b"x!", b"y!"], b"X!\nY!\n"),  # a factory function
])
def test_framing_from_the_command_line(tmp_path, framing, sent, replies):
    (tmp_path / "framed_app.py").write_text(FRAMED_APP)
    with ServingCLI("framed_app:shout", "--port", "0", "--framing", *framing,
                    cwd=tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            for piece in sent:
                client.sendall(piece)
                time.sleep(0.05)  # separate reads (a message cut anywhere is whole anyway)
            assert recv_exactly(client, len(replies)) == replies
        assert server.stop() == 0


@pytest.mark.parametrize("framing, sent", [
    ("lines", [b"hel", b"lo\nwor", b"ld\n"]),
    ("length-prefixed", [b"\x00\x00", b"\x00\x03abc\x00\x00\x00\x01", b"d"]),
    ("fixed:3", [b"ab", b"cdefg", b"hi"]),
])
def test_the_built_in_echo_sends_messages_back_framed_as_they_came(framing, sent):
    # Lines() and LengthPrefixed() hand the callback the message alone: an echo of that
    # ran a client's lines together ("helloworld").
    with ServingCLI("--port", "0", "--framing", framing) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            for piece in sent:
                client.sendall(piece)
            assert recv_exactly(client, len(b"".join(sent))) == b"".join(sent)
        assert server.stop() == 0


@pytest.mark.parametrize("framing", ["lines", "length-prefixed"])
def test_max_length_bounds_a_message_from_the_command_line(tmp_path, framing):
    (tmp_path / "framed_app.py").write_text(FRAMED_APP)
    message = {"lines": lambda size: b"x" * size + b"\n",
               "length-prefixed": lambda size: size.to_bytes(4, "big") + b"x" * size}[framing]
    with ServingCLI("framed_app:sizes", "--port", "0", "--framing", framing,
                    "--max-length", "10", cwd=tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            client.sendall(message(10))
            assert recv_exactly(client, 3) == b"10,"
            client.sendall(message(11))  # one byte too long: the connection is closed
            assert recv_until_eof(client) == b""
        server.wait_for_log("closing connection")
        assert server.stop() == 0


@pytest.mark.parametrize("flags, message", [
    (["--framing", "fixed:"], "argument --framing: framing fixed:SIZE needs SIZE in bytes"),
    (["--framing", "fixed:0"], "argument --framing: framing fixed:0: size must be"),
    (["--framing", "words"], "argument --framing: framing must be lines, length-prefixed, "
                             "fixed:SIZE or MODULE:ATTRIBUTE"),
    (["--framing", "no_such_module_xyz:F"], "cannot import module 'no_such_module_xyz'"),
    (["--framing", "framed_app:shout"], "argument --framing: framing framed_app:shout is not "
                                        "a framer, nor a class or function that makes one"),
    (["--framing", "framed_app:FRAMED"], "argument --framing: framing must be None or a "
                                         "framer"),
    # None is TCPServer's "no framing": served, the callback would get bytes unframed.
    (["--framing", "framed_app:no_framer"], "argument --framing: framing "
                                            "framed_app:no_framer gave None, not a framer"),
    (["--framing", "framed_app:NOTHING"], "argument --framing: framing framed_app:NOTHING "
                                          "gave None, not a framer"),
    (["--framing", "lines", "--max-length", "0"], "argument --max-length: max_length must be"),
    (["--framing", "fixed:4", "--max-length", "10"],
     "argument --max-length: max_length applies to --framing lines and length-prefixed"),
    (["--max-length", "10"], "argument --max-length: max_length needs --framing"),
])
def test_framing_mistakes_are_usage_errors_naming_the_flag(tmp_path, flags, message):
    (tmp_path / "framed_app.py").write_text(FRAMED_APP)
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--port", "0", *flags],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
