"""Reaching every client: server.connections() and server.broadcast(), from callbacks
and from other threads, over real sockets on every backend."""
import socket
import threading

import pytest

from simpletcp.tcpserver import TCPServer
from support import (TIMEOUT, connect, connect_slow_reader, descriptor_limit, echo,
                     read_line, recv_exactly, reset, wait_for)

pytestmark = pytest.mark.timeout(120)


def chat(server_box):
    """A line chat's read callback: "say X" goes to everyone else, "who" counts them."""
    def read(queue, data):
        server = server_box[0]
        if data.startswith(b"say "):
            server.broadcast(data[4:], exclude=queue)
            queue.put(b"ok\n")
        elif data == b"who":
            queue.put(b"%d\n" % len(server.connections()))
        else:
            queue.put(data)
    return read


def test_connections_lists_the_open_connections_oldest_first(serve):
    server = serve(echo)
    assert server.connections() == []
    clients = [connect(server) for _ in range(3)]
    wait_for(lambda: len(server.connections()) == 3)
    assert [queue.peer[1] for queue in server.connections()] == [
        client.getsockname()[1] for client in clients]
    assert all(queue.close_reason is None for queue in server.connections())
    clients[1].close()
    wait_for(lambda: len(server.connections()) == 2)
    assert [queue.peer[1] for queue in server.connections()] == [
        clients[0].getsockname()[1], clients[2].getsockname()[1]]
    snapshot = server.connections()
    snapshot.clear()  # a list of its own
    assert len(server.connections()) == 2
    for client in clients:
        client.close()
    wait_for(lambda: server.connections() == [])


def test_a_broadcast_reaches_everyone_but_the_sender(serve):
    box = []
    server = serve(chat(box))
    box.append(server)
    clients = [connect(server) for _ in range(5)]
    wait_for(lambda: len(server.connections()) == 5)
    clients[0].sendall(b"who")
    assert read_line(clients[0]) == b"5\n"  # connections() from a callback
    clients[0].sendall(b"say hello\n")
    # What was broadcast to the sender would have come before its "ok".
    assert recv_exactly(clients[0], 3) == b"ok\n"
    for client in clients[1:]:
        assert read_line(client) == b"hello\n"
    for client in clients:
        client.close()


def test_500_clients_get_a_broadcast_from_another_thread(serve):
    with descriptor_limit(2 * 500 + 200):  # both ends of each connection live here
        server = serve(echo)
        clients = [connect(server) for _ in range(500)]
        try:
            wait_for(lambda: len(server.connections()) == 500)
            results = []
            sender = threading.Thread(target=lambda: results.append(
                server.broadcast(bytearray(b"news for all\n"))))
            sender.start()
            sender.join(TIMEOUT)
            assert results == [[]]  # none left out
            for client in clients:
                assert recv_exactly(client, 13) == b"news for all\n"
        finally:
            for client in clients:
                client.close()


def test_broadcasting_while_clients_come_and_go(serve):
    # One thread broadcasts numbered lines as fast as it can (and takes snapshots of
    # connections()) while another connects and drops clients (closing or resetting
    # them); the clients open throughout are in every snapshot, and get every line, in
    # order, and every reply to their own requests, interleaved.
    lines, stable_count, stable_requests = 3000, 8, 50
    server = serve(echo)
    stable = [connect(server) for _ in range(stable_count)]
    wait_for(lambda: len(server.connections()) == stable_count)
    stable_ports = {client.getsockname()[1] for client in stable}
    done = threading.Event()
    left_out = []
    missing = []
    failures = []

    def broadcast():
        for number in range(lines):
            left = server.broadcast(b"B%d\n" % number)
            left_out.extend(q.peer[1] for q in left if q.peer[1] in stable_ports)
            if number % 10 == 0:  # the snapshot, taken meanwhile, has every stable one
                listed = {queue.peer[1] for queue in server.connections()}
                missing.extend(stable_ports - listed)

    def churn():
        churned = 0
        while not done.is_set() or churned < 50:
            client = connect(server)
            client.sendall(b"E\n")
            if churned % 2:
                reset(client)
            else:
                client.close()
            churned += 1

    def talk(client):
        try:
            got_broadcast, got_replies = [], 0
            for request in range(stable_requests):
                client.sendall(b"E%d\n" % request)
            while len(got_broadcast) < lines or got_replies < stable_requests:
                line = read_line(client)
                if line.startswith(b"B"):
                    got_broadcast.append(int(line[1:]))
                else:
                    assert line == b"E%d\n" % got_replies
                    got_replies += 1
            assert got_broadcast == list(range(lines))
        except BaseException as error:  # reported by the test's thread
            failures.append(error)

    threads = [threading.Thread(target=talk, args=(client,)) for client in stable]
    churner = threading.Thread(target=churn)
    broadcaster = threading.Thread(target=broadcast)
    for thread in threads + [churner, broadcaster]:
        thread.start()
    broadcaster.join(60)
    done.set()
    churner.join(60)
    for thread in threads:
        thread.join(60)
    assert not broadcaster.is_alive() and not churner.is_alive()
    assert failures == []
    assert left_out == [] and missing == []
    for client in stable:
        client.close()
    wait_for(lambda: server.connections() == [])


