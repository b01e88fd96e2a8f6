"""Backpressure, the connection limit, the idle timeout and SIGTERM."""
import logging
import math
import platform
import queue as queue_module
import signal
import socket
import threading
import time

import pytest

from simpletcp.tcpserver import TCPServer
from support import (SIGNALLED_SERVER, TIMEOUT, HandOff, child_server, connect, echo,
                     recv_exactly, recv_until_eof, reset_at_once, rss_kib, wait_for)

pytestmark = pytest.mark.timeout(60)


def test_reading_pauses_above_the_high_water_mark(serve):
    queues = []

    def echo_and_remember(queue, data):
        if not queues:
            queues.append(queue)
        queue.put(data)

    server = serve(echo_and_remember, high_water=64 * 1024)
    payload = bytes(i % 253 for i in range(40 * 1024 * 1024))
    client = connect(server, timeout=30)
    writer = threading.Thread(target=client.sendall, args=(payload,))
    writer.start()
    wait_for(lambda: queues and queues[0].full())
    time.sleep(0.3)  # the client keeps writing, the server must not keep reading
    # Paused: at most the mark plus the echo of one read (up to 256 KiB, handed out in
    # slices that are all delivered: README, "recv_bytes"), far below what was sent.
    assert queues[0].pending_bytes <= 64 * 1024 + 256 * 1024
    assert writer.is_alive()  # the client's sendall is held up by TCP flow control
    assert recv_exactly(client, len(payload)) == payload  # nothing lost, in order
    writer.join(10)
    client.close()


def test_put_from_another_thread_waits_above_the_mark(serve):
    hand_off = HandOff()
    server = serve(hand_off, high_water=256 * 1024, low_water=64 * 1024)
    client = connect(server, timeout=30)
    client.sendall(b"go")
    q = hand_off.first_queue()
    big = b"B" * (8 * 1024 * 1024)
    q.put(big)  # below the mark when called: accepted at once
    wait_for(q.full)
    with pytest.raises(queue_module.Full):
        q.put_nowait(b"no room")
    with pytest.raises(queue_module.Full):
        started = time.monotonic()
        q.put(b"no room", timeout=0.2)
    assert time.monotonic() - started >= 0.19

    blocked_put_done = threading.Event()

    def blocked_put():
        q.put(b"after the drain")  # blocks until the client reads
        blocked_put_done.set()

    putter = threading.Thread(target=blocked_put)
    putter.start()
    assert not blocked_put_done.wait(0.3)
    assert recv_exactly(client, len(big)) == big
    assert blocked_put_done.wait(10)
    assert recv_exactly(client, 15) == b"after the drain"
    putter.join()
    client.close()


@pytest.mark.parametrize("timeout, error", [("5", TypeError), (math.nan, ValueError),
                                            (-1, ValueError)], ids=["str", "nan", "negative"])
