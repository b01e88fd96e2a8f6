"""Bad framed input (README, "Framing"): a message over max_length, a malformed or
oversized length header, a custom framer that raises or answers nonsense. The
offending connection gets what was queued for it, then is closed (close reason
FRAMING_ERROR: its queue's repr says "framing error"); one log line names the peer and
what was wrong, at most once per 10 s with a count; no other connection notices, and
no client can make the server buffer more than max_length."""
import logging
import socket
import struct
import threading
import time

import pytest

from simpletcp import CloseReason
from simpletcp.framing import Framer, FramingError, LengthPrefixed, Lines, NeedMore
from support import (TIMEOUT, child_server, connect, recv_exactly, recv_until_eof,
                     rss_kib, wait_for)

pytestmark = pytest.mark.timeout(120)


class Answering:
    """Answers every message with ``ok <message>\\n`` and keeps the queues it saw."""

    def __init__(self):
        self.queues = []
        self.received = []

    def __call__(self, queue, message):
        if queue not in self.queues:
            self.queues.append(queue)
        self.received.append(message)
        return b"ok " + message + b"\n"


def framing_errors(caplog):
    return [record for record in caplog.records if "closing connection" in record.getMessage()]


def assert_closed_after_replies(server, request, replies, callback, caplog, *, what,
                                bystander, level=logging.WARNING):
    """Send ``request``: the replies to the good messages before the bad one arrive,
    then EOF; the log says why, naming the peer; the connection's queue says it closed
    for a framing error. Meanwhile a bystander, which sent the first part of a message
    before, sends the rest and is answered: ``bystander`` is (first part, rest, answer)."""
    caplog.set_level(logging.WARNING, logger="simpletcp")
    first_part, rest, answer = bystander
    with connect(server) as innocent, connect(server, timeout=30) as offender:
        innocent.sendall(first_part)
        writer = threading.Thread(target=send_ignoring_resets, args=(offender, request))
        writer.start()
        assert recv_until_eof(offender) == replies
        writer.join(TIMEOUT)
        peer = offender.getsockname()
        innocent.sendall(rest)
        assert recv_exactly(innocent, len(answer)) == answer
    [record] = framing_errors(caplog)
    assert record.levelno == level
    message = record.getMessage()
    assert f"{peer[0]}:{peer[1]}" in message
    assert what in message, message
    offending = [queue for queue in callback.queues if queue.peer == peer]
    if offending:
        wait_for(lambda: "closed: framing error" in repr(offending[0]))
        assert offending[0].close_reason is CloseReason.FRAMING_ERROR
    return record


def send_ignoring_resets(client, data):
    try:
        client.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server stopped reading what it had no use for, and let go


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n"], ids=repr)
def test_a_line_over_max_length_closes_the_connection_after_the_replies(serve, caplog,
                                                                         delimiter):
    answering = Answering()
    server = serve(answering, framing=Lines(delimiter, max_length=100))
    request = b"good" + delimiter + b"x" * 101 + delimiter + b"never" + delimiter
    record = assert_closed_after_replies(server, request, b"ok good\n", answering, caplog,
                                         what="a line of 101 bytes, over max_length (100)",
                                         bystander=(b"bef", b"ore" + delimiter, b"ok before\n"))
    assert answering.received == [b"good", b"before"]  # not what followed the long line
    assert record.exc_info is None


def test_an_unfinished_line_is_rejected_as_soon_as_it_passes_max_length(serve, caplog):
    # No delimiter ever comes: the server does not wait for one, it rejects the line
    # once it holds more than max_length of it.
    answering = Answering()
    server = serve(answering, framing=Lines(max_length=1000))
    with connect(server) as client:
        client.sendall(b"fine\n" + b"y" * 1000)
        assert recv_exactly(client, len(b"ok fine\n")) == b"ok fine\n"
        client.sendall(b"y")
        assert recv_until_eof(client) == b""


