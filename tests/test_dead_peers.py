"""Whatever state a connection is in, a peer that resets is noticed and its connection
closed, and the loop does not spin meanwhile (errors and hang-ups are reported by the
poller even for a descriptor registered for no events)."""
import socket
import threading
import time

import pytest

from support import HandOff, connect, loop_cpu_share, recv_exactly, refused, reset, wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_reset_while_stopping_with_a_held_queue_ends_the_wait(serve):
    registry = []  # holds every queue and never replies
    server = serve(lambda queue, data: registry.append(queue), grace_period=6)
    client = connect(server)
    client.sendall(b"join")
    wait_for(lambda: registry)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    wait_for(lambda: refused(server.port))
    assert loop_cpu_share(server, 0.3) < 0.2  # waiting for the worker, not spinning
    started = time.monotonic()
    reset(client)
    stopper.join(10)
    took = time.monotonic() - started
    print(f"stop() returned {took:.3f} s after the reset")
    # Before, the reset went unnoticed (and the loop spun on it) until the grace period.
    assert took < 3, f"stop() took {took:.1f} s after the peer reset (grace period 6 s)"


@pytest.mark.slow
def test_a_reset_while_lingering_after_shutdown_is_noticed_without_spinning(serve):
    def reply_and_close(queue, data):
        queue.put(b"bye")
        queue.shutdown()

    server = serve(reply_and_close)
    client = connect(server)
    client.sendall(b"quit")
    assert recv_exactly(client, 3) == b"bye"
    client.sendall(b"one more")  # the client has not noticed the close yet
    assert loop_cpu_share(server) < 0.2
    reset(client)
    wait_for(lambda: server.connection_count == 0, timeout=5)
    assert loop_cpu_share(server) < 0.2


def test_a_reset_while_the_reply_drains_is_noticed(serve):
    def big_then_close(queue, data):
        queue.put(b"d" * (32 * 1024 * 1024))
        queue.shutdown()

    server = serve(big_then_close)
    client = connect(server)
    client.sendall(b"go")
    client.recv(1000)  # some of it; the rest is stuck in the server's queue
    assert loop_cpu_share(server) < 0.2
    reset(client)
    wait_for(lambda: server.connection_count == 0, timeout=5)


def test_a_reset_while_reading_is_paused_is_noticed(serve):
    hand_off = HandOff()
    server = serve(lambda queue, data: (hand_off(queue, data), queue.put(data * 1024)),
                   high_water=64 * 1024)
    client = connect(server)
    client.sendall(b"p" * 16384)  # 16 MiB of replies it does not read: reading pauses
    wait_for(lambda: hand_off.queues and hand_off.queues[0].full())
    assert loop_cpu_share(server) < 0.2
    reset(client)
    wait_for(lambda: server.connection_count == 0, timeout=5)


def test_a_client_that_half_closes_while_stopping_still_gets_the_late_reply(serve):
    # Not a dead peer: a client that half-closed can still read. Stopping waits for the
    # worker that holds its queue, and the reply gets out.
    hand_off = HandOff()
    server = serve(hand_off, grace_period=10)
    with connect(server) as client:
        client.sendall(b"request")
        queue = hand_off.first_queue()
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        wait_for(lambda: refused(server.port))
        client.shutdown(socket.SHUT_WR)
        assert loop_cpu_share(server, 0.3) < 0.2
        queue.put(b"late reply")
        del queue
        hand_off.queues.clear()
        assert recv_exactly(client, 10) == b"late reply"
        stopper.join(10)
        assert not stopper.is_alive()
