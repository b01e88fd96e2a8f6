"""proxy_protocol=True over real sockets: the callback sees the client the PROXY
header names (ip and queue.peer); a connection without a valid header in time is
closed, logged, and never reaches the callback."""
import logging
import socket
import time

import pytest

from simpletcp.proxyprotocol import V2_SIGNATURE
from simpletcp.tcpserver import TCPServer
from support import (TIMEOUT, ServingCLI, proxy_v1 as v1, proxy_v2 as v2, recv_exactly,
                     recv_until_eof, wait_for)

pytestmark = pytest.mark.timeout(60)


# ---- the server with proxy_protocol=True -------------------------------------------------

class Recorder:
    """A callback that records (ip, queue.peer, data) and echoes."""

    def __init__(self):
        self.calls = []

    def __call__(self, ip, queue, data):
        self.calls.append((ip, queue.peer, data))
        queue.put(data)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


@pytest.mark.parametrize("header, client", [
    (v1(("192.0.2.7", 51000)), ("192.0.2.7", 51000)),
    (v2(("192.0.2.7", 51000)), ("192.0.2.7", 51000)),
    (v1(("2001:db8::7", 443), ("2001:db8::1", 80)), ("2001:db8::7", 443)),
    (v2(("2001:db8::7", 443), ("2001:db8::1", 80)), ("2001:db8::7", 443)),
    (v2(("/run/client.sock", 0), ("/run/app.sock", 0), family=3), ("/run/client.sock", 0)),
])
def test_the_callback_sees_the_client_the_header_names(serve, header, client):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True)
    with connect(server) as sock:
        sock.sendall(header + b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        sock.sendall(b" again")
        assert recv_exactly(sock, 6) == b" again"
    assert recorder.calls[0] == (client[0], client, b"hello")
    assert all(call[:2] == (client[0], client) for call in recorder.calls)
    assert b"".join(call[2] for call in recorder.calls) == b"hello again"


def test_a_header_that_arrives_byte_by_byte_is_read_whole(serve):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True, recv_bytes=1)
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in v2(("192.0.2.9", 7)):
            sock.send(bytes([byte]))
        sock.sendall(b"ab")
        assert recv_exactly(sock, 2) == b"ab"
    assert recorder.calls[0][1] == ("192.0.2.9", 7)
    assert [call[2] for call in recorder.calls] == [b"a", b"b"]  # recv_bytes still holds


@pytest.mark.parametrize("header", [v2(command=0), b"PROXY UNKNOWN\r\n",
                                    v2(addresses=b"", family=0, transport=0)])
def test_a_header_without_an_address_keeps_the_connections_own_peer(serve, header):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True)
    with connect(server) as sock:
        sock.sendall(header + b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        own = sock.getsockname()
    assert recorder.calls == [(own[0], own, b"ping")]


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",              # a client that bypassed the balancer
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nhello",   # malformed
    b"PROXY TCP4 " + b"1" * 300,                       # oversized v1
    V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 100,  # oversized v2
])
def test_a_connection_without_a_valid_header_is_closed_and_logged(serve, caplog, request_bytes):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True)
    with caplog.at_level(logging.WARNING, logger="simpletcp"):
        with connect(server) as sock:
            sock.sendall(request_bytes)
            try:
                assert recv_until_eof(sock) == b""
            except ConnectionResetError:
                pass  # reset: it was owed nothing, and what it sent is dropped
        wait_for(lambda: server.connection_count == 0)
    assert recorder.calls == []
    assert any("closing connection 127.0.0.1:" in record.getMessage()
               for record in caplog.records)


def test_a_connection_that_sends_no_header_in_time_is_closed(serve, caplog):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True, proxy_header_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="simpletcp"):
        silent = connect(server)
        trickling = connect(server)
        started = time.monotonic()
        # Trickling the header a byte at a time does not extend the deadline.
        for byte in b"PROXY TCP4 1.2.":
            try:
                trickling.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        for sock in (silent, trickling):
            sock.settimeout(TIMEOUT)
            try:
                assert recv_until_eof(sock) == b""
            except ConnectionResetError:
                pass
            sock.close()
        assert time.monotonic() - started < TIMEOUT
    assert recorder.calls == []
    assert any("no PROXY header within 0.5 s" in record.getMessage()
               for record in caplog.records)