def test_a_line_trickled_past_max_length_is_rejected(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(Answering(), framing=Lines(b"\r\n", max_length=20))
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(200):
                client.send(b"z")
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert recv_until_eof(client) == b""
    assert "no end of line" in framing_errors(caplog)[0].getMessage()


@pytest.mark.parametrize("header_size, byteorder", [(2, "big"), (4, "little"), (8, "big")])
def test_a_length_header_over_max_length_closes_before_buffering(serve, caplog, header_size,
                                                                 byteorder):
    answering = Answering()
    server = serve(answering, framing=LengthPrefixed(header_size, byteorder, max_length=1000))
    good = (4).to_bytes(header_size, byteorder) + b"good"
    announced = 2 ** (8 * header_size) - 1
    bad = announced.to_bytes(header_size, byteorder) + b"garbage that follows"
    assert_closed_after_replies(server, good + bad, b"ok good\n", answering, caplog,
                                what=f"a message of {announced} bytes, over max_length (1000)",
                                bystander=((6).to_bytes(header_size, byteorder) + b"bef",
                                           b"ore", b"ok before\n"))


def test_a_length_header_shorter_than_itself_is_malformed(serve, caplog):
    answering = Answering()
    server = serve(answering, framing=LengthPrefixed(4, includes_header=True))
    request = struct.pack(">I", 8) + b"good" + struct.pack(">I", 3) + b"abc"
    assert_closed_after_replies(server, request, b"ok good\n", answering, caplog,
                                what="a length header of 3, less than the 4 bytes",
                                bystander=(struct.pack(">I", 10) + b"bef", b"ore",
                                           b"ok before\n"))


def test_garbage_headers_one_byte_at_a_time(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(Answering(), framing=LengthPrefixed(4))
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"GET / HTTP/1.1\r\n":  # an HTTP client at a binary port
            try:
                client.send(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                break
        assert recv_until_eof(client) == b""
    assert "over max_length" in framing_errors(caplog)[0].getMessage()


class RespLike(Framer):
    """A framer that raises FramingError for what does not start with "*", has a bug
    (IndexError) for what starts with "!", and answers nonsense for "?"."""

    def frame(self, data, start):
        end = data.find(b"\n", start)
        if data[start:start + 1] == b"!":
            return [][0]
        if data[start:start + 1] == b"?":
            return "three"
        if data[start:start + 1] != b"*":
            raise FramingError(f"expected '*', got {data[start:start + 1]!r}")
        return None if end < 0 else end + 1 - start


RESP_LIKE_BYSTANDER = (b"*bef", b"ore\n", b"ok *before\n\n")


def test_a_framing_error_from_a_custom_framer_is_logged_as_bad_input(serve, caplog):
    answering = Answering()
    server = serve(answering, framing=RespLike())
    record = assert_closed_after_replies(server, b"*one\n*two\nthree\n",
                                         b"ok *one\n\nok *two\n\n", answering, caplog,
                                         what="RespLike: expected '*', got b't'",
                                         bystander=RESP_LIKE_BYSTANDER)
    assert record.exc_info is None


@pytest.mark.parametrize("request_bytes, what, cause", [
    (b"*one\n!\n", "RespLike.frame() raised IndexError", IndexError),
    (b"*one\n?\n", "RespLike.frame() returned 'three'", TypeError),
], ids=["raises", "answers nonsense"])
def test_a_custom_framer_with_a_bug_is_logged_as_an_error_with_its_cause(serve, caplog,
                                                                        request_bytes, what,
                                                                        cause):
    answering = Answering()
    server = serve(answering, framing=RespLike())
    record = assert_closed_after_replies(server, request_bytes, b"ok *one\n\n", answering,
                                         caplog, what=what, bystander=RESP_LIKE_BYSTANDER,
                                         level=logging.ERROR)
    assert isinstance(record.exc_info[1], cause)


class Claims(Framer):
    """Answers whatever the test sets, for the first message."""

    def __init__(self, answer, max_length=100):
        super().__init__(max_length)
        self.answer = answer

    def frame(self, data, start):
        return self.answer


@pytest.mark.parametrize("answer, what, level", [
    (0, "returned 0", logging.ERROR),
    (-5, "returned -5", logging.ERROR),
    (True, "returned True", logging.ERROR),
    ((0, b"x"), "returned 0", logging.ERROR),
    ((50, b"x"), "only 10 bytes are buffered", logging.ERROR),
    ([4, b"x"], "returned [4, b'x']", logging.ERROR),
    (101, "the next message is 101 bytes, over max_length (100)", logging.WARNING),
    (2 ** 70, f"the next message is {2 ** 70} bytes", logging.WARNING),
    # NeedMore counts from what is buffered (10 bytes): it may ask for max_length at most.
    (NeedMore(91), "the next message is at least 101 bytes, over max_length (100)",
     logging.WARNING),
    (NeedMore(10 ** 9), f"at least {10 ** 9 + 10} bytes", logging.WARNING),
])
def test_what_a_custom_framer_answers_is_checked(serve, caplog, answer, what, level):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(Answering(), framing=Claims(answer))
    with connect(server) as client:
        client.sendall(b"0123456789")
        assert recv_until_eof(client) == b""
    [record] = framing_errors(caplog)
    assert what in record.getMessage(), record.getMessage()
    assert record.levelno == level


class ClosesFromFrame(Framer):
    """Shuts its connection down from inside frame() (server.connections() reaches
    it), then says a whole message is there, or that none is yet."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.server = None

    def frame(self, data, start):
        for queue in self.server.connections():
            queue.shutdown()
        return self.answer


@pytest.mark.parametrize("answer", [1, None], ids=["a message", "no message yet"])
def test_a_connection_its_framer_closed_gets_no_more_callbacks(serve, caplog, answer):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    answering = Answering()
    framer = ClosesFromFrame(answer)
    server = serve(answering, framing=framer)
    framer.server = server
    with connect(server) as client:
        client.sendall(b"abc")
        assert recv_until_eof(client) == b""
    assert answering.received == []
    assert [record.getMessage() for record in caplog.records] == []


def test_a_custom_framer_that_never_finds_a_message_cannot_grow_the_buffer(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(Answering(), framing=Claims(None, max_length=5000))
    with connect(server) as client:
        send_ignoring_resets(client, b"m" * 20_000)
        assert recv_until_eof(client) == b""
    assert "no whole message in" in framing_errors(caplog)[0].getMessage()


def test_framing_errors_are_logged_once_per_ten_seconds_with_a_count(serve, caplog):
    caplog.set_level(logging.WARNING, logger="simpletcp")
    server = serve(Answering(), framing=Lines(max_length=10))
    for _ in range(5):
        with connect(server) as client:
            client.sendall(b"far too long a line\n")
            assert recv_until_eof(client) == b""
    assert len(framing_errors(caplog)) == 1


MEMORY_SERVER = """
import sys
from simpletcp.framing import Lines
from simpletcp.tcpserver import TCPServer

server = TCPServer("localhost", 0, lambda queue, line: line + b"\\n",
                   framing=Lines(max_length=64 * 1024), backend=sys.argv[1])
print(server.port, flush=True)
server.run()
"""


def test_a_client_streaming_without_a_delimiter_cannot_grow_the_servers_memory(backend):
    # 50 MB with no end of line: the server rejects the line past max_length, drops
    # what follows up to the lingering close's bound, then lets go. Its memory stays
    # where it was (the read buffer, not the stream), and another client is served
    # all along.
    with child_server(MEMORY_SERVER, backend) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as probe:
            probe.sendall(b"warm up\n")
            assert recv_exactly(probe, 8) == b"warm up\n"
            before = rss_kib(child.pid)
            streamer = socket.create_connection(("127.0.0.1", port), timeout=60)
            chunk = b"s" * (1024 * 1024)
            sent = [0]

            def stream():
                try:
                    for _ in range(50):
                        streamer.sendall(chunk)
                        sent[0] += len(chunk)
                except OSError:
                    pass  # reset, or timed out once the server stopped reading

            writer = threading.Thread(target=stream)
            writer.start()
            for number in range(20):
                probe.sendall(b"still there %d\n" % number)
                expected = b"still there %d\n" % number
                assert recv_exactly(probe, len(expected)) == expected
                time.sleep(0.05)
            writer.join(90)
            assert not writer.is_alive()
            try:
                assert streamer.recv(100) == b""
            except ConnectionResetError:
                pass
            streamer.close()
            grown = rss_kib(child.pid) - before
            assert grown < 8 * 1024, f"the server grew by {grown} KiB"


def test_on_disconnect_hears_of_the_framing_error(serve, caplog):
    caplog.set_level(logging.ERROR, logger="simpletcp")  # the rejection is expected
    reasons = []
    server = serve(lambda queue, line: line + b"\n", framing=Lines(max_length=5),
                   on_connect=lambda queue: queue.put(b"hello\n"),
                   on_disconnect=lambda queue: reasons.append(queue.close_reason))
    with connect(server) as client:
        client.sendall(b"ok\n" + b"x" * 10 + b"\n")
        assert recv_until_eof(client) == b"hello\nok\n"
    wait_for(lambda: reasons == [CloseReason.FRAMING_ERROR])
