"""Where a server listens besides a port it binds itself: a socket the caller brings
(``sock=``), one systemd passes (socket activation, ``--fd``), a Unix domain socket
(``"unix:/path"``), and a port shared with other processes (``reuse_port=True``)."""
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys

import pytest

from simpletcp.clientsocket import ClientSocket
from simpletcp.tcpserver import TCPServer
from support import TIMEOUT, ServingCLI, recv_exactly, recv_until_eof, wait_for

pytestmark = pytest.mark.timeout(60)


def echo(queue, data):
    queue.put(data)


def listening_tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def exchange(address, data=b"ping", family=socket.AF_INET) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address)
        client.sendall(data)
        return recv_exactly(client, len(data))


# ---- sock= ---------------------------------------------------------------------------

def test_a_socket_the_caller_bound_is_served(serve):
    sock = listening_tcp_socket()
    sock.setblocking(True)  # the server makes it non-blocking: accept() must never block
    port = sock.getsockname()[1]
    server = serve(echo, mode=None, sock=sock)
    assert (server.ip, server.port) == ("127.0.0.1", port)
    assert exchange(("127.0.0.1", port)) == b"ping"
    assert not sock.getblocking()


def test_the_server_owns_the_socket_it_was_given_and_closes_it_on_stop(backend):
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    server = TCPServer(sock=sock, read_callback=echo, backend=backend).start()
    assert server.stop(timeout=TIMEOUT)
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def test_a_duplicate_keeps_the_port_listening_for_a_successor(backend):
    """A rolling restart in one process: the old server gets a dup(), stops, and the
    clients that connect meanwhile wait in the backlog for the new server."""
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    old = TCPServer(sock=sock.dup(), read_callback=echo, backend=backend).start()
    assert exchange(("127.0.0.1", port)) == b"ping"
    assert old.stop(timeout=TIMEOUT)
    waiting = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)  # not refused
    waiting.sendall(b"meanwhile")
    with TCPServer(sock=sock, read_callback=echo, backend=backend).start():
        assert recv_exactly(waiting, 9) == b"meanwhile"
    waiting.close()


