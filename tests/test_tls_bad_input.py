"""TLS bad input: plaintext HTTP and garbage sent to a TLS port, a handshake cut off
halfway or left unfinished, an untrusted or expired client certificate, 1,000
connections that never finish their handshake, and a peer that sends KeyUpdates but
never reads. Each closes only its own connection,
is logged once at WARNING at most (a cut-off handshake at DEBUG), and the others go on
being served."""
import datetime
import logging
import os
import random
import socket
import ssl
import time

import pytest

from support import (TIMEOUT, LibSSLClient, connect, connect_tls, descriptor_limit, echo,
                     proxy_v1, recv_exactly, recv_until_eof, rss_kib, wait_for)


def client_hello(client_context) -> bytes:
    """The first flight of a real TLS client: its ClientHello, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    return outgoing.read()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF after what it sent, or a reset)."""
    try:
        recv_until_eof(sock)
    except ConnectionResetError:
        pass
    return True


def assert_still_serving(server, client_context):
    with connect_tls(server, client_context) as client:
        client.sendall(b"still here")
        assert recv_exactly(client, 10) == b"still here"


class EchoRecorder:
    """Echoes, and keeps what the callback was given."""

    def __init__(self):
        self.received = []

    def __call__(self, queue, data):
        self.received.append(data)
        queue.put(data)


def tls_warnings(caplog):
    return [r for r in caplog.records if r.name == "simpletcp" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("sent, reason", [
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "HTTP_REQUEST"),
    (random.Random(15).randbytes(1000), ""),
    (b"\x16\x03\x01\x00\x05hello", ""),  # a handshake record holding no ClientHello
])
def test_what_is_not_tls_closes_its_connection_logged_once(serve, server_context,
                                                           client_context, caplog, sent,
                                                           reason):
    recorder = EchoRecorder()
    server = serve(recorder, ssl=server_context)
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with connect(server) as sock:
            sock.sendall(sent)
            assert closed_by_server(sock)
        wait_for(lambda: server.connection_count == 0)
    assert recorder.received == []  # the callback never saw it
    warnings = tls_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "TLS handshake failed" in warnings[0].getMessage()
    assert "127.0.0.1" in warnings[0].getMessage() and reason in warnings[0].getMessage()
    assert_still_serving(server, client_context)