def test_a_client_that_leaves_before_its_header_is_closed_quietly(serve, caplog):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True)
    with caplog.at_level(logging.WARNING, logger="simpletcp"):
        with connect(server) as sock:
            sock.sendall(b"PROXY TCP4")
        wait_for(lambda: server.connection_count == 0)
    assert recorder.calls == [] and caplog.records == []


def test_the_idle_timeout_starts_after_the_header(serve):
    server = serve(Recorder(), proxy_protocol=True, proxy_header_timeout=30, idle_timeout=0.3)
    with connect(server) as sock:
        sock.sendall(v1() + b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert recv_until_eof(sock) == b""  # idle: closed after 0.3 s, not 30


def test_stop_does_not_wait_for_connections_still_owing_a_header(backend):
    server = TCPServer("localhost", 0, Recorder(), proxy_protocol=True, grace_period=30,
                       backend=backend).start()
    sock = connect(server)
    sock.sendall(b"PROXY TCP")
    wait_for(lambda: server.connection_count == 1)
    started = time.monotonic()
    assert server.stop(timeout=TIMEOUT)
    assert time.monotonic() - started < 5  # nothing was owed: no grace period to wait
    sock.close()


def test_many_connections_with_headers_at_once(serve):
    recorder = Recorder()
    server = serve(recorder, proxy_protocol=True)
    clients = [connect(server) for _ in range(50)]
    for number, sock in enumerate(clients):
        sock.sendall(v2(("10.0.0.%d" % number, 1000 + number)) + b"%d" % number)
    for number, sock in enumerate(clients):
        expected = b"%d" % number
        assert recv_exactly(sock, len(expected)) == expected
        sock.close()
    assert sorted(call[1] for call in recorder.calls) == sorted(
        ("10.0.0.%d" % number, 1000 + number) for number in range(50))


def test_proxy_protocol_over_a_unix_socket(serve, tmp_path):
    """nginx or HAProxy in front of a Unix socket: the peer is the TCP client."""
    path = str(tmp_path / "app.sock")
    recorder = Recorder()
    serve(recorder, mode="unix:" + path, proxy_protocol=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(v1(("203.0.113.5", 40000)) + b"hi")
        assert recv_exactly(sock, 2) == b"hi"
    assert recorder.calls == [("203.0.113.5", ("203.0.113.5", 40000), b"hi")]


@pytest.mark.parametrize("keywords, error, words", [
    ({"proxy_protocol": 1}, TypeError, "proxy_protocol must be a bool"),
    ({"proxy_protocol": "yes"}, TypeError, "proxy_protocol must be a bool"),
    ({"proxy_header_timeout": 0}, ValueError, "proxy_header_timeout"),
    ({"proxy_header_timeout": float("nan")}, ValueError, "proxy_header_timeout"),
    ({"proxy_header_timeout": "5"}, TypeError, "proxy_header_timeout"),
])
def test_bad_proxy_arguments_are_named(keywords, error, words):
    with pytest.raises(error, match=words):
        TCPServer("localhost", 0, Recorder(), **keywords)


def test_the_command_line_reads_proxy_headers():
    script = "def who(ip, queue, data):\n    queue.put(ip.encode() + b' ' + data)\n"
    with open("proxied_app.py", "w") as module:  # the test's working directory: importable
        module.write(script)
    with ServingCLI("proxied_app:who", "--port", "0", "--proxy-protocol",
                    "--proxy-header-timeout", "2") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(v1(("203.0.113.9", 1234)) + b"hi")
            assert recv_exactly(sock, 14) == b"203.0.113.9 hi"
        assert server.stop() == 0
