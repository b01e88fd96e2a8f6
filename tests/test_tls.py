"""TLS (TCPServer(ssl=context)): the compiled loop serves TLS with the standard library's
ssl.SSLContext, checked by real peers (Python's ssl client, openssl s_client): echo,
TLS 1.2 and 1.3, 10 MB each way, backpressure, half-close, close_notify on a clean close
and on stop(), per-connection facts (queue.tls), mutual TLS, ALPN, a TLS 1.3 key
update, the PROXY header before the handshake, and the argument checks."""
import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from simpletcp import CloseReason
from simpletcp.tcpserver import TCPServer
from support import (TIMEOUT, HandOff, connect, connect_tls, echo, proxy_v1, recv_exactly,
                     tls_exchange, tls_send_until_stuck, wait_for)


def upper_until_bye(queue, data):
    """A line service for s_client: each line back in capitals; b"bye" closes."""
    queue.put(data.upper())
    if b"bye" in data:
        queue.shutdown()


# ---- the Python ssl client -------------------------------------------------------------

def test_a_tls_client_is_echoed_and_the_callback_sees_plaintext(serve, server_context,
                                                                client_context):
    received = []

    def remember(queue, data):
        received.append(data)
        queue.put(data)

    server = serve(remember, ssl=server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"hello over TLS")
        assert recv_exactly(client, 14) == b"hello over TLS"
    assert received == [b"hello over TLS"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served_and_the_queue_says_which(serve, server_context,
                                                            client_context, version):
    facts = []

    def describe(queue, data):
        tls = queue.tls
        facts.append((tls.version(), tls.cipher()[1]))
        queue.put(tls.version().encode())

    client_context.minimum_version = client_context.maximum_version = version
    server = serve(describe, ssl=server_context)
    name = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    with connect_tls(server, client_context) as client:
        client.sendall(b"which?")
        assert recv_exactly(client, len(name)) == name.encode()
    assert facts == [(name, name)]


def test_a_plain_connections_tls_is_none(serve):
    hand_off = HandOff()
    server = serve(hand_off)
    with connect(server) as client:
        client.sendall(b"x")
        assert hand_off.first_queue().tls is None


# ---- queue.tls: what the handshake agreed on ------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_queue_tls_says_what_the_client_sees_and_cannot_drive_the_session(
        serve, server_context, client_context, version):
    facts = []

    def remember(queue, data):
        facts.append(queue.tls)
        queue.put(data)

    client_context.minimum_version = client_context.maximum_version = version
    server_context.set_alpn_protocols(["echo/1"])
    client_context.set_alpn_protocols(["echo/1"])
    server = serve(remember, ssl=server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"?")
        assert recv_exactly(client, 1) == b"?"
        tls = facts[0]
        version = client.version()
        assert tls.version() == version
        assert tls.cipher() == client.cipher()
        assert tls.selected_alpn_protocol() == "echo/1"
        assert tls.server_hostname == "localhost"  # the name the client asked for (SNI)
        assert tls.compression() is None and tls.session_reused is False
        assert tls.getpeercert() is None and tls.getpeercert(binary_form=True) is None
        assert tls.get_channel_binding() == client.get_channel_binding()
        with pytest.raises(ValueError, match="tls-server-end-point"):
            tls.get_channel_binding("tls-server-end-point")
    # Facts only: nothing that would drive OpenSSL from the caller's thread.
    for method in ("read", "write", "unwrap", "do_handshake", "pending", "context"):
        assert not hasattr(tls, method), method
    with pytest.raises(AttributeError):
        tls.server_hostname = "elsewhere"
    assert repr(tls).startswith(f"<TLSInfo {version} ")


def test_queue_tls_is_still_there_in_on_disconnect_with_the_client_certificate(
        serve, server_context, client_context, tls_ca):
    seen = []

    def after_close(queue):
        tls = queue.tls
        seen.append((queue.close_reason, tls.version(), tls.server_hostname,
                     tls.getpeercert()["subject"], tls.getpeercert(binary_form=True)))

    server_context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_context)
    tls_ca.issue_cert("client@example.test", common_name="client one").configure_cert(
        client_context)
    server = serve(echo, ssl=server_context, on_disconnect=after_close)
    with connect_tls(server, client_context) as client:
        client.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
        version = client.version()
    wait_for(lambda: seen)
    from simpletcp import CloseReason
    reason, seen_version, name, subject, der = seen[0]
    assert (reason, seen_version, name) == (CloseReason.PEER_CLOSED, version, "localhost")
    assert ("commonName", "client one") in [part[0] for part in subject]
    assert ssl.DER_cert_to_PEM_cert(der).startswith("-----BEGIN CERTIFICATE-----")