def test_a_handshake_cut_off_halfway_closes_quietly(serve, server_context, client_context,
                                                   caplog):
    hello = client_hello(client_context)
    server = serve(echo, ssl=server_context)
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with connect(server) as sock:
            sock.sendall(hello[:len(hello) // 2])
            wait_for(lambda: server.connection_count == 1)
        wait_for(lambda: server.connection_count == 0)
    assert tls_warnings(caplog) == []  # a client that went away: DEBUG, not WARNING
    assert any("during the TLS handshake" in r.getMessage() for r in caplog.records)
    assert_still_serving(server, client_context)


def test_a_handshake_left_unfinished_is_reset_at_ssl_handshake_timeout(
        serve, server_context, client_context, caplog):
    hello = client_hello(client_context)
    server = serve(echo, ssl=server_context, ssl_handshake_timeout=0.5)
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with connect(server) as stalled, connect(server) as silent:
            stalled.sendall(hello[:len(hello) // 2])
            assert closed_by_server(stalled) and closed_by_server(silent)
    warnings = tls_warnings(caplog)
    assert len(warnings) == 1  # the second is counted for the next report, not logged
    assert "no TLS handshake within 0.5 s" in warnings[0].getMessage()
    assert_still_serving(server, client_context)


def seconds_until_closed(sock: socket.socket, since: float) -> float:
    """Seconds from ``since`` until the server closed ``sock`` (what it sent is read)."""
    closed_by_server(sock)
    return time.monotonic() - since


def test_the_handshake_deadline_counts_from_accept_not_from_the_servers_flight(
        serve, server_context, client_context):
    # The ClientHello comes late, the server answers it, then the client stalls. Were
    # the deadline refreshed by the server's flight (as an inactivity timeout), the
    # connection would live until about 0.9 + 1 s.
    hello = client_hello(client_context)
    server = serve(echo, ssl=server_context, ssl_handshake_timeout=1.0)
    with connect(server) as sock:
        accepted = time.monotonic()
        time.sleep(0.9)
        sock.sendall(hello)
        elapsed = seconds_until_closed(sock, accepted)
    assert 0.95 <= elapsed < 1.6, elapsed


def test_a_client_trickling_its_handshake_is_reset_at_the_deadline(
        serve, server_context, client_context):
    # One byte of the ClientHello every 20 ms, for longer than 2.5 timeouts: no byte
    # the client sends extends its time.
    hello = client_hello(client_context)
    server = serve(echo, ssl=server_context, ssl_handshake_timeout=0.5)
    with connect(server) as sock:
        accepted = time.monotonic()
        sock.setblocking(False)
        for byte in hello[:70]:  # 70 × 20 ms = 1.4 s, the ClientHello still unfinished
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break  # reset already
            time.sleep(0.02)
        sock.setblocking(True)
        elapsed = seconds_until_closed(sock, accepted)
    assert 0.45 <= elapsed < 1.25, elapsed  # reset mid-trickle, at about 0.5 s


def test_with_proxy_protocol_the_handshake_deadline_counts_from_the_header(
        serve, server_context):
    # The PROXY header has its own deadline (proxy_header_timeout); the handshake's
    # starts when the header is whole, so a slow balancer does not eat the client's.
    server = serve(echo, ssl=server_context, proxy_protocol=True, ssl_handshake_timeout=0.5)
    with connect(server) as sock:
        time.sleep(0.6)
        sock.sendall(proxy_v1())
        header_sent = time.monotonic()
        elapsed = seconds_until_closed(sock, header_sent)
    assert 0.45 <= elapsed < 1.1, elapsed


@pytest.fixture
def client_certificate_required(server_context, tls_ca):
    server_context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_context)
    return server_context


@pytest.mark.parametrize("problem", ["untrusted", "expired"])
def test_a_bad_client_certificate_fails_the_handshake(serve, client_certificate_required,
                                                     client_context, tls_ca, caplog,
                                                     problem):
    trustme = pytest.importorskip("trustme")
    if problem == "untrusted":
        certificate = trustme.CA().issue_cert("client@example.test")
    else:
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        certificate = tls_ca.issue_cert("client@example.test", not_before=past,
                                        not_after=past + datetime.timedelta(days=1))
    certificate.configure_cert(client_context)
    recorder = EchoRecorder()
    server = serve(recorder, ssl=client_certificate_required)
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
            # TLS 1.3: the client's side of the handshake is done before the server
            # looks at its certificate; the alert comes with the first read.
            with connect_tls(server, client_context) as client:
                client.sendall(b"let me in")
                if not client.recv(100):
                    raise EOFError
        wait_for(lambda: server.connection_count == 0)
    assert recorder.received == []
    warnings = tls_warnings(caplog)
    assert len(warnings) == 1 and "CERTIFICATE_VERIFY_FAILED" in warnings[0].getMessage()
    assert ("expired" if problem == "expired" else "unable to get local issuer"
            ) in warnings[0].getMessage()

    # A client without a certificate at all.
    plain_client = ssl.create_default_context()
    tls_ca.configure_trust(plain_client)
    with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
        with connect_tls(server, plain_client) as client:
            client.sendall(b"let me in")
            if not client.recv(100):
                raise EOFError


@pytest.mark.slow
def test_a_thousand_unfinished_handshakes_are_bounded_timed_out_and_quiet(
        serve, server_context, client_context, caplog):
    hello = client_hello(client_context)
    count = 1000
    with descriptor_limit(2 * count + 200), caplog.at_level(logging.DEBUG,
                                                             logger="simpletcp"):
        server = serve(echo, ssl=server_context, ssl_handshake_timeout=3.0)
        rss_before = rss_kib(os.getpid())
        clients = []
        try:
            for index in range(count):
                client = socket.create_connection((server.ip, server.port), timeout=TIMEOUT)
                clients.append(client)
                if index % 2:  # half say nothing, half send half a ClientHello
                    client.sendall(hello[:len(hello) // 2])
            wait_for(lambda: server.connection_count == count)
            grown = rss_kib(os.getpid()) - rss_before
            assert grown < 64 * 1024, f"{grown} KiB for {count} unfinished handshakes"
            assert_still_serving(server, client_context)  # meanwhile, others are served
            wait_for(lambda: server.connection_count == 0, timeout=30)
            for client in clients:
                assert closed_by_server(client)
        finally:
            for client in clients:
                client.close()
    late = [r for r in caplog.records if "no TLS handshake" in r.getMessage()]
    assert 1 <= len(late) <= 2  # one line per 10 s, with a count
    assert len(tls_warnings(caplog)) == len(late)


def test_key_updates_from_a_peer_that_never_reads_are_held_by_the_high_water_mark(
        serve, server_context, client_context):
    # A KeyUpdate that asks for one in return makes the server write a record by reading
    # alone. A peer that sends them and never reads must be stopped by TCP flow control,
    # as one that sends requests and never reads the replies is (high_water), not grow
    # the server's unsent ciphertext without bound. Small socket buffers on both sides
    # (accepted sockets inherit the listener's), so the kernel hides little.
    listener = socket.socket()
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        listener.setsockopt(socket.SOL_SOCKET, option, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = serve(echo, mode=None, sock=listener, ssl=server_context, high_water=16384)
    client = LibSSLClient(server.port)
    try:
        sent, stuck_since = 0, None
        # Each answer is a 27-byte record: 20,000 of them are 540 KB, far above what
        # the mark and the socket buffers hold.
        while sent < 20_000:
            if client.send_key_update():
                sent, stuck_since = sent + 1, None
            elif stuck_since is None:
                stuck_since = time.monotonic()
            elif time.monotonic() - stuck_since > 2.0:
                break  # the server stopped reading: held
            else:
                time.sleep(0.01)
        assert sent < 20_000, "the server read every KeyUpdate and kept every answer"
    finally:
        client.close()
    assert_still_serving(server, client_context)