def test_a_client_that_stopped_reading_is_left_out_not_waited_for(serve):
    # The high-water rule: a broadcast never blocks; a connection whose unsent output is
    # at or above high_water is left out (its queue returned), so its memory is bounded
    # by high_water and one chunk; every other connection gets every byte.
    high_water = 64 * 1024
    chunk = bytes(range(256)) * 64  # 16 KiB
    box = []

    def read(queue, data):
        if data == b"broadcast":  # from the loop's thread: never waits either
            left = box[0].broadcast(chunk, exclude=queue)
            queue.put(b"left out %d\n" % len(left))

    server = serve(read, high_water=high_water)
    box.append(server)
    stalled = connect_slow_reader(server, 4096)
    reader = connect(server)
    wait_for(lambda: len(server.connections()) == 2)
    left = []
    for _ in range(4000):  # the kernel's buffers fill first: a few MiB on loopback
        left = server.broadcast(chunk)
        assert recv_exactly(reader, len(chunk)) == chunk  # the reader gets every one
        if left:
            break
    assert [queue.peer for queue in left] == [stalled.getsockname()]
    assert left[0].pending_bytes < high_water + len(chunk)
    # From a callback too: the reader asks, and its reply proves nothing waited.
    reader.sendall(b"broadcast")
    assert read_line(reader) == b"left out 1\n"
    stalled.close()
    reader.close()


@pytest.mark.parametrize("data, error", [
    ("text", "server.broadcast\\(\\) takes a bytes-like object, not str"),
    (42, "server.broadcast\\(\\) takes a bytes-like object \\(bytes, bytearray, "
         "memoryview\\), not int"),
])
def test_broadcast_refuses_what_is_not_bytes(serve, data, error):
    server = serve(echo)
    with pytest.raises(TypeError, match=error):
        server.broadcast(data)


def test_exclude_must_be_a_queue(serve):
    server = serve(echo)
    with connect(server):
        wait_for(lambda: len(server.connections()) == 1)
        queue = server.connections()[0]
        with pytest.raises(TypeError, match="exclude must be a connection's queue"):
            server.broadcast(b"x", exclude=[queue])
        with pytest.raises(TypeError, match="exclude must be a connection's queue"):
            server.broadcast(b"x", exclude=queue.peer)


def test_a_broadcast_is_copied_once_when_given(serve):
    server = serve(echo)
    with connect(server) as client:
        wait_for(lambda: len(server.connections()) == 1)
        data = bytearray(b"before")
        assert server.broadcast(data) == []
        data[:] = b"AFTER!"
        assert recv_exactly(client, 6) == b"before"
        assert server.broadcast(b"") == []  # nothing to send
        client.sendall(b"x")
        assert client.recv(10) == b"x"


def test_shut_down_and_closing_connections_are_skipped(serve):
    def read(queue, data):
        queue.shutdown()

    server = serve(read)
    with connect(server) as client:
        client.sendall(b"bye")
        wait_for(lambda: all(q.close_reason is not None for q in server.connections()))
        assert server.broadcast(b"late news") == []  # no ShutDown raised, nothing sent
        assert client.recv(100) == b""


def test_before_and_after_serving_there_is_no_one_to_reach():
    server = TCPServer("localhost", 0, echo)
    assert server.connections() == []
    assert server.broadcast(b"nobody") == []
    server.start()
    assert server.stop(timeout=TIMEOUT)
    assert server.connections() == []
    assert server.broadcast(b"nobody") == []


def test_a_connection_is_listed_from_on_connect_until_it_closes(serve):
    box, seen = [], []
    server = serve(echo,
                   on_connect=lambda queue: seen.append(queue in box[0].connections()),
                   on_disconnect=lambda queue: seen.append(queue in box[0].connections()))
    box.append(server)
    with connect(server) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    wait_for(lambda: len(seen) == 2)
    assert seen == [True, False]