def test_the_certificate_dict_is_a_copy(serve, server_context, client_context, tls_ca):
    hand_off = HandOff()
    server_context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_context)
    tls_ca.issue_cert("client@example.test").configure_cert(client_context)
    server = serve(hand_off, ssl=server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"x")
        tls = hand_off.first_queue().tls
        tls.getpeercert().clear()
        assert tls.getpeercert()["subjectAltName"] == (("email", "client@example.test"),)


def test_queue_tls_read_by_workers_while_the_loop_closes_the_connections(
        serve, server_context, client_context):
    # Workers read every fact in a loop while their connections are reset under them
    # and closed by the loop: the facts never change, never raise, never crash.
    failures, readers = [], []

    def read_facts(queue):
        tls = queue.tls
        first = None
        try:
            while True:
                closed = queue.close_reason is not None
                now = (tls.version(), tls.cipher(), tls.server_hostname,
                       tls.selected_alpn_protocol(), tls.getpeercert(),
                       tls.get_channel_binding(), tls.session_reused, repr(queue.tls))
                first = first or now
                assert now == first
                if closed:
                    return
        except Exception as error:  # pragma: no cover - what the test looks for
            failures.append(error)

    def hand_to_a_worker(queue, data):
        reader = threading.Thread(target=read_facts, args=(queue,))
        reader.start()
        readers.append(reader)  # started: the test may join it

    server = serve(hand_to_a_worker, ssl=server_context)
    for count in range(1, 21):
        client = connect_tls(server, client_context)
        client.sendall(b"go")
        wait_for(lambda: len(readers) == count)
        socket.socket.setsockopt(client, socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the loop closes the connection (PEER_RESET)
    for reader in readers:
        reader.join(TIMEOUT)
        assert not reader.is_alive()
    assert failures == []


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_queue_tls_says_when_a_session_was_resumed(serve, server_context, client_context,
                                                   version):
    reused = []

    def remember(queue, data):
        reused.append(queue.tls.session_reused)
        queue.put(data)

    client_context.minimum_version = client_context.maximum_version = version
    server = serve(remember, ssl=server_context)
    with connect_tls(server, client_context) as first:
        first.sendall(b"one")
        assert recv_exactly(first, 3) == b"one"  # TLS 1.3: its ticket came before this
        session = first.session
    with connect_tls(server, client_context, session=session) as second:
        second.sendall(b"two")
        assert recv_exactly(second, 3) == b"two"
        assert second.session_reused
    assert reused == [False, True]


def test_ten_megabytes_each_way_arrive_whole_and_in_order(serve, server_context,
                                                         client_context):
    payload = bytes(i % 251 for i in range(10 * 1024 * 1024))
    server = serve(echo, ssl=server_context)
    with connect_tls(server, client_context) as client:
        assert tls_exchange(client, payload, len(payload)) == payload


def test_a_small_recv_bytes_gets_records_in_slices(serve, server_context, client_context):
    # recv_bytes=7: the read buffer (7 × 128 bytes) is smaller than a TLS record, so a
    # record is decrypted in several reads, each handed out in 7-byte slices.
    sizes = []

    def echo_and_measure(queue, data):
        sizes.append(len(data))
        queue.put(data)

    payload = bytes(i % 247 for i in range(100_000))
    server = serve(echo_and_measure, ssl=server_context, recv_bytes=7)
    with connect_tls(server, client_context) as client:
        assert tls_exchange(client, payload, len(payload)) == payload
    assert max(sizes) == 7 and sum(sizes) == len(payload)


def test_a_large_recv_bytes_gets_slices_across_records(serve, server_context, client_context):
    # A record holds at most 16 KiB; a read of several is handed out in recv_bytes
    # slices, as a plain read is, not record by record.
    sizes = []

    def slow_first(queue, data):
        if not sizes:
            time.sleep(0.3)  # the loop is busy: what follows piles up in the socket
        sizes.append(len(data))
        queue.put(data)

    server = serve(slow_first, ssl=server_context, recv_bytes=65536)
    payload = bytes(i % 241 for i in range(100_000))
    with connect_tls(server, client_context) as client:
        client.sendall(b"first")
        client.sendall(payload)
        assert recv_exactly(client, 5 + len(payload)) == b"first" + payload
    assert max(sizes) > 16384, sizes


def test_one_ten_megabyte_put_arrives_whole(serve, server_context, client_context):
    big = bytes(i % 249 for i in range(10 * 1024 * 1024))

    def reply_big(queue, data):
        queue.put(big)

    server = serve(reply_big, ssl=server_context)
    with connect_tls(server, client_context) as client:
        assert tls_exchange(client, b"go", len(big)) == big


def test_reading_pauses_above_the_high_water_mark_and_nothing_is_lost(serve, server_context,
                                                                     client_context):
    queues = []

    def echo_and_remember(queue, data):
        if not queues:
            queues.append(queue)
        queue.put(data)

    server = serve(echo_and_remember, ssl=server_context, high_water=64 * 1024)
    payload = bytes(i % 253 for i in range(40 * 1024 * 1024))
    with connect_tls(server, client_context, timeout=30) as client:
        sent = 0
        while sent < len(payload):
            sent += tls_send_until_stuck(client, payload[sent:])
            # Stuck may only mean that a busy machine did not run the loop for a while:
            # once the queue is full, it means that the server stopped reading.
            if queues and queues[0].full():
                break
        assert sent < len(payload)  # the server stopped reading: TCP flow control held it
        assert queues[0].full()
        # Paused: at most the mark plus one read's worth of records (all delivered).
        assert queues[0].pending_bytes <= 64 * 1024 + 256 * 1024 + 16 * 1024
        assert tls_exchange(client, payload[sent:], len(payload)) == payload


def test_a_half_close_is_answered_in_full_then_close_notify(serve, server_context,
                                                           client_context):
    def answer_at_eof(queue, data):
        queue.put(b"reply to " + data)

    server = serve(answer_at_eof, ssl=server_context)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"question")
        socket.socket.shutdown(client, socket.SHUT_WR)  # TCP FIN, TLS untouched
        assert recv_exactly(client, 17) == b"reply to question"
        # A ragged EOF would raise SSLEOFError here: b"" is the server's close_notify.
        assert client.recv(100) == b""


