"""Helpers for the server tests: clients, waits, child-server processes, /proc readings.

The fixtures (``backend``, ``serve``) are in conftest.py.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util


import ipaddress
import os
import pathlib
import re
import resource
import select


import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from simpletcp.framing import Framer, NeedMore
from simpletcp.proxyprotocol import V2_SIGNATURE
from simpletcp.tcpserver import ConnectionQueue, TCPServer

TIMEOUT = 10.0
# The benchmark suite of the source tree (its C programs are also test tools).
BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"



def echo(queue: ConnectionQueue, data: bytes) -> None:
    """The README's callback: send every byte back."""
    queue.put(data)


class HandOff:
    """A callback that hands each connection's queue to the test, as to a worker thread."""

    def __init__(self) -> None:
        self.queues: List[object] = []
        self._arrived = threading.Event()

    def __call__(self, queue: object, data: bytes) -> None:
        self.queues.append(queue)
        self._arrived.set()

    def first_queue(self, timeout: float = TIMEOUT):  # -> ConnectionQueue
        assert self._arrived.wait(timeout), "no data reached the callback"
        return self.queues[0]


def connect(server: TCPServer, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((server.ip, server.port), timeout=timeout)


def connect_slow_reader(server: TCPServer, receive_buffer: int,
                        timeout: float = TIMEOUT) -> socket.socket:
    """A client whose receive buffer is ``receive_buffer`` bytes: a reader slower than
    the server's replies. Set before connect(), where the window is agreed."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.settimeout(timeout)
    client.connect((server.ip, server.port))
    return client


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN, as a crashed or impatient peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the server on ``port`` refuses new connections (it has begun to stop)."""
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return True  # it was in the backlog when the listening socket was closed


def reset_at_once(port: int, request: bytes = b"", host: str = "127.0.0.1") -> bool:
    """Connect (sending ``request`` if any) and read: whether the server reset the
    connection without a byte, as it does beyond its connection limit. The reset may
    already fail the connect()."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            if request:
                sock.sendall(request)
            return sock.recv(100) == b"" and False
    except ConnectionResetError:
        return True


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (the peer may send them in any number of pieces)."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def read_line(sock: socket.socket) -> bytes:
    """Read up to and including the next newline (a byte at a time: nothing after it)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"connection closed after {bytes(line)!r}")
        line += chunk
    return bytes(line)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(chunks)
        chunks += chunk


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@contextlib.contextmanager
def closing_all(*socks: socket.socket) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in socks:
            sock.close()


# An application that serves from the main thread of its process, so that signals reach
# run(); run with child_server(SIGNALLED_SERVER, BACKEND, HANDLING[, BIG_MIB[, GRACE]]) (GRACE:
# its grace period in seconds, TCPServer's default if not given). It echoes,
# but b"busy" runs Python code in the callback for 1 s (announcing "busy" on stdout) and
# For child programs: signal_at_line(path, number) has SIGUSR1 (or `signum`) sent to the
# main thread at the `number`th line run in the file `path` (a tracer's line events; a
# bare "try:" or "finally:" is not counted: the tracer would raise before the statement,
# where CPython never runs a handler); `on_call(frame)` is called at each function call
# in that file. Returns [lines seen so far].
SIGNAL_AT_LINE = """
import linecache, signal, sys, threading

def signal_at_line(path, number, signum=signal.SIGUSR1, on_call=None):
    seen = [0]
    def trace(frame, event, arg):
        if frame.f_code.co_filename != path:
            return None
        if on_call is not None:
            on_call(frame)
        def each_line(frame, event, arg):
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            if event == "line" and line not in ("try:", "finally:"):
                seen[0] += 1
                if seen[0] == number:
                    signal.pthread_kill(threading.main_thread().ident, signum)
            return each_line
        return each_line
    sys.settrace(trace)
    return seen
"""


# b"big" queues a BIG_MIB (default 4) MiB reply. HANDLING: "default" (Python's own
# signal handling), "raising-handler" (the application's SIGUSR1 handler raises
# SystemExit(7)), "sigpipe-default" (SIGPIPE not ignored, as in an embedding application:
# a send() to a reset peer without MSG_NOSIGNAL would kill the process).
SIGNALLED_SERVER = """
import signal, sys, time
from simpletcp.tcpserver import ConnectionQueue, TCPServer

backend, handling = sys.argv[1:3]
BIG = bytes(range(256)) * (4 * 1024 * int(sys.argv[3] if len(sys.argv) > 3 else 4))

def callback(queue, data):
    if data == b"busy":
        print("busy", flush=True)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the signal lands in here
            pass
        queue.put(b"done after the signal")
    elif data == b"big":
        queue.put(BIG)
    else:
        queue.put(data)

if handling == "raising-handler":
    def handler(signum, frame):
        raise SystemExit(7)
    signal.signal(signal.SIGUSR1, handler)
elif handling == "sigpipe-default":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

grace = {"grace_period": float(sys.argv[4])} if len(sys.argv) > 4 else {}
server = TCPServer("localhost", 0, callback, backend=backend, **grace)
print(server.port, flush=True)
server.run()
print("run returned", flush=True)
"""


# The first line a child server prints: its port, or python -m simpletcp's banner.
PORT_LINE = re.compile(r"(?:simpletcp: listening on \S+:)?(\d+)")


@contextlib.contextmanager
def child_server(script: Optional[str], *args: str, descriptors: "int | str | None" = None
                 ) -> Iterator[Tuple[subprocess.Popen, int]]:
    """A server in a child process, so that signals reach its main thread, its limits are
    its own and it can die alone: (child, port); killed on the way out whatever happens.

    ``script`` is Python source that prints its server's port first, run with ``args``
    as sys.argv[1:]; None is simpletcp's own echo server, ``python -m simpletcp --port 0
    ARGS``. ``descriptors`` is the child's RLIMIT_NOFILE from its start (soft and hard),
    or "hard" for the soft limit raised to the hard one (10,000 connections and more).
    stdin, stdout and stderr are pipes (text)."""
    command = ([sys.executable, "-m", "simpletcp", "--port", "0"] if script is None
               else [sys.executable, "-c", script])
    limit = None if descriptors is None else functools.partial(_limit_descriptors, descriptors)
    # As a context manager, Popen closes the pipes and reaps the child on the way out.
    with subprocess.Popen([*command, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, preexec_fn=limit) as child:
        try:
            line = child.stdout.readline()
            port = PORT_LINE.fullmatch(line.strip())
            if port is None:
                child.kill()
                raise AssertionError(f"no port from the child: {line!r} {child.stderr.read()}")
            yield child, int(port.group(1))
        finally:
            child.kill()


def _limit_descriptors(descriptors: "int | str") -> None:
    # Runs in the child between fork and exec: only the system call, nothing that locks.
    if descriptors == "hard":
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(descriptors), int(descriptors)))


def cpu_seconds(pid: int, thread: Optional[int] = None) -> float:
    """CPU time (user + system) used so far by process ``pid``, or by one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_share(server: TCPServer, seconds: float = 0.5) -> float:
    """CPU seconds per second the loop thread of ``server`` (started) used over ``seconds``."""
    assert server._thread is not None and server._thread.native_id is not None
    thread = server._thread.native_id
    before = cpu_seconds(os.getpid(), thread)
    time.sleep(seconds)
    return (cpu_seconds(os.getpid(), thread) - before) / seconds


@contextlib.contextmanager
def descriptor_limit(wanted: int) -> Iterator[None]:
    """Raise this process's RLIMIT_NOFILE to at least ``wanted`` meanwhile (skips the
    test if the hard limit is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_descriptors(pid: "int | str" = "self") -> List[int]:
    """The descriptor numbers process ``pid`` has open."""
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def own_descriptors_before() -> List[int]:
    """This process's open descriptors, to compare with after a test: its garbage is
    collected first. An earlier test's reference cycle that holds a socket or a pipe (a
    failed test's traceback, a Popen in a cycle) would otherwise be collected whenever
    the collector next runs, perhaps mid-test, and change the count."""
    gc.collect()
    return open_descriptors()


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# The example programs of the source tree (examples/), importable by name.
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """examples/NAME/server.py as a module (skips the test outside a source tree)."""
    path = EXAMPLES / name / "server.py"
    if not path.exists():
        pytest.skip(f"needs the source tree's examples/{name}/")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ProgramClient:
    """A line-oriented client program (nc, socat) talking to a server through its
    stdin and stdout, as a user at a terminal would."""

    def __init__(self, argv: List[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.received = b""

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def expect(self, wanted: bytes, timeout: float = TIMEOUT) -> bytes:
        """Read until `wanted` has arrived; return everything up to and including it."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while wanted not in self.received:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"{wanted!r} not received in {timeout} s: {self.received!r}")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"{wanted!r} not received before EOF: {self.received!r}")
            self.received += chunk
        cut = self.received.index(wanted) + len(wanted)
        seen, self.received = self.received[:cut], self.received[cut:]
        return seen

    def finish(self, timeout: float = TIMEOUT) -> bytes:
        """Close stdin and wait for the program to exit; what it printed meanwhile."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        rest = self.process.stdout.read()
        self.process.wait(timeout)
        return self.received + rest

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def assert_stop_does_not_wait_for_idle_clients(callback: Callable[..., object], backend: str,
                                               greeting: bytes,
                                               known: Callable[[], int],
                                               started: Optional[Callable[[TCPServer], object]] = None,
                                               **keywords: Any) -> None:
    """stop() with 50 idle clients (each sent `greeting`, and `known()` counts them in the
    callback's state) returns long before its 30 s grace period: state kept per
    connection must not hold the queues (a plain dict would look like 50 workers about
    to reply). `keywords` go to TCPServer; `started(server)` is called before clients
    connect."""
    server = TCPServer("localhost", 0, callback, backend=backend, grace_period=30,
                       **keywords)
    if started is not None:
        started(server)
    server.start()
    clients = [connect(server) for _ in range(50)]
    with closing_all(*clients):
        for client in clients:
            client.sendall(greeting)
        wait_for(lambda: known() == len(clients))
        started = time.monotonic()
        assert server.stop(timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT


def reset_mid_request(server: TCPServer, partial: bytes, times: int = 20) -> None:
    """`times` clients each send the start of a request, then reset the connection."""
    for _ in range(times):
        client = connect(server)
        client.sendall(partial)
        reset(client)


class ServingCLI:
    """``python -m simpletcp ARGS`` in a child process, its stderr (the log) collected
    line by line as it comes: ``port``, ``log_lines()``, ``wait_for_log(text)``."""

    def __init__(self, *args: str, **popen_keywords: object) -> None:
        self.child = subprocess.Popen([sys.executable, "-m", "simpletcp", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      **popen_keywords)  # type: ignore[call-overload]
        self._lines: List[str] = []
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        line = self.child.stdout.readline()
        if not line.startswith("simpletcp: listening on "):
            self.child.kill()
            self.child.wait()
            self._collector.join(TIMEOUT)
            raise AssertionError(f"no listening line: {line!r} {self.log_text()}")
        where = line.split("listening on ", 1)[1].strip()
        self.port = int(where.rsplit(":", 1)[1]) if not where.startswith("unix:") else 0

    def _collect(self) -> None:
        for line in self.child.stderr:
            self._lines.append(line)

    def log_lines(self) -> List[str]:
        return list(self._lines)

    def log_text(self) -> str:
        return "".join(self._lines)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> List[str]:
        """The log lines containing ``text``, once there are ``count`` of them."""
        found: List[str] = []

        def enough() -> bool:
            found[:] = [line for line in self._lines if text in line]
            return len(found) >= count

        try:
            wait_for(enough, timeout)
        except AssertionError:
            raise AssertionError(f"{count} log lines with {text!r} expected; the log:\n"
                                 f"{self.log_text()}") from None
        return found

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the child, wait for it; its exit status."""
        self.child.send_signal(signum)
        status = self.child.wait(timeout)
        self._collector.join(TIMEOUT)
        return status

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        self._collector.join(TIMEOUT)

    def __enter__(self) -> "ServingCLI":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def end_process(child: subprocess.Popen) -> None:
    """SIGTERM ``child``, SIGKILL it if it has not exited within TIMEOUT; reaped."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as it is read
        return True


# ---- behind a load balancer (test_haproxy.py, test_nginx.py) -----------------------------

def who_am_i(ip, queue, data) -> None:
    """A callback that replies with the client address the server sees: ip and
    queue.peer."""
    host, port = queue.peer
    queue.put(f"{ip} {host} {port}\n".encode())


@contextlib.contextmanager
def two_proxied_who_am_i_servers(backend: str) -> Iterator[Tuple[TCPServer, TCPServer, dict]]:
    """Two started servers with proxy_protocol=True answering who_am_i, and the peers
    each one saw ({"s1": [...], "s2": [...]}): the instances behind a balancer."""
    seen: dict = {"s1": [], "s2": []}

    def recording(name: str) -> Callable[..., None]:
        def callback(ip, queue, data) -> None:
            seen[name].append(queue.peer)
            who_am_i(ip, queue, data)
        return callback

    with TCPServer("localhost", 0, recording("s1"), proxy_protocol=True,
                   backend=backend).start() as s1, \
            TCPServer("localhost", 0, recording("s2"), proxy_protocol=True,
                      backend=backend).start() as s2:
        yield s1, s2, seen


def assert_each_reply_names_its_client(port: int, times: int) -> None:
    """Ask who_am_i through the balancer on ``port`` ``times`` times: each reply names
    the client's own address and port, not the one the balancer connected from."""
    for _ in range(times):
        reply, (host, client_port) = ask_who_am_i(port)
        assert reply == f"{host} {host} {client_port}\n".encode()


def ask_who_am_i(port: int) -> "Tuple[bytes, Tuple[str, int]]":
    """Ask who_am_i through ``port``: its reply, and the client's own address."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(b"who?")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = client.recv(100)
            assert chunk, f"closed after {reply!r}"
            reply += chunk
        return reply, client.getsockname()


# ---- PROXY protocol headers, written by the tests (to feed the parser and servers) ----

def proxy_v1(source=("192.0.2.7", 51000), destination=("198.51.100.1", 443),
             protocol=None) -> bytes:
    """A v1 header (one line of text) from ``source`` to ``destination``."""
    protocol = protocol or ("TCP6" if ":" in source[0] else "TCP4")
    return (f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
            .encode())


def proxy_v2(source=("192.0.2.7", 51000), destination=("198.51.100.1", 443), command=1,
             tlvs=b"", family=None, transport=1, addresses=None) -> bytes:
    """A v2 header; ``family`` 3 for Unix paths (else from the addresses), ``command`` 0
    for LOCAL, ``addresses`` to give the address block as raw bytes."""
    if addresses is None:
        if family == 3:
            addresses = (source[0].encode().ljust(108, b"\0")
                         + destination[0].encode().ljust(108, b"\0"))
        else:
            packed_source = ipaddress.ip_address(source[0]).packed
            packed_destination = ipaddress.ip_address(destination[0]).packed
            addresses = (packed_source + packed_destination
                         + struct.pack("!HH", source[1], destination[1]))
            family = 1 if len(packed_source) == 4 else 2
    body = addresses + tlvs
    return (V2_SIGNATURE + bytes([0x20 | command, (family << 4) | transport])
            + struct.pack("!H", len(body)) + body)


def proxy_tlv(kind: int, value: bytes) -> bytes:
    """One v2 TLV (type, 16-bit length, value)."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def connect_tls(server: TCPServer, context, server_hostname: str = "localhost",
                timeout: float = TIMEOUT, **wrap_keywords) -> socket.socket:
    """A TLS client of ``server``: connected, handshake done (ssl.SSLSocket)."""
    raw = socket.create_connection((server.ip, server.port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname, **wrap_keywords)
    except BaseException:
        raw.close()
        raise


def _tls_retry_errors():
    import ssl
    return (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def tls_send_until_stuck(sock: socket.socket, payload: bytes, quiet: float = 0.5) -> int:
    """Send ``payload`` over TLS without reading, until the server has taken nothing for
    ``quiet`` seconds: how many bytes went. One thread drives the SSLSocket (OpenSSL's
    objects must not be used from two threads at once)."""
    sent = 0
    sock.setblocking(False)
    try:
        last_progress = time.monotonic()
        while sent < len(payload) and time.monotonic() - last_progress < quiet:
            select.select([], [sock], [], quiet)
            try:
                sent += sock.send(payload[sent:sent + 65536])
                last_progress = time.monotonic()
            except _tls_retry_errors():
                time.sleep(0.01)
    finally:
        sock.settimeout(TIMEOUT)
    return sent


def tls_exchange(sock: socket.socket, payload: bytes, expected: int,
                 timeout: float = 60.0) -> bytes:
    """Send ``payload`` over TLS while reading, from one thread, until ``expected``
    bytes have come back (or EOFError): the reply."""
    sent = 0
    received = bytearray()
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    try:
        while len(received) < expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(received)} of {expected} bytes in {timeout} s "
                                     f"({sent} of {len(payload)} sent)")
            writing = [sock] if sent < len(payload) else []
            if not sock.pending():
                select.select([sock], writing, [], 0.2)
            if writing:
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except _tls_retry_errors():
                    pass
            try:
                while len(received) < expected:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise EOFError(f"closed after {len(received)} of {expected} bytes")
                    received += chunk
            except _tls_retry_errors():
                pass
    finally:
        sock.settimeout(TIMEOUT)
    return bytes(received)


class LibSSLClient:
    """A TLS 1.3 client made of libssl itself (through ctypes), for what Python's ssl
    module cannot send: a KeyUpdate that asks for the server's in return. Small socket
    buffers (4 KiB), so that what the kernel holds does not hide what the server does;
    the server's certificate is not verified. Skips the test where Python's ssl module
    does not run on a loadable libssl."""

    KEY_UPDATE_REQUESTED = 1
    ERROR_WANT_WRITE = 3

    def __init__(self, port: int) -> None:
        import ctypes
        import ssl  # noqa: F401 (loads the libssl whose path /proc/self/maps gives)
        paths = [line.split()[-1] for line in open("/proc/self/maps")
                 if "/libssl.so" in line]
        if not paths:
            pytest.skip("Python's ssl module is not linked with a shared libssl")
        lib = self.lib = ctypes.CDLL(paths[0])
        pointer = ctypes.c_void_p
        for name, result, arguments in [
                ("TLS_client_method", pointer, []), ("SSL_CTX_new", pointer, [pointer]),
                ("SSL_CTX_free", None, [pointer]), ("SSL_new", pointer, [pointer]),
                ("SSL_free", None, [pointer]), ("SSL_set_fd", ctypes.c_int, [pointer, ctypes.c_int]),
                ("SSL_connect", ctypes.c_int, [pointer]),
                ("SSL_do_handshake", ctypes.c_int, [pointer]),
                ("SSL_key_update", ctypes.c_int, [pointer, ctypes.c_int]),
                ("SSL_get_error", ctypes.c_int, [pointer, ctypes.c_int])]:
            function = getattr(lib, name)
            function.restype, function.argtypes = result, arguments
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(None)  # blocking while SSL_connect runs, within TIMEOUT:
        bound = struct.pack("ll", int(TIMEOUT), 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        self.context = lib.SSL_CTX_new(lib.TLS_client_method())
        self.session = lib.SSL_new(self.context)
        lib.SSL_set_fd(self.session, self.sock.fileno())
        assert lib.SSL_connect(self.session) == 1, "no TLS handshake with the server"
        self.sock.setblocking(False)
        self.update_unsent = False

    def send_key_update(self) -> bool:
        """Send a KeyUpdate asking for the server's (or finish the one the socket had no
        room for): whether it went out; False while the socket is full."""
        if not self.update_unsent:
            assert self.lib.SSL_key_update(self.session, self.KEY_UPDATE_REQUESTED) == 1
        result = self.lib.SSL_do_handshake(self.session)
        self.update_unsent = result != 1
        if self.update_unsent:
            assert self.lib.SSL_get_error(self.session, result) == self.ERROR_WANT_WRITE
        return not self.update_unsent

    def close(self) -> None:
        self.lib.SSL_free(self.session)
        self.lib.SSL_CTX_free(self.context)
        self.sock.close()


class LengthThenBody(Framer):
    """A Framer: a 4-byte big-endian length, then that many bytes; the length said at
    once (the loop gathers the rest, read straight in when it is large)."""

    def frame(self, data, start):
        if len(data) - start < 4:
            return NeedMore(4 - (len(data) - start))
        return 4 + int.from_bytes(data[start:start + 4], "big")
