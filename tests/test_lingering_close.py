"""A reply queued before the server closes reaches the client whole, even when the
client has sent more that the server never reads (an answer-then-close protocol with
pipelined requests: HTTP ``Connection: close``, an error reply, a QUIT).

Closing a socket that holds unread input makes the kernel send RST and throw away
what it had not yet sent; the server shuts its write side instead, reads and
discards input until the client closes (or a bound), then closes.
"""
import logging
import threading
import time
import weakref

import pytest

from support import (connect, connect_slow_reader, echo, recv_exactly, recv_until_eof, reset_at_once,
                     wait_for)

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def pattern(size):
    """Bytes that differ from one position to the next, so a gap or a repeat shows."""
    block = bytes(range(256)) * 4096
    return (block * (size // len(block) + 1))[:size]


def serve_reply_then_close(serve, how, payload):
    """A server that answers GET with ``payload`` and then closes: by queue.shutdown(),
    server.stop() or an exception."""
    servers = []

    def callback(queue, data):
        if not data.startswith(b"GET"):
            return
        queue.put(payload)
        if how == "shutdown":
            queue.shutdown()
        elif how == "stop":
            servers[0].stop()
        else:
            raise RuntimeError("the reply is queued, then the callback fails")

    servers.append(serve(callback))
    return servers[0]


@pytest.mark.parametrize("size", [2 * MIB, 16 * MIB], ids=["2MiB", "16MiB"])
@pytest.mark.parametrize("how", ["shutdown", "stop", "raise"])
def test_a_reply_before_a_close_survives_pipelined_input(serve, how, size, caplog):
    caplog.set_level(logging.CRITICAL, logger="simpletcp")  # the raise is expected
    payload = pattern(size)
    server = serve_reply_then_close(serve, how, payload)
    with connect(server, timeout=30) as client:
        client.sendall(b"GET\n")
        time.sleep(0.2)
        client.sendall(b"more-requests\n")  # never read by the server
        assert recv_until_eof(client) == payload


@pytest.mark.parametrize("how", ["shutdown", "stop", "raise"])
def test_input_arriving_after_the_reply_is_out_does_not_reset_it(serve, how, caplog):
    # The client reads nothing until the whole reply is in the kernel's buffers and the
    # server has shut its side; what it sends then must not turn into a reset.
    caplog.set_level(logging.CRITICAL, logger="simpletcp")
    payload = pattern(256 * 1024)
    server = serve_reply_then_close(serve, how, payload)
    with connect(server, timeout=30) as client:
        client.sendall(b"GET\n")
        time.sleep(0.3)
        for _ in range(20):
            client.sendall(b"pipelined request\n" * 100)
            time.sleep(0.01)
        assert recv_until_eof(client) == payload


def test_a_client_that_keeps_sending_while_the_reply_drains_gets_it_whole(serve):
    # A client that writes a large upload after the server decided to close, and only
    # then reads: discarding its input while the reply drains keeps both sides moving.
    payload = pattern(8 * MIB)
    server = serve_reply_then_close(serve, "shutdown", payload)
    with connect(server, timeout=30) as client:
        client.sendall(b"GET\n")
        client.sendall(b"u" * (4 * MIB))  # more than both kernels' buffers hold
        assert recv_until_eof(client) == payload


@pytest.mark.slow
def test_idle_timeout_closes_gracefully_with_the_reply_still_in_flight(serve):
    # The whole reply has left the server's queue, part of it is still in the kernel:
    # the client is slow. The idle timeout fires; the client then sends something and
    # reads. It must get every byte and an EOF, not a reset.
    payload = pattern(1 * MIB)
    server = serve(lambda queue, data: queue.put(payload) if data.startswith(b"GET") else None,
                   idle_timeout=0.3)
    client = connect_slow_reader(server, 64 * 1024, timeout=30)
    with client:
        client.sendall(b"GET\n")
        time.sleep(1.0)  # longer than the idle timeout; the server has let go of the reply
        client.sendall(b"still there?\n")
        assert recv_until_eof(client) == payload


def test_connections_refused_at_the_limit_are_reset_whether_or_not_they_sent(serve):
    # Refused connections get no reply, so there is nothing to protect; they are reset
    # at once (one clear signal, no descriptor kept for them).
    server = serve(echo, connection_limit=1)
    with connect(server) as member:
        member.sendall(b"in")
        assert recv_exactly(member, 2) == b"in"
        assert reset_at_once(server.port, b"GET / HTTP/1.1\r\n\r\n")
        assert reset_at_once(server.port)
        member.sendall(b"still served")
        assert recv_exactly(member, 12) == b"still served"


def test_shutdown_immediate_drops_the_queue_but_still_closes_gracefully(serve):
    def drop_and_close(queue, data):
        queue.put(b"never sent" * 1000)
        queue.shutdown(immediate=True)

    server = serve(drop_and_close)
    with connect(server) as client:
        client.sendall(b"go")
        time.sleep(0.2)
        client.sendall(b"unread by the server")
        assert recv_until_eof(client) == b""  # EOF, not a reset


@pytest.mark.parametrize("caller", ["worker", "callback"])
def test_shutdown_immediate_in_the_middle_of_a_reply_resets(serve, caller):
    # Part of an 8 MiB reply is out when shutdown(immediate=True) drops the rest: an
    # EOF would let the client take the part it got for the whole reply. Found it: the
    # client read 3.9 MB of the 8 MiB, then a clean EOF.
    queues = []

    def callback(queue, data):
        if data == b"GET":
            queue.put(pattern(8 * MIB))
            queues.append(queue)
        elif data == b"ABORT":
            queue.shutdown(immediate=True)

    server = serve(callback, high_water=64 * MIB)  # keeps reading while the reply waits
    client = connect_slow_reader(server, 64 * 1024, timeout=10)
    with client:
        client.sendall(b"GET")
        wait_for(lambda: queues and 0 < queues[0].pending_bytes < 8 * MIB)  # partly sent
        if caller == "worker":
            queues[0].shutdown(immediate=True)
        else:
            client.sendall(b"ABORT")
        with pytest.raises(ConnectionResetError):
            recv_until_eof(client)


@pytest.mark.slow
def test_a_peer_that_keeps_the_connection_after_eof_is_let_go_once_quiet(serve):
    # Lingering ends LINGER_QUIET_SECONDS (2 s) after the peer's last byte, once it has
    # acknowledged everything: a client that never closes does not hold a descriptor.
    server = serve_reply_then_close(serve, "shutdown", b"bye")
    with connect(server) as client:
        client.sendall(b"GET\n")
        assert recv_until_eof(client) == b"bye"
        started = time.monotonic()
        wait_for(lambda: server.connection_count == 0, timeout=10)
        assert 1.5 < time.monotonic() - started < 8


@pytest.mark.slow
def test_a_peer_that_streams_after_the_close_is_cut_off_by_the_byte_bound(serve):
    # Every byte resets the quiet timer; only LINGER_MAX_BYTES (16 MiB) ends it.
    server = serve_reply_then_close(serve, "shutdown", b"bye")
    client = connect(server)
    client.sendall(b"GET\n")
    assert recv_exactly(client, 3) == b"bye"
    sent = [0]

    def stream():
        try:
            while True:
                sent[0] += client.send(b"s" * 65536)
        except OSError:
            pass  # reset once the server gives up

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    wait_for(lambda: server.connection_count == 0, timeout=20)
    client.close()
    streamer.join(10)
    assert sent[0] >= 16 * MIB


def upload_in_the_background(client, size):
    """Send ``size`` bytes from a thread, as a client uploading a request body does even
    after the server has answered; the count of bytes the kernel took, as it goes."""
    uploaded = [0]

    def upload():
        try:
            while uploaded[0] < size:
                uploaded[0] += client.send(b"u" * 65536)
        except OSError:
            pass  # reset once the server is done with the connection

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    return uploader, uploaded


def recv_until_closed(sock, pause=0.0):
    """What arrives until EOF, or until a reset that follows it (a reset after the whole
    reply was acknowledged loses none of it)."""
    received = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            time.sleep(pause)
    except ConnectionResetError:
        pass
    return bytes(received)


@pytest.mark.slow
def test_a_client_that_uploads_past_the_byte_bound_while_the_reply_drains_gets_it_whole(serve):
    # An upload that goes on after the server decided to close (a 413-style answer to a
    # large request) is read and dropped up to LINGER_MAX_BYTES while the reply still
    # drains: past the bound the server stops reading, but must not reset the reply's
    # tail away once it is in the kernel. Found it: 63.4 MB of the 64 MiB reply, then a
    # clean EOF (the uploading thread had taken the reset).
    payload = pattern(64 * MIB)
    server = serve_reply_then_close(serve, "shutdown", payload)
    with connect(server, timeout=30) as client:
        client.sendall(b"GET\n")
        uploader, uploaded = upload_in_the_background(client, 64 * MIB)
        received = recv_until_closed(client, pause=0.0005)  # slower: the reply drains
        uploader.join(10)
    assert uploaded[0] > 16 * MIB  # past the byte bound while the reply drained
    assert len(received) == len(payload) and received == payload


@pytest.mark.slow
def test_a_client_that_uploads_past_the_byte_bound_before_reading_gets_the_reply_whole(serve):
    # The same with the whole reply already in the kernel (lingering) and the client
    # reading only once its upload is stuck: the server stopped reading at the bound and
    # waits for the reply to be acknowledged before it closes. Found it: the reset at
    # the bound threw away what the client's small receive buffer had not taken yet.
    payload = pattern(2 * MIB)
    server = serve_reply_then_close(serve, "shutdown", payload)
    client = connect_slow_reader(server, 64 * 1024, timeout=30)
    with client:
        client.sendall(b"GET\n")
        uploader, uploaded = upload_in_the_background(client, 64 * MIB)
        stuck_at = -1
        while stuck_at != uploaded[0]:  # the server no longer reads: past the bound
            stuck_at = uploaded[0]
            time.sleep(0.5)
        received = recv_until_closed(client)
        uploader.join(10)
    assert uploaded[0] > 16 * MIB
    assert len(received) == len(payload) and received == payload


@pytest.mark.soak
@pytest.mark.timeout(90)
def test_a_peer_that_trickles_input_is_cut_off_by_the_time_bound(serve):
    # One byte a second keeps the peer from being quiet; LINGER_MAX_SECONDS (30 s) ends it.
    server = serve_reply_then_close(serve, "shutdown", b"bye")
    with connect(server) as client:
        client.sendall(b"GET\n")
        assert recv_exactly(client, 3) == b"bye"
        started = time.monotonic()
        try:
            while server.connection_count and time.monotonic() - started < 60:
                client.sendall(b".")
                time.sleep(1)
        except OSError:
            pass
        assert server.connection_count == 0
        assert 29 < time.monotonic() - started < 40


@pytest.mark.slow
def test_stop_closes_idle_connections_at_once(serve):
    # A connection quiet for LINGER_QUIET_SECONDS that has acknowledged all it was sent
    # is owed nothing: stop() closes it without lingering.
    server = serve(echo)
    with connect(server) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
        time.sleep(2.5)
        started = time.monotonic()
        assert server.stop(timeout=10)
        assert time.monotonic() - started < 1.0
        assert recv_until_eof(client) == b""


@pytest.mark.slow
def test_stop_lingers_for_a_client_that_just_talked_then_lets_it_go(serve):
    # The client may still be sending (pipelining): the server shuts its side, waits
    # for the client to close or be quiet 2 s, and does not exceed the grace period.
    server = serve(echo, grace_period=10)
    with connect(server) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
        started = time.monotonic()
        assert server.stop(timeout=15)
        assert 1.5 < time.monotonic() - started < 8
        assert recv_until_eof(client) == b""


def test_a_late_put_to_a_lingering_connection_is_dropped_quietly(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="simpletcp")
    queues = []

    def keep_and_fail(queue, data):
        queues.append(queue)
        queue.put(b"answer")
        raise ValueError("the worker will put more, too late")

    server = serve(keep_and_fail)
    with connect(server) as client:
        client.sendall(b"GET\n")
        assert recv_until_eof(client) == b"answer"
        queues[0].put(b"too late")  # the server has shut its side: dropped
        assert any("dropped" in r.getMessage() for r in caplog.records)


def relay_to_a_stuck_client(serve, close_it, **keywords):
    """A server where one client ("stuck", which never reads) gets, one byte per put,
    what another client ("talker") sends, until its queue is full(): then the talker's
    callback calls ``close_it(stuck_queue)``. Returns (server, weak reference to the
    stuck client's queue, the event set once it is cut off, the stuck client, the
    talker). One-byte puts cannot be cut in the middle, so the close is never the
    reset of a reply cut short: it is the graceful one, with the kernel's send buffer
    full of bytes the client never takes."""
    stuck_queues = []
    cut_off = threading.Event()

    def relay(queue, data):
        if data == b"stuck":
            stuck_queues.append(weakref.ref(queue))
            return
        stuck = stuck_queues[0]()
        if stuck is None or cut_off.is_set():
            return
        if stuck.full():
            close_it(stuck)
            cut_off.set()
            return
        for i in range(len(data)):
            stuck.put(data[i:i + 1])

    server = serve(relay, high_water=64 * 1024, **keywords)
    stuck_client = connect_slow_reader(server, 4096, timeout=10)
    stuck_client.sendall(b"stuck")
    wait_for(lambda: stuck_queues)
    talker = connect(server)
    return server, stuck_queues[0], cut_off, stuck_client, talker


def fill_until_cut_off(cut_off, talker):
    """Talk until the talker's callback finds the stuck client's queue full and cuts
    it off (relay_to_a_stuck_client)."""
    deadline = time.monotonic() + 10
    while not cut_off.is_set():
        assert time.monotonic() < deadline, "the stuck client's queue never filled"
        talker.sendall(b"y" * 16384)
        time.sleep(0.001)  # its output is sent between the talker's reads


@pytest.mark.parametrize("caller", ["callback", "worker"])
def test_a_client_that_stops_reading_is_let_go_after_shutdown_immediate(serve, caller):
    # Another connection's callback (or a worker it hands the queue to) cuts off a
    # client that stopped reading, at a whole-put boundary: the close is graceful and
    # lingers, and lingering waited for the client to acknowledge what the kernel
    # holds, which it never does: the connection (and whatever holds its queue, a chat
    # server's member list) stayed 30 s (LINGER_MAX_MS). Found by the chat example on
    # the large-read branch, where a whole 256 KiB read of the talker fills the stuck
    # member's queue between two of its sends. Now it goes once it has taken nothing
    # for LINGER_QUIET_MS.
    def shut(queue):
        if caller == "callback":
            queue.shutdown(immediate=True)
        else:
            threading.Thread(target=queue.shutdown, args=(True,)).start()

    server, stuck_queue, cut_off, stuck_client, talker = relay_to_a_stuck_client(serve, shut)
    with stuck_client, talker:
        fill_until_cut_off(cut_off, talker)
        wait_for(lambda: stuck_queue() is None, timeout=15)  # 2 s quiet, not 30 s


def test_stop_lets_a_lingering_client_that_stopped_reading_go(serve):
    # The same stuck client when the server stops, with a grace period longer than
    # LINGER_MAX_MS: stop() waited 30 s for it, now LINGER_QUIET_MS.
    server, stuck_queue, cut_off, stuck_client, talker = relay_to_a_stuck_client(
        serve, lambda queue: queue.shutdown(immediate=True), grace_period=60)
    with stuck_client, talker:
        fill_until_cut_off(cut_off, talker)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10


def test_a_client_that_stops_reading_after_shutdown_is_cut_off_by_the_idle_timeout(serve):
    # The same client cut off by a plain shutdown(): what is queued is owed to it, so
    # the connection drains as long as the client takes it; with an idle timeout, one
    # that takes nothing is let go: reset if the loop still holds output for it (its
    # reply would be cut), or closed once lingering sees no progress if the kernel
    # took it all.
    server, stuck_queue, cut_off, stuck_client, talker = relay_to_a_stuck_client(
        serve, lambda queue: queue.shutdown(), idle_timeout=1)
    with stuck_client, talker:
        fill_until_cut_off(cut_off, talker)
        wait_for(lambda: stuck_queue() is None, timeout=15)
        received = bytearray()
        try:  # what the kernel holds, then EOF or the reset: never a hang (timeout 10 s)
            while chunk := stuck_client.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            pass
        assert received.count(b"y") == len(received)  # what was relayed, nothing else