def test_the_peers_close_notify_is_answered_with_ours(serve, server_context, client_context):
    server = serve(echo, ssl=server_context)
    client = connect_tls(server, client_context)
    client.sendall(b"ping")
    assert recv_exactly(client, 4) == b"ping"
    raw = client.unwrap()  # sends close_notify, returns once the server's has come
    assert raw.recv(100) == b""  # and then the TCP close
    raw.close()
    wait_for(lambda: server.connection_count == 0)


def test_queue_shutdown_sends_the_reply_then_close_notify(serve, server_context,
                                                         client_context):
    server = serve(upper_until_bye, ssl=server_context)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"bye")
        assert recv_exactly(client, 3) == b"BYE"
        assert client.recv(100) == b""


@pytest.mark.parametrize("ssl_shutdown_timeout, bound", [(0.3, 1.5), (30.0, 4.0)])
def test_a_peer_that_never_answers_close_notify_is_closed_within_ssl_shutdown_timeout(
        serve, server_context, client_context, ssl_shutdown_timeout, bound):
    """A peer that took everything and then keeps quiet is closed after 2 s at the most
    (the lingering close's quiet bound), or after a shorter ssl_shutdown_timeout."""
    closed = threading.Event()
    server = serve(upper_until_bye, ssl=server_context, on_disconnect=lambda q: closed.set(),
                   ssl_shutdown_timeout=ssl_shutdown_timeout)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"bye")
        assert recv_exactly(client, 3) == b"BYE"
        assert client.recv(100) == b""  # the server's close_notify; ours never goes
        started = time.monotonic()
        assert closed.wait(TIMEOUT)
        waited = time.monotonic() - started
    assert min(ssl_shutdown_timeout, 2.0) - 0.1 <= waited < bound, waited


def test_stop_sends_queued_replies_then_close_notify(serve, server_context, client_context):
    hand_off = HandOff()
    server = serve(hand_off, ssl=server_context)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"work")
        queue = hand_off.first_queue()
        reply = b"R" * (3 * 1024 * 1024)
        queue.put(reply)
        stopper = threading.Thread(target=server.stop, args=(TIMEOUT,))
        stopper.start()
        assert recv_exactly(client, len(reply)) == reply
        del queue
        hand_off.queues.clear()  # let go of it: the server closes once nothing holds it
        assert client.recv(100) == b""  # close_notify, not a ragged EOF
        stopper.join(TIMEOUT)
    assert not server.running


def test_an_immediate_shutdown_mid_reply_resets_rather_than_close_notify(
        serve, server_context, client_context):
    hand_off = HandOff()
    server = serve(hand_off, ssl=server_context)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"go")
        queue = hand_off.first_queue()
        queue.put(b"R" * (32 * 1024 * 1024))  # more than the sockets between us hold
        assert recv_exactly(client, 100_000) == b"R" * 100_000  # part of it is out
        queue.shutdown(immediate=True)
        # The rest is dropped: a close_notify would let the client take the part for the
        # whole reply (and could not authenticate after records it never got).
        with pytest.raises((ConnectionResetError, ssl.SSLError)):
            while client.recv(1 << 20):
                pass
        wait_for(lambda: "closed: reply cut" in repr(queue))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["TLSv1.2", "TLSv1.3"])
def test_an_immediate_shutdown_in_on_connect_closes_with_close_notify(
        serve, server_context, client_context, version):
    # An on_connect that turns a client away (a certificate it does not like) owes it
    # no reply; the handshake's last records (TLS 1.2's Finished, TLS 1.3's session
    # tickets) are still unsent then, and are the protocol's, not a reply to cut: they
    # go out, then close_notify. Before, they were dropped and the connection reset
    # (REPLY_CUT): a TLS 1.2 client's handshake failed with ECONNRESET.
    reasons = []

    def turn_away(queue):
        queue.shutdown(immediate=True)

    server = serve(echo, ssl=server_context, on_connect=turn_away,
                   on_disconnect=lambda queue: reasons.append(queue.close_reason))
    client_context.maximum_version = version
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        assert client.recv(100) == b""  # close_notify: a ragged EOF or a reset raises
    wait_for(lambda: reasons)
    assert reasons == [CloseReason.QUEUE_SHUTDOWN]


def test_the_idle_timeout_closes_with_close_notify(serve, server_context, client_context):
    server = serve(echo, ssl=server_context, idle_timeout=0.5)
    with connect_tls(server, client_context, suppress_ragged_eofs=False) as client:
        client.sendall(b"once")
        assert recv_exactly(client, 4) == b"once"
        assert client.recv(100) == b""  # after 0.5 s of nothing: close_notify, then EOF


def test_a_tls_error_after_the_handshake_closes_with_tls_error_logged_as_warning(
        serve, server_context, client_context, caplog):
    hand_off = HandOff()
    server = serve(hand_off, ssl=server_context)
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with connect_tls(server, client_context) as client:
            client.sendall(b"hello")
            queue = hand_off.first_queue()
            # An application-data record that no key made: its authentication fails.
            socket.socket.sendall(client, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
            wait_for(lambda: "closed: TLS error" in repr(queue))
    failures = [r for r in caplog.records if "TLS error" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
    assert "127.0.0.1" in failures[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("raised", [ValueError("from msg_callback"), SystemExit(3),
                                    KeyboardInterrupt()])
def test_what_the_contexts_msg_callback_raises_closes_only_that_connection(
        serve, server_context, client_context, raised):
    # The ssl module's debugging hook runs inside OpenSSL's calls, which the loop makes:
    # whatever it raises closes that connection, as a callback's exception does, and
    # the server goes on serving (a SystemExit or KeyboardInterrupt stopped it).
    armed = threading.Event()
    shots = [raised]

    def hook(ssl_object, direction, version, content_type, message_type, data):
        if armed.is_set() and direction == "read" and shots:
            raise shots.pop()

    server_context._msg_callback = hook
    hand_off = HandOff()
    server = serve(hand_off, ssl=server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"hello")
        queue = hand_off.first_queue()
        armed.set()
        client.sendall(b"the record that raises")
        wait_for(lambda: "closed: loop error" in repr(queue))
    assert not shots
    armed.clear()
    server_context._msg_callback = None
    assert server.running
    with connect_tls(server, client_context) as client:
        client.sendall(b"still served")
        wait_for(lambda: len(hand_off.queues) == 2)


def test_the_callback_never_sees_a_connection_before_its_handshake(serve, server_context,
                                                                  client_context):
    hand_off = HandOff()
    server = serve(hand_off, ssl=server_context)
    with connect(server) as raw:
        raw.sendall(b"")  # connected, no ClientHello
        wait_for(lambda: server.connection_count == 1)
        assert hand_off.queues == []
        with client_context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"now")
            assert "open" in repr(hand_off.first_queue())


# ---- mutual TLS and ALPN ---------------------------------------------------------------

def test_mutual_tls_the_callback_sees_the_verified_client_certificate(
        serve, server_context, client_context, tls_ca):
    subjects = []

    def who(queue, data):
        subject = dict(part[0] for part in queue.tls.getpeercert()["subject"])
        subjects.append(subject)
        queue.put(subject["commonName"].encode())

    server_context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_context)
    tls_ca.issue_cert("client@example.test", common_name="client one").configure_cert(
        client_context)
    server = serve(who, ssl=server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"who am I?")
        assert recv_exactly(client, 10) == b"client one"
    assert subjects[0]["commonName"] == "client one"


def test_alpn_the_protocol_agreed_is_visible_to_the_callback(serve, server_context,
                                                            client_context):
    def protocol(queue, data):
        queue.put(queue.tls.selected_alpn_protocol().encode())

    server_context.set_alpn_protocols(["h2", "http/1.1"])
    client_context.set_alpn_protocols(["http/1.1"])
    server = serve(protocol, ssl=server_context)
    with connect_tls(server, client_context) as client:
        assert client.selected_alpn_protocol() == "http/1.1"
        client.sendall(b"?")
        assert recv_exactly(client, 8) == b"http/1.1"


# ---- the PROXY header comes first --------------------------------------------------------

def test_with_proxy_protocol_the_header_comes_before_the_handshake(serve, server_context,
                                                                  client_context):
    def whom(ip, queue, data):
        queue.put(f"{ip} {queue.peer[1]}".encode())

    server = serve(whom, ssl=server_context, proxy_protocol=True)
    raw = socket.create_connection((server.ip, server.port), timeout=TIMEOUT)
    raw.sendall(proxy_v1(("192.0.2.7", 51000)))
    with client_context.wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(b"who?")
        assert recv_exactly(client, 15) == b"192.0.2.7 51000"


# ---- openssl s_client --------------------------------------------------------------------

@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_is_served(serve, server_context, tls_files, openssl, version):
    server = serve(upper_until_bye, ssl=server_context)
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
         "localhost", "-CAfile", str(tls_files["ca"]), "-verify_return_error", "-quiet",
         version],
        input=b"hello\nbye\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"HELLO\nBYE\n"


def test_openssl_s_client_alpn_and_a_client_certificate(serve, server_context, tls_ca,
                                                       tls_files, openssl, tmp_path):
    seen = []

    def remember(queue, data):
        tls = queue.tls
        seen.append((tls.selected_alpn_protocol(),
                     dict(part[0] for part in tls.getpeercert()["subject"])["commonName"]))
        upper_until_bye(queue, data)

    client_certificate = tls_ca.issue_cert("s-client@example.test", common_name="s_client")
    client_certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "c.pem"))
    server_context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_context)
    server_context.set_alpn_protocols(["echo/1"])
    server = serve(remember, ssl=server_context)
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
         "localhost", "-CAfile", str(tls_files["ca"]), "-verify_return_error", "-quiet",
         "-alpn", "other,echo/1", "-cert", str(tmp_path / "c.pem")],
        input=b"bye\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"BYE\n"
    assert seen == [("echo/1", "s_client")]


def test_a_tls_1_3_key_update_from_s_client_keeps_the_connection_serving(
        serve, server_context, tls_files, openssl):
    server = serve(upper_until_bye, ssl=server_context)
    # Not -quiet: s_client's line commands are on ("K": a KeyUpdate asking for ours).
    client = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
         "localhost", "-CAfile", str(tls_files["ca"]), "-tls1_3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def read_until(line):
            while True:
                got = client.stdout.readline()
                assert got, f"s_client ended before {line!r}"
                if got == line:
                    return

        client.stdin.write(b"before\n")
        client.stdin.flush()
        read_until(b"BEFORE\n")
        client.stdin.write(b"K\n")
        client.stdin.flush()
        read_until(b"KEYUPDATE\n")
        client.stdin.write(b"after the update, bye\n")
        client.stdin.flush()
        read_until(b"AFTER THE UPDATE, BYE\n")
    finally:
        client.stdin.close()
        client.kill()
        client.wait(TIMEOUT)


# ---- the arguments -------------------------------------------------------------------------

def test_ssl_must_be_an_ssl_context():
    with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext"):
        TCPServer("localhost", 0, echo, ssl="cert.pem")
    with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext"):
        TCPServer("localhost", 0, echo, ssl=True)


