"""A reply queued before the server closes reaches the client whole, even when the
client has sent more that the server never reads (an answer-then-close protocol with
pipelined requests: HTTP ``Connection: close``, an error reply, a QUIT).

Closing a socket that holds unread input makes the kernel send RST and throw away
what it had not yet sent; the server shuts its write side instead, reads and
discards input until the client closes (or a bound), then closes.
"""
import logging
import socket
import time

import pytest

from support import (backend, connect, recv_exactly, recv_until_eof, reset_at_once,  # noqa: F401
                     serve)

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def pattern(size):
    """Bytes that differ from one position to the next, so a gap or a repeat shows."""
    block = bytes(range(256)) * 4096
    return (block * (size // len(block) + 1))[:size]


def reply_then_close(how, payload, holder):
    """A callback that answers GET with ``payload`` and then closes, in one of three ways."""

    def callback(queue, data):
        if not data.startswith(b"GET"):
            return
        queue.put(payload)
        if how == "shutdown":
            queue.shutdown()
        elif how == "stop":
            holder[0].stop()
        else:
            raise RuntimeError("the reply is queued, then the callback fails")

    return callback


@pytest.mark.parametrize("size", [2 * MIB, 16 * MIB], ids=["2MiB", "16MiB"])
@pytest.mark.parametrize("how", ["shutdown", "stop", "raise"])
def test_a_reply_before_a_close_survives_pipelined_input(serve, how, size, caplog):
    caplog.set_level(logging.CRITICAL, logger="simpletcp")  # the raise is expected
    payload = pattern(size)
    holder = []
    server = serve(reply_then_close(how, payload, holder))
    holder.append(server)
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
    holder = []
    server = serve(reply_then_close(how, payload, holder))
    holder.append(server)
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
    server = serve(reply_then_close("shutdown", payload, []))
    with connect(server, timeout=30) as client:
        client.sendall(b"GET\n")
        client.sendall(b"u" * (4 * MIB))  # more than both kernels' buffers hold
        assert recv_until_eof(client) == payload


def test_idle_timeout_closes_gracefully_with_the_reply_still_in_flight(serve):
    # The whole reply has left the server's queue, part of it is still in the kernel:
    # the client is slow. The idle timeout fires; the client then sends something and
    # reads. It must get every byte and an EOF, not a reset.
    payload = pattern(1 * MIB)
    server = serve(lambda queue, data: queue.put(payload) if data.startswith(b"GET") else None,
                   idle_timeout=0.3)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.settimeout(30)
    client.connect((server.ip, server.port))
    with client:
        client.sendall(b"GET\n")
        time.sleep(1.0)  # longer than the idle timeout; the server has let go of the reply
        client.sendall(b"still there?\n")
        assert recv_until_eof(client) == payload


def test_connections_refused_at_the_limit_are_reset_whether_or_not_they_sent(serve):
    # Refused connections get no reply, so there is nothing to protect; they are reset
    # at once (one clear signal, no descriptor kept for them).
    server = serve(lambda queue, data: queue.put(data), connection_limit=1)
    with connect(server) as member:
        member.sendall(b"in")
        assert recv_exactly(member, 2) == b"in"
        assert reset_at_once(server.port, b"GET / HTTP/1.1\r\n\r\n")
        assert reset_at_once(server.port)
        member.sendall(b"still served")
        assert recv_exactly(member, 12) == b"still served"