def test_a_put_with_a_bad_timeout_raises_naming_it(serve, timeout, error):
    # Found it: timeout=nan spun the calling thread at 100% CPU for as long as the
    # client did not read (a Condition wait of NaN seconds returns at once), and "5"
    # raised a TypeError about '<' that named nothing.
    hand_off = HandOff()
    server = serve(hand_off, high_water=64 * 1024)
    with connect(server) as client:
        client.sendall(b"go")
        queue = hand_off.first_queue()
        queue.put(b"x" * (32 * 1024 * 1024))  # more than the kernel's buffers take
        wait_for(queue.full)
        raised = []

        def put_late():
            try:
                queue.put(b"late", timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                raised.append(exc)

        putter = threading.Thread(target=put_late, daemon=True)
        putter.start()
        putter.join(5)
        assert not putter.is_alive(), "put() is still waiting (or spinning)"
        assert len(raised) == 1 and isinstance(raised[0], error), raised
        assert "timeout" in str(raised[0])


@pytest.mark.parametrize("timeout", [math.inf, 1e300])
def test_a_put_with_an_infinite_timeout_waits_like_none(serve, timeout):
    # Found it: OverflowError at once ("timestamp too large"), not a wait.
    hand_off = HandOff()
    server = serve(hand_off, high_water=64 * 1024)
    with connect(server, timeout=30) as client:
        client.sendall(b"go")
        queue = hand_off.first_queue()
        big = b"x" * (32 * 1024 * 1024)  # more than the kernel's buffers take
        queue.put(big)
        wait_for(queue.full)
        putter = threading.Thread(target=queue.put, args=(b"after", True, timeout))
        putter.start()
        time.sleep(0.3)
        assert putter.is_alive()  # waiting for room
        assert recv_exactly(client, len(big) + 5) == big + b"after"
        putter.join(10)
        assert not putter.is_alive()


def test_blocked_put_returns_when_the_connection_closes(serve):
    hand_off = HandOff()
    server = serve(hand_off, high_water=64 * 1024)
    client = connect(server)
    client.sendall(b"go")
    queue = hand_off.first_queue()
    queue.put(b"x" * (4 * 1024 * 1024))
    wait_for(queue.full)
    result = []
    putter = threading.Thread(target=lambda: result.append(queue.put(b"late")))
    putter.start()
    time.sleep(0.1)
    client.close()  # the peer goes away: the waiting put gives up quietly
    putter.join(10)
    assert not putter.is_alive() and result == [None]


def test_a_worker_streaming_while_the_server_stops_is_held_to_the_mark(serve):
    # Stopping waits for a worker that still holds the queue, and sends what it puts:
    # its puts must still wait above the mark, or a slow client lets the whole stream
    # pile up in the server. Found it: 191 MiB unsent of a 200 MiB stream, with a
    # 1 MiB mark (puts only waited while the connection was OPEN).
    chunk = b"c" * (256 * 1024)
    chunks = 64  # 16 MiB
    high_water = 256 * 1024
    peak = [0]
    hand_off = HandOff()
    server = serve(hand_off, high_water=high_water, grace_period=30)

    def worker(queue):
        for _ in range(chunks):
            queue.put(chunk)
            peak[0] = max(peak[0], queue.pending_bytes)

    client = connect(server, timeout=30)
    with client:
        client.sendall(b"stream")
        streamer = threading.Thread(target=worker, args=(hand_off.first_queue(),))
        hand_off.queues.clear()  # only the worker holds it now
        streamer.start()
        assert recv_exactly(client, 4 * len(chunk)) == chunk * 4
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        received = 4 * len(chunk)
        while received < chunks * len(chunk):
            received += len(recv_exactly(client, len(chunk)))
            time.sleep(0.002)  # a slow reader
        streamer.join(10)
        stopper.join(10)
        assert not stopper.is_alive()
    assert peak[0] <= high_water + len(chunk), f"{peak[0]} bytes unsent at the peak"


def test_put_from_the_callback_never_blocks(serve):
    def flood(queue, data):
        for _ in range(64):
            queue.put(b"f" * 65536)  # 4 MB against a 64 KiB mark
        queue.put(b"END")

    server = serve(flood, high_water=64 * 1024)
    with connect(server, timeout=30) as client:
        client.sendall(b"go")
        assert recv_exactly(client, 64 * 65536 + 3).endswith(b"END")


def assert_refused(server):
    """A connection beyond the limit is accepted by the kernel, then reset at once."""
    assert reset_at_once(server.port, b"over")


def test_connection_limit_closes_the_extra_connections(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(echo, connection_limit=3)
    clients = [connect(server) for _ in range(3)]
    for client in clients:
        client.sendall(b"in")
        assert client.recv(10) == b"in"
    for _ in range(2):
        assert_refused(server)
    warnings = [r for r in caplog.records if "connection limit" in r.getMessage()]
    assert len(warnings) == 1  # not one per refused connection
    clients.pop().close()
    wait_for(lambda: server.connection_count == 2)
    with connect(server) as late:
        late.sendall(b"room again")
        assert late.recv(20) == b"room again"
    for client in clients:
        client.close()


def test_connection_limit_under_churn_is_not_a_log_flood(serve, caplog):
    # At the limit, every connection that ends makes room for one more; the warning
    # must not come back with each of them.
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(echo, connection_limit=2)
    members = [connect(server), connect(server)]
    for member in members:
        member.sendall(b"in")
        assert member.recv(10) == b"in"
    for turn in range(5):
        assert_refused(server)
        members.pop(0).close()
        wait_for(lambda: server.connection_count == 1)
        newcomer = connect(server)
        newcomer.sendall(b"room")
        assert recv_exactly(newcomer, 4) == b"room"
        members.append(newcomer)
    for member in members:
        member.close()
    warnings = [r for r in caplog.records if "connection limit" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


@pytest.mark.slow
def test_idle_connections_are_closed_and_active_ones_kept(serve):
    server = serve(echo, idle_timeout=0.4)
    silent = connect(server)
    chatty = connect(server)
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        chatty.sendall(b".")
        assert chatty.recv(1) == b"."
        time.sleep(0.1)
    assert recv_until_eof(silent) == b""  # closed by the server
    assert 0.3 < time.monotonic() - started
    chatty.sendall(b"still open")
    assert recv_exactly(chatty, 10) == b"still open"
    silent.close()
    chatty.close()


# x86-64 system call numbers of the loop's waits: epoll_wait(epfd, events, max, timeout)
# and poll(fds, count, timeout); which argument is the timeout in milliseconds.
WAIT_TIMEOUT_ARGUMENT = {"232": 4, "7": 3}


def wait_timeout_ms(server):
    """The timeout (ms, as the C int the kernel got) of the wait the server's loop is
    blocked in, read from /proc; skips where the wait is another system call."""
    if platform.machine() != "x86_64":
        pytest.skip("reads x86-64 system call arguments from /proc")
    path = f"/proc/self/task/{server._thread.native_id}/syscall"
    deadline = time.monotonic() + TIMEOUT
    while True:
        fields = open(path).read().split()
        if fields[0] in WAIT_TIMEOUT_ARGUMENT:
            raw = int(fields[WAIT_TIMEOUT_ARGUMENT[fields[0]]], 16) & 0xFFFFFFFF
            return raw - (1 << 32) if raw >= 1 << 31 else raw
        if time.monotonic() > deadline:
            pytest.skip(f"the loop waits in system call {fields[0]}, not epoll_wait/poll")
        time.sleep(0.01)


def test_the_longest_idle_timeout_still_bounds_the_wait(serve):
    # Found it: with a deadline more than 24.8 days away the wait's timeout in ms
    # overflowed the C int into a negative number, which means "wait forever". Durations
    # are now capped at a week, and the loop clamps the wait anyway.
    server = serve(echo, idle_timeout=7 * 24 * 3600.0)
    with connect(server) as client:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        assert wait_timeout_ms(server) > 0


@pytest.mark.parametrize("kwargs, error, word", [
    ({"high_water": 0}, ValueError, "high_water"),
    ({"high_water": 1.5}, TypeError, "high_water"),
    ({"low_water": 2 << 20}, ValueError, "low_water"),
    ({"low_water": -1}, ValueError, "low_water"),
    ({"connection_limit": 0}, ValueError, "connection_limit"),
    ({"idle_timeout": 0}, ValueError, "idle_timeout"),
    ({"idle_timeout": "5"}, TypeError, "idle_timeout"),
])
def test_reliability_keywords_are_checked(kwargs, error, word):
    with pytest.raises(error, match=word):
        TCPServer("localhost", 0, echo, **kwargs)


def test_sigterm_while_run_serves_flushes_and_returns(backend):
    with child_server(SIGNALLED_SERVER, backend, "default", "20") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"big")
            first = client.recv(1)  # the reply is being sent, most of it still queued
            child.send_signal(signal.SIGTERM)
            rest = recv_until_eof(client)
        assert len(first + rest) == 20 * 1024 * 1024
        out, err = child.communicate(timeout=10)
    assert child.returncode == 0, err
    assert "run returned" in out


@pytest.mark.timeout(120)
def test_a_client_that_writes_300_mb_and_never_reads_grows_the_server_by_the_mark(backend):
    with child_server(None, "--backend", backend) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as warm:
            warm.sendall(b"x" * 100_000)
            recv_exactly(warm, 100_000)
        before = rss_kib(child.pid)
        client = socket.create_connection(("127.0.0.1", port))
        client.settimeout(0.5)
        chunk = b"w" * (1 << 20)
        written = 0
        try:
            while written < 300 * (1 << 20):
                written += client.send(chunk)
        except socket.timeout:
            pass  # the server stopped reading and the kernel buffers are full
        time.sleep(0.2)
        growth_kib = rss_kib(child.pid) - before
        # The default high-water mark is 1 MiB; allow for the allocator and reads in flight.
        assert growth_kib < 6 * 1024, f"server grew by {growth_kib} KiB after {written} bytes"
        assert written < 300 * (1 << 20)
        client.close()