"""Connection life: half-close, EOF, resets, failing callbacks, and 10,000 connections."""
import logging
import socket
import threading

import pytest

from support import (SIGNALLED_SERVER, child_server, connect, descriptor_limit, echo, recv_exactly,
                     recv_until_eof, reset, wait_for)

pytestmark = pytest.mark.timeout(120)


def test_half_close_still_gets_queued_replies(serve):
    payload = b"h" * (8 * 1024 * 1024)

    def big_reply(queue, data):
        queue.put(payload)

    server = serve(big_reply)
    with connect(server, timeout=30) as client:
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == payload
    wait_for(lambda: server.connection_count == 0)


def test_connection_count_follows_clients(serve):
    server = serve(echo)
    clients = [connect(server) for _ in range(5)]
    for client in clients:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    assert server.connection_count == 5
    for client in clients:
        client.close()
    wait_for(lambda: server.connection_count == 0)


def test_peer_reset_mid_write_is_quiet_and_others_are_served(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="simpletcp")
    queued = threading.Event()

    def big_reply(queue, data):
        if data == b"big":
            queue.put(b"r" * (20 * 1024 * 1024))
            queued.set()
        else:
            queue.put(data)

    server = serve(big_reply)
    victim = connect(server)
    victim.sendall(b"big")
    assert queued.wait(5)
    victim.recv(1000)  # the server is mid-write
    reset(victim)
    with connect(server) as other:
        other.sendall(b"still here")
        assert recv_exactly(other, 10) == b"still here"
    wait_for(lambda: server.connection_count == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_callback_exception_is_logged_and_closes_only_its_connection(serve, caplog):
    def fragile(queue, data):
        if data == b"boom":
            queue.put(b"partial answer")
            raise RuntimeError("callback failed on purpose")
        queue.put(data)

    server = serve(fragile)
    with connect(server) as healthy, connect(server) as doomed:
        healthy.sendall(b"one")
        assert recv_exactly(healthy, 3) == b"one"
        doomed.sendall(b"boom")
        # What was queued before the exception is still sent, then the connection closes.
        assert recv_until_eof(doomed) == b"partial answer"
        healthy.sendall(b"two")
        assert recv_exactly(healthy, 3) == b"two"
    errors = [r for r in caplog.records if r.name == "simpletcp" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info and "callback failed on purpose" in str(errors[0].exc_info[1])


def test_put_after_the_connection_closed_is_dropped_quietly(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="simpletcp")
    queues = []
    server = serve(lambda queue, data: queues.append(queue))
    with connect(server) as client:
        client.sendall(b"x")
        wait_for(lambda: queues)
    wait_for(lambda: server.connection_count == 0)
    queues[0].put(b"nobody is listening")  # no exception
    assert any("dropped" in r.getMessage() for r in caplog.records)
    # and the loop is fine
    with connect(server) as client:
        client.sendall(b"y")


def test_peer_vanishing_without_reading_does_not_block_others(serve):
    server = serve(lambda queue, data: queue.put(data * 1000))
    silent = connect(server)
    silent.sendall(b"a" * 2048)  # 2 MB of replies it never reads
    with connect(server) as other:
        for _ in range(20):
            other.sendall(b"b")
            assert recv_exactly(other, 1000) == b"b" * 1000
    silent.close()
    wait_for(lambda: server.connection_count == 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_more_than_10000_concurrent_connections(backend):
    count = 10_050
    clients = []
    with descriptor_limit(count + 100), \
            child_server(None, "--backend", backend, descriptors="hard") as (child, port):
        try:
            for i in range(count):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            # Every connection is open at once; each still gets its own reply.
            for i, client in enumerate(clients):
                client.sendall(b"%d;" % i)
            for i, client in enumerate(clients):
                expected = b"%d;" % i
                assert recv_exactly(client, len(expected)) == expected
        finally:
            for client in clients:
                client.close()


def test_writing_to_a_vanished_peer_raises_no_sigpipe(backend):
    with child_server(SIGNALLED_SERVER, backend, "sigpipe-default", "16") as (child, port):
        for _ in range(3):
            victim = socket.create_connection(("127.0.0.1", port), timeout=10)
            victim.sendall(b"big")
            victim.recv(1000)  # the server is mid-write
            reset(victim)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"big")
            assert len(recv_exactly(client, 1000)) == 1000
        assert child.poll() is None, f"server died with {child.returncode}"