def test_a_client_side_context_is_refused(client_context):
    with pytest.raises(ValueError, match="ssl must be a server-side context"):
        TCPServer("localhost", 0, echo, ssl=client_context)
    with pytest.raises(ValueError, match="server-side"):
        TCPServer("localhost", 0, echo, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_a_context_without_a_certificate_is_refused_with_nothing_bound():
    # Served, every client's hello would fail (NO_SHARED_CIPHER): a log line per
    # connection, and a server that looks up to its health check.
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=r"^ssl: the context has no certificate.*"
                                         r"load_cert_chain"):
        TCPServer("localhost", 0, echo, ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_certificate_its_ciphers_cannot_use_is_refused(server_context):
    # TLS 1.2 only, with RSA ciphers only, and trustme's ECDSA certificate: no client
    # can agree.
    context = server_context
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    with pytest.raises(ValueError, match="no certificate to serve with"):
        TCPServer("localhost", 0, echo, ssl=context)
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # one it can use
    TCPServer("localhost", 0, echo, ssl=context).stop()



def test_a_tls_1_2_server_kept_to_a_curve_clients_rarely_offer_is_served(serve):
    """A server kept to TLS 1.2 and one curve outside OpenSSL's default client list
    (set_ecdh_curve) holds its certificate all the same: the check at construction offers
    every group, and a client offering that curve is served."""
    trustme = pytest.importorskip("trustme", reason="needs trustme: pip install '.[test]'")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", key_type=trustme.KeyType.RSA).configure_cert(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ecdh_curve("secp224r1")
    server = serve(echo, ssl=context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context.set_ecdh_curve("secp224r1")
    with connect_tls(server, client_context) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        assert client.version() == "TLSv1.2"

def test_a_context_whose_sni_callback_hands_out_the_certificate_is_served(
        serve, server_context, client_context):
    """The certificate may live only in the contexts an sni_callback hands out, one per
    name: the check at construction leaves such a context alone (it would call the
    application's callback)."""
    asked = []

    def by_name(ssl_object, server_name, context):
        asked.append(server_name)
        ssl_object.context = server_context

    bare = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    bare.sni_callback = by_name
    server = serve(echo, ssl=bare)
    assert asked == []
    with connect_tls(server, client_context) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
    assert asked == ["localhost"]


@pytest.mark.parametrize("name", ["ssl_handshake_timeout", "ssl_shutdown_timeout"])
@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError),
                                          (float("nan"), ValueError), ("5", TypeError),
                                          (None, TypeError)])
def test_tls_timeouts_are_checked(server_context, name, value, error):
    with pytest.raises(error, match=name):
        TCPServer("localhost", 0, echo, ssl=server_context, **{name: value})


# ---- TLS with the other features of a protocol server ------------------------------------

def test_tls_with_framing_events_and_returned_replies(serve, server_context, client_context):
    # The chat's recipe over TLS: on_connect speaks first once the handshake is done
    # (queue.tls is there already), Lines frames the plaintext however the
    # records cut it, the returned reply is encrypted, on_disconnect hears the end.
    from simpletcp import CloseReason
    from simpletcp.framing import Lines
    seen = []

    def greet(queue):
        seen.append(("connect", queue.tls.version()))
        return b"hello " + queue.tls.version().encode() + b"\n"

    def shout(queue, line):
        seen.append(("line", line))
        return line.upper() + b"\n"

    server = serve(shout, ssl=server_context, framing=Lines(max_length=100),
                   on_connect=greet, on_disconnect=lambda queue: seen.append(
                       ("disconnect", queue.close_reason)))
    with connect_tls(server, client_context) as client:
        banner = b"hello " + client.version().encode() + b"\n"
        assert recv_exactly(client, len(banner)) == banner
        for byte in b"one\ntw":  # one byte per TLS record
            client.sendall(bytes([byte]))
        client.sendall(b"o\n" + b"many\n" * 1000)
        expected = b"ONE\nTWO\n" + b"MANY\n" * 1000
        assert recv_exactly(client, len(expected)) == expected
        client.sendall(b"x" * 200)  # over max_length: this connection is closed
        wait_for(lambda: seen and seen[-1][0] == "disconnect")
    wait_for(lambda: seen and seen[-1][0] == "disconnect")
    assert seen[0] == ("connect", seen[0][1]) and seen[0][1] in ("TLSv1.2", "TLSv1.3")
    assert [entry for entry in seen if entry[0] == "line"] == (
        [("line", b"one"), ("line", b"two")] + [("line", b"many")] * 1000)
    assert seen[-1] == ("disconnect", CloseReason.FRAMING_ERROR)
