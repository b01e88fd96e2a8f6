"""A callback's return value (README, "The callback and the queue"): a bytes-like
object returned is its reply, sent as if put() last, framed or not; None sends nothing
more; a str fails the callback (it cannot be sent: encode it); anything else is
ignored, as every return value was before, and logged."""
import array
import logging
import socket

import pytest

from simpletcp.framing import Lines
from support import connect, recv_exactly, recv_until_eof

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("framing", [None, Lines(keep_delimiter=True)], ids=["unframed", "Lines"])
@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda data: array.array("B", data)],
                         ids=["bytes", "bytearray", "memoryview", "array"])
def test_a_returned_bytes_like_object_is_the_reply(serve, framing, make):
    server = serve(lambda queue, data: make(data.upper()), framing=framing)
    with connect(server) as client:
        client.sendall(b"shout\n")
        assert recv_exactly(client, 6) == b"SHOUT\n"


def test_a_returned_reply_follows_what_the_callback_put(serve):
    def callback(queue, line):
        queue.put(b"first ")
        return b"then " + line + b"\n"

    server = serve(callback, framing=Lines())
    with connect(server) as client:
        client.sendall(b"a\nb\n")
        expected = b"first then a\nfirst then b\n"
        assert recv_exactly(client, len(expected)) == expected


def test_a_returned_bytearray_is_copied_when_returned(serve):
    # As put() copies a mutable object: changing it afterwards does not change the reply.
    kept = []

    def callback(queue, data):
        reply = bytearray(data)
        kept.append(reply)
        return reply

    server = serve(callback)
    with connect(server) as client:
        client.sendall(b"original")
        assert recv_exactly(client, 8) == b"original"
        kept[0][:] = b"changed!"
        client.sendall(b"again")
        assert recv_exactly(client, 5) == b"again"


def test_returning_an_empty_reply_or_none_sends_nothing(serve):
    server = serve(lambda queue, line: b"" if line == b"quiet" else None, framing=Lines())
    with connect(server) as client:
        client.sendall(b"quiet\nsilent\n")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b""


def test_returning_a_str_fails_the_callback_and_says_encode(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(lambda queue, line: queue.put(b"put first;") or "a str", framing=Lines())
    for _ in range(3):
        with connect(server) as client:
            client.sendall(b"hello\nnever answered\n")
            assert recv_until_eof(client) == b"put first;"
    [record] = [r for r in caplog.records if "returned a str" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "encode" in record.getMessage()  # once, then at most once per 10 s with a count


@pytest.mark.parametrize("returned", [42, (None, None), [b"a list", b"of bytes"], True],
                         ids=repr)
def test_anything_else_returned_is_ignored_as_before_and_logged(serve, caplog, returned):
    caplog.set_level(logging.WARNING, logger="simpletcp")

    def callback(queue, data):
        queue.put(data)
        return returned

    server = serve(callback)
    with connect(server) as client:
        for word in (b"still", b"served"):
            client.sendall(word)
            assert recv_exactly(client, len(word)) == word
    [record] = [r for r in caplog.records if "which is ignored" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert type(returned).__name__ in record.getMessage()


def test_a_reply_returned_after_shutdown_fails_as_a_late_put_does(serve, caplog):
    caplog.set_level(logging.ERROR, logger="simpletcp")

    def callback(queue, line):
        queue.put(b"bye\n")
        queue.shutdown()
        return b"too late\n"

    server = serve(callback, framing=Lines())
    with connect(server) as client:
        client.sendall(b"quit\n")
        assert recv_until_eof(client) == b"bye\n"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "ShutDown" in record.getMessage()