def test_a_unix_socket_the_caller_bound_is_served(serve, tmp_path):
    path = str(tmp_path / "own.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    server = serve(echo, mode=None, sock=sock)
    assert (server.ip, server.port) == (path, 0)
    assert exchange(path, family=socket.AF_UNIX) == b"ping"


@pytest.mark.parametrize("bad, error, words", [
    ("not a socket", TypeError, "sock must be a listening socket.socket"),
    (3, TypeError, "sock must be a listening socket.socket"),
])
def test_sock_of_the_wrong_type_is_refused(bad, error, words):
    with pytest.raises(error, match=words):
        TCPServer(sock=bad, read_callback=echo)


def test_an_ssl_socket_is_refused_not_served_in_plaintext():
    """The loop reads and writes the descriptor itself: an ssl.SSLSocket's TLS would be
    skipped, and its clients answered in plaintext."""
    sock = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(listening_tcp_socket(),
                                                               server_side=True)
    try:
        with pytest.raises(TypeError, match="sock must be a plain socket.socket, got an "
                                            "ssl.SSLSocket"):
            TCPServer(sock=sock, read_callback=echo)
        assert sock.fileno() >= 0  # left as it was
    finally:
        sock.close()


def test_sock_that_is_not_listening_or_not_a_stream_or_closed_is_refused():
    unlistening = socket.socket()
    unlistening.bind(("127.0.0.1", 0))
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed = socket.socket()
    closed.close()
    try:
        with pytest.raises(ValueError, match="sock must be listening"):
            TCPServer(sock=unlistening, read_callback=echo)
        with pytest.raises(ValueError, match="sock must be a SOCK_STREAM"):
            TCPServer(sock=datagram, read_callback=echo)
        with pytest.raises(ValueError, match="sock is closed"):
            TCPServer(sock=closed, read_callback=echo)
    finally:
        unlistening.close()
        datagram.close()


def test_sock_with_mode_or_port_is_refused_and_left_open():
    sock = listening_tcp_socket()
    try:
        with pytest.raises(ValueError, match="mode and port, or sock, not both"):
            TCPServer("localhost", 0, echo, sock=sock)
        assert sock.fileno() >= 0
    finally:
        sock.close()


def test_missing_arguments_are_named():
    with pytest.raises(TypeError, match="read_callback is required"):
        TCPServer("localhost", 0)
    with pytest.raises(TypeError, match="mode must be"):
        TCPServer(None, 0, echo)
    with pytest.raises(TypeError, match="port is required"):
        TCPServer("localhost", None, echo)


# ---- systemd socket activation and --fd ----------------------------------------------------

# What systemd does between fork() and exec() for a socket-activated service.
SYSTEMD_EXEC = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)  # the first passed descriptor is 3 (SD_LISTEN_FDS_START)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
os.execv(sys.executable, [sys.executable, "-m", "simpletcp", *sys.argv[2:]])
"""


def spawn_as_systemd_does(sock: socket.socket, *arguments: str) -> subprocess.Popen:
    """Start ``python -m simpletcp ARGUMENTS`` as systemd starts a socket-activated
    service: the socket on descriptor 3, LISTEN_FDS=1 and LISTEN_PID set to the pid of
    the process that serves."""
    return subprocess.Popen([sys.executable, "-c", SYSTEMD_EXEC, str(sock.fileno()), *arguments],
                            pass_fds=(sock.fileno(),), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_systemd_socket_activation_serves_the_socket_on_descriptor_3():
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    child = spawn_as_systemd_does(sock, "--fd", "systemd")
    try:
        assert child.stdout.readline() == f"simpletcp: listening on 127.0.0.1:{port}\n"
        assert exchange(("127.0.0.1", port)) == b"ping"
        child.terminate()
        assert child.wait(TIMEOUT) == 0
        # systemd still holds the socket: the next activation is not refused meanwhile.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        waiting.close()
    finally:
        child.kill()
        child.wait()
        sock.close()


def test_systemds_own_socket_activate_starts_the_server_with_workers(tmp_path):
    """systemd's own tool, as a .socket unit does: it binds, passes the socket (with
    LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES) and starts the service at the first
    connection, which waits in the backlog meanwhile. The socket file is systemd's:
    the server leaves it where it is when it stops."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("needs systemd-socket-activate (Debian: the systemd package)")
    path = str(tmp_path / "activated.sock")
    # Without --accept it execs the service in its own process: LISTEN_PID is its pid.
    child = subprocess.Popen([tool, "-l", path, sys.executable, "-m", "simpletcp",
                              "--fd", "systemd", "--workers", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(path))
        assert exchange(path, family=socket.AF_UNIX) == b"ping"
        assert child.stdout.readline() == f"simpletcp: listening on unix:{path}\n"
        child.terminate()
        assert child.wait(TIMEOUT) == 0
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        child.kill()
        child.wait()


def test_a_numbered_descriptor_is_served():
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-m", "simpletcp", "--fd", str(sock.fileno())],
                             pass_fds=(sock.fileno(),), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == f"simpletcp: listening on 127.0.0.1:{port}\n"
        assert exchange(("127.0.0.1", port)) == b"ping"
    finally:
        child.terminate()
        child.wait(TIMEOUT)
        sock.close()


@pytest.mark.parametrize("how", ["systemd", "number"])
def test_a_passed_descriptor_is_close_on_exec_once_taken(tmp_path, how):
    """As sd_listen_fds() leaves them: a program the application runs (os.system,
    subprocess with close_fds=False) must not inherit the listening socket, or it would
    hold the port after the server stops; nor systemd's variables, or it would take
    descriptor 3 for a socket of its own."""
    (tmp_path / "inheritance_app.py").write_text(
        "import os\n"
        "def reply(queue, data):\n"
        "    inheritable = os.get_inheritable(int(data))\n"
        "    queue.put(b'inheritable' if inheritable else b'close-on-exec')\n"
        "    queue.put(b' %d' % len([name for name in os.environ\n"
        "                             if name.startswith('LISTEN_')]))\n")
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    if how == "systemd":
        child = spawn_as_systemd_does(sock, "inheritance_app:reply", "--fd", "systemd")
        served_fd = 3
    else:
        child = subprocess.Popen(
            [sys.executable, "-m", "simpletcp", "inheritance_app:reply", "--fd",
             str(sock.fileno())], pass_fds=(sock.fileno(),), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        served_fd = sock.fileno()
    try:
        assert child.stdout.readline() == f"simpletcp: listening on 127.0.0.1:{port}\n"
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"%d" % served_fd)
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b"close-on-exec 0"  # and no LISTEN_ variable
    finally:
        child.kill()
        child.wait()
        sock.close()


@pytest.mark.parametrize("arguments, words", [
    (["--fd", "systemd"], "expected one socket from systemd"),
    (["--fd", "0"], "fd 0 is not a socket"),
    (["--fd", "999"], "fd 999 is not an open descriptor"),
    (["--fd", "three"], "fd must be a descriptor number or 'systemd'"),
    (["--fd", "3", "--port", "5000"], "give --fd, or --mode/--port, not both"),
])
def test_a_bad_fd_is_a_usage_error(arguments, words):
    result = subprocess.run([sys.executable, "-m", "simpletcp", *arguments], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode in (1, 2), result
    assert words in result.stderr


def test_systemd_variables_for_another_process_are_ignored(monkeypatch):
    from simpletcp import _listener
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert _listener.systemd_sockets() == []
    assert "LISTEN_FDS" not in os.environ  # not handed on to child processes either


# ---- Unix domain sockets ---------------------------------------------------------------

def test_a_unix_socket_serves_and_its_file_is_removed_on_stop(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    peers = []

    def remember(ip, queue, data):
        peers.append((ip, queue.peer))
        queue.put(data)

    server = serve(remember, mode="unix:" + path)
    assert (server.ip, server.port) == (path, 0)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert exchange(path, family=socket.AF_UNIX) == b"ping"
    # A Unix peer has no IP address and no port: ip is "", queue.peer is ("", 0).
    assert peers == [("", ("", 0))]
    assert server.stop(timeout=TIMEOUT)
    assert not os.path.exists(path)


def test_a_relative_unix_socket_path_is_removed_even_after_a_chdir(backend, tmp_path,
                                                                   monkeypatch):
    server = TCPServer("unix:app.sock", 0, echo, backend=backend).start()  # in tmp_path
    assert server.ip == "app.sock"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # as a daemon's chdir("/") would
    assert server.stop(timeout=TIMEOUT)
    assert not (tmp_path / "app.sock").exists()


def test_clientsocket_connects_to_a_unix_socket(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    serve(echo, mode="unix:" + path)
    with ClientSocket("unix:" + path, 0, single_use=False) as client:
        assert client.send(b"first") == b"first"
        assert client.send("second") == b"second"
    assert ClientSocket("unix:" + path, 0).send(b"once") == b"once"


def test_unix_socket_permissions_are_set(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    serve(echo, mode="unix:" + path, unix_permissions=0o660)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


def test_a_stale_socket_file_from_a_crash_is_replaced(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)
    crashed.close()  # the file stays, nobody listens: what a killed server leaves
    serve(echo, mode="unix:" + path)
    assert exchange(path, family=socket.AF_UNIX) == b"ping"


def test_a_socket_a_live_server_listens_on_is_not_taken_over(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    serve(echo, mode="unix:" + path)
    with pytest.raises(OSError, match="a server is listening on it"):
        TCPServer("unix:" + path, 0, echo)
    assert exchange(path, family=socket.AF_UNIX) == b"ping"  # the first one still serves


@pytest.mark.parametrize("make", ["file", "directory", "symlink"])
def test_something_that_is_not_a_socket_is_never_removed(tmp_path, make):
    path = tmp_path / "app.sock"
    target = tmp_path / "precious"
    target.write_text("data")
    if make == "file":
        path.write_text("data")
    elif make == "directory":
        path.mkdir()
    else:
        path.symlink_to(target)
    with pytest.raises(OSError, match="exists and is not a socket"):
        TCPServer(f"unix:{path}", 0, echo)
    assert path.exists() and target.read_text() == "data"


def test_a_socket_file_replaced_by_a_successor_is_not_removed_on_stop(backend, tmp_path):
    """A rolling restart on a Unix socket: the new server binds the path (the old file is
    unlinked) while the old one drains; the old one's stop must not remove the new file."""
    path = str(tmp_path / "app.sock")
    old = TCPServer("unix:" + path, 0, echo, backend=backend).start()
    os.unlink(path)
    with TCPServer("unix:" + path, 0, echo, backend=backend).start():
        assert old.stop(timeout=TIMEOUT)
        assert exchange(path, family=socket.AF_UNIX) == b"ping"
    assert not os.path.exists(path)


def test_a_server_that_never_ran_removes_its_socket_file(tmp_path):
    path = str(tmp_path / "app.sock")
    TCPServer("unix:" + path, 0, echo).stop()
    assert not os.path.exists(path)


@pytest.mark.parametrize("keywords, error, words", [
    ({"mode": "unix:"}, ValueError, "needs a path"),
    ({"mode": "unix:/" + "x" * 107}, ValueError, "at most 107"),
    ({"mode": "unix:/tmp/a\0b"}, ValueError, "NUL"),
    ({"mode": "unix:/tmp/x.sock", "port": 80}, ValueError, "port must be 0"),
    ({"mode": "unix:/tmp/x.sock", "port": 0.0}, TypeError, "port must be an int"),
    ({"mode": "unix:/tmp/x.sock", "port": False}, TypeError, "port must be an int"),
    ({"mode": "unix:/tmp/x.sock", "port": "0"}, TypeError, "port must be an int"),
    ({"mode": "unix:/tmp/x.sock", "unix_permissions": 0o1777}, ValueError, "unix_permissions"),
    ({"mode": "unix:/tmp/x.sock", "unix_permissions": "660"}, TypeError, "unix_permissions"),
    ({"mode": "localhost", "unix_permissions": 0o600}, ValueError, "unix_permissions applies"),
    ({"mode": "unix:/tmp/x.sock", "reuse_port": True}, ValueError, "reuse_port applies"),
])
def test_bad_unix_arguments_are_named(keywords, error, words):
    keywords.setdefault("port", 0)
    with pytest.raises(error, match=words):
        TCPServer(read_callback=echo, **keywords)


def test_clientsocket_refuses_a_port_with_a_unix_mode_and_a_long_path():
    with pytest.raises(ValueError, match="port must be 0"):
        ClientSocket("unix:/tmp/x.sock", 80)
    for not_an_int in (0.0, False, None):
        with pytest.raises(TypeError, match="port must be an int"):
            ClientSocket("unix:/tmp/x.sock", not_an_int)
    with pytest.raises(ValueError, match="at most 107"):
        ClientSocket("unix:/" + "x" * 107, 0)


# ---- reuse_port ------------------------------------------------------------------------

def test_reuse_port_lets_separate_servers_share_a_port(backend):
    first = TCPServer("localhost", 0, echo, reuse_port=True, backend=backend)
    second = TCPServer("localhost", first.port, echo, reuse_port=True, backend=backend)
    with first.start(), second.start():
        for _ in range(4):
            assert exchange(("127.0.0.1", first.port)) == b"ping"
    with pytest.raises(TypeError, match="reuse_port must be a bool"):
        TCPServer("localhost", 0, echo, reuse_port=1)


def test_without_reuse_port_a_second_bind_fails():
    with TCPServer("localhost", 0, echo) as first:
        with pytest.raises(OSError, match="cannot bind"):
            TCPServer("localhost", first.port, echo, reuse_port=True)


def test_the_command_line_serves_a_unix_socket_with_its_permissions(tmp_path):
    path = str(tmp_path / "cli.sock")
    with ServingCLI("--mode", "unix:" + path, "--unix-permissions", "600") as server:
        assert f"listening on unix:{path}" in server.log_text() or os.path.exists(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert exchange(path, family=socket.AF_UNIX) == b"ping"
        assert server.stop() == 0
    assert not os.path.exists(path)


def test_the_command_line_refuses_bad_unix_permissions():
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--unix-permissions", "9"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "not octal permissions: '9'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--unix-permissions", "600"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "argument --unix-permissions: unix_permissions applies to a 'unix:' mode" in result.stderr


def test_socket_activation_with_workers():
    """The supervisor takes systemd's socket and its workers serve it."""
    sock = listening_tcp_socket()
    port = sock.getsockname()[1]
    child = spawn_as_systemd_does(sock, "--fd", "systemd", "--workers", "2")
    try:
        assert child.stdout.readline() == f"simpletcp: listening on 127.0.0.1:{port}\n"
        for _ in range(4):
            assert exchange(("127.0.0.1", port)) == b"ping"
        child.terminate()
        assert child.wait(TIMEOUT) == 0
    finally:
        child.kill()
        child.wait()
        sock.close()
