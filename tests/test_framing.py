"""Framing (README, "Framing"): with ``framing=``, the callback gets exactly one whole
message per call, however the bytes arrive: one byte per packet, or ten thousand
messages in one write. Lines, LengthPrefixed, FixedSize and a framer written in
Python on the Framer base (a RESP parser, checked with raw RESP and redis-py)."""
import pathlib
import random
import re
import socket
import struct
import threading

import pytest

from simpletcp.framing import (DEFAULT_MAX_LENGTH, FixedSize, Framer, FramingError,
                               LengthPrefixed, Lines, NeedMore)
from simpletcp.tcpserver import TCPServer
from support import (TIMEOUT, LengthThenBody, child_server, connect, connect_slow_reader, echo,
                     proxy_v1, recv_exactly, recv_until_eof)

pytestmark = pytest.mark.timeout(120)


class Messages:
    """A read callback that records every message it is given and answers each with
    its length and itself, so that a message lost, split, merged or reordered shows in
    the replies as well as in the record."""

    def __init__(self):
        self.received = []

    def __call__(self, queue, message):
        self.received.append(message)
        return b"%d:%s;" % (len(message), message)


def answers(messages):
    return b"".join(b"%d:%s;" % (len(message), message) for message in messages)


def trickle(client, data):
    """Send ``data`` one byte per send(), Nagle off: the server reads it in pieces."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index in range(len(data)):
        client.sendall(data[index:index + 1])


def in_random_pieces(client, data, seed):
    """Send ``data`` in pieces of random sizes from 1 byte to 3 KiB."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pieces = random.Random(seed)
    start = 0
    while start < len(data):
        size = pieces.choice([1, 2, 3, 7, 64, 1000, 3000])
        client.sendall(data[start:start + size])
        start += size


def assert_whole_from_random_pieces(server, messages, data, expected, seed):
    """Send ``data`` in random pieces: the ``expected`` messages come back answered,
    and reached the callback whole, in order."""
    reply = exchange(server, data, answers(expected),
                     send=lambda client, data: in_random_pieces(client, data, seed))
    assert reply == answers(expected)
    assert messages.received == expected


def exchange(server, data, expected, send=None):
    """Send ``data`` (with ``send``, or in one sendall) and read exactly ``expected``."""
    with connect(server, timeout=30) as client:
        writer = threading.Thread(target=send or client.sendall,
                                  args=(client, data) if send else (data,))
        writer.start()
        reply = recv_exactly(client, len(expected))
        writer.join(TIMEOUT)
    return reply


LINES = [b"hello", b"", b"a line with spaces and a \r inside", b"x" * 5000, b"last"]


# ----------------------------------------------------------------------------- Lines

@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"--END--"], ids=repr)
def test_lines_arrive_whole_from_one_byte_per_packet(serve, delimiter):
    messages = Messages()
    server = serve(messages, framing=Lines(delimiter))
    lines = [line for line in LINES if delimiter not in line][:4]
    data = b"".join(line + delimiter for line in lines)
    assert exchange(server, data, answers(lines), send=trickle) == answers(lines)
    assert messages.received == lines


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n"], ids=repr)
def test_ten_thousand_lines_in_one_write_are_ten_thousand_calls(serve, delimiter):
    messages = Messages()
    server = serve(messages, framing=Lines(delimiter))
    lines = [b"message %d" % number for number in range(10_000)]
    data = b"".join(line + delimiter for line in lines)
    assert exchange(server, data, answers(lines)) == answers(lines)
    assert messages.received == lines


@pytest.mark.parametrize("seed", range(3))
def test_lines_in_random_pieces_arrive_whole_and_in_order(serve, seed):
    messages = Messages()
    server = serve(messages, framing=Lines(b"\r\n"))
    lines = [bytes([65 + (n % 26)]) * random.Random(n + seed).randrange(0, 3000)
             for n in range(300)]
    data = b"".join(line + b"\r\n" for line in lines)
    assert_whole_from_random_pieces(server, messages, data, lines, seed)


def test_a_delimiter_split_at_every_point_between_two_reads_is_found(serve):
    # Each split of the delimiter between two sends, the server made to read each part
    # on its own: the first part is answered before the second is sent.
    messages = Messages()
    server = serve(messages, framing=Lines(b"<END>"))
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for split in range(1, 5):
            client.sendall(b"first" + b"<END>"[:split])
            client.sendall(b"<END>"[split:] + b"second<END>")
            assert recv_exactly(client, len(answers([b"first", b"second"]))) == \
                answers([b"first", b"second"])
        # Near-misses are part of the line: "<EN" then "D>" is no delimiter after "<EN<".
        client.sendall(b"a<EN<")
        client.sendall(b"END>b<END>")
        assert recv_exactly(client, len(answers([b"a<EN", b"b"]))) == answers([b"a<EN", b"b"])


def test_a_line_split_across_reads_whose_delimiter_straddles_them(serve):
    # "...\r" in one read and "\n..." in the next: the line ends where the delimiter
    # began, in the first read, and the server has to wait for the second to know it.
    messages = Messages()
    server = serve(messages, framing=Lines(b"\r\n"))
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sendall(b"GET / HTTP/1.1\r")
        client.sendall(b"\nHost: x\r\n\r\n")
        expected = answers([b"GET / HTTP/1.1", b"Host: x", b""])
        assert recv_exactly(client, len(expected)) == expected


def test_keep_delimiter_hands_the_line_over_with_its_end_as_readline_does(serve):
    server = serve(lambda queue, line: line, framing=Lines(b"\r\n", keep_delimiter=True))
    data = b"one\r\ntwo\r\n\r\nthree\r\n"
    assert exchange(server, data, data, send=trickle) == data


def test_a_line_of_exactly_max_length_is_accepted(serve):
    messages = Messages()
    server = serve(messages, framing=Lines(b"\r\n", max_length=100))
    lines = [b"y" * 100, b"z" * 99]
    data = b"".join(line + b"\r\n" for line in lines)
    assert exchange(server, data, answers(lines), send=trickle) == answers(lines)


def test_the_ip_form_of_the_callback_gets_messages_too(serve):
    seen = []

    def callback(ip, queue, line):
        seen.append(ip)
        queue.put(line.upper() + b"\n")

    server = serve(callback, framing=Lines())
    assert exchange(server, b"quiet\nplease\n", b"QUIET\nPLEASE\n") == b"QUIET\nPLEASE\n"
    assert seen == ["127.0.0.1", "127.0.0.1"]


def test_framing_applies_to_what_follows_a_proxy_header(serve):
    messages = Messages()
    server = serve(messages, framing=Lines(), proxy_protocol=True)
    with connect(server) as client:
        client.sendall(proxy_v1() + b"after\nthe ")
        assert recv_exactly(client, len(answers([b"after"]))) == answers([b"after"])
        client.sendall(b"header\n")
        assert recv_exactly(client, len(answers([b"the header"]))) == answers([b"the header"])
    assert messages.received == [b"after", b"the header"]


def test_a_proxy_header_and_the_lines_behind_it_in_pieces(serve):
    messages = Messages()
    server = serve(messages, framing=Lines(), proxy_protocol=True)
    data = proxy_v1() + b"one\ntwo\n"
    expected = answers([b"one", b"two"])
    assert exchange(server, data, expected, send=trickle) == expected


# ----------------------------------------------------------------------------- LengthPrefixed

def length_prefixed(message, header_size, byteorder, includes_header):
    length = len(message) + (header_size if includes_header else 0)
    return length.to_bytes(header_size, byteorder) + message


@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize("includes_header", [False, True])
def test_length_prefixed_messages_one_byte_per_packet(serve, header_size, byteorder,
                                                      includes_header):
    messages = Messages()
    framing = LengthPrefixed(header_size, byteorder, includes_header)
    server = serve(messages, framing=framing)
    sizes = [0, 1, 200, 255 - header_size]
    payloads = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
    data = b"".join(length_prefixed(p, header_size, byteorder, includes_header)
                    for p in payloads)
    assert exchange(server, data, answers(payloads), send=trickle) == answers(payloads)
    assert messages.received == payloads


def test_ten_thousand_length_prefixed_messages_in_one_write(serve):
    messages = Messages()
    server = serve(messages, framing=LengthPrefixed(2, "little"))
    payloads = [b"%d" % number * (number % 7) for number in range(10_000)]
    data = b"".join(length_prefixed(p, 2, "little", False) for p in payloads)
    assert exchange(server, data, answers(payloads)) == answers(payloads)
    assert messages.received == payloads


def test_a_large_length_prefixed_message_is_one_call(serve):
    sizes = []

    def callback(queue, message):
        sizes.append(len(message))
        queue.put(struct.pack(">I", len(message)) + message[-16:])

    server = serve(callback, framing=LengthPrefixed(max_length=8 * 1024 * 1024))
    payload = bytes(range(256)) * (4 * 1024 * 5)  # 5 MiB: many reads
    data = struct.pack(">I", len(payload)) + payload
    expected = struct.pack(">I", len(payload)) + payload[-16:]
    assert exchange(server, data, expected) == expected
    assert sizes == [len(payload)]


@pytest.mark.parametrize("seed", range(3))
def test_length_prefixed_messages_in_random_pieces(serve, seed):
    messages = Messages()
    server = serve(messages, framing=LengthPrefixed(4, "big"))
    payloads = [bytes([n % 251]) * random.Random(n * seed).randrange(0, 5000)
                for n in range(200)]
    data = b"".join(length_prefixed(p, 4, "big", False) for p in payloads)
    assert_whole_from_random_pieces(server, messages, data, payloads, seed)


# ----------------------------------------------------------------------------- FixedSize

@pytest.mark.parametrize("size", [1, 3, 64, 10_000])
def test_fixed_size_records_whatever_the_pieces(serve, size):
    messages = Messages()
    server = serve(messages, framing=FixedSize(size))
    records = [bytes([n % 256]) * size for n in range(max(3, 30_000 // size))]
    assert_whole_from_random_pieces(server, messages, b"".join(records), records, size)


def test_fixed_size_one_byte_per_packet(serve):
    messages = Messages()
    server = serve(messages, framing=FixedSize(4))
    assert exchange(server, b"abcdefgh", answers([b"abcd", b"efgh"]), send=trickle) == \
        answers([b"abcd", b"efgh"])


# ----------------------------------------------------------------------------- a framer in Python

class RespArrays(Framer):
    """RESP2 requests (arrays of bulk strings) parsed by the framer: the callback gets
    the arguments, a list of bytes. Where the rest of a bulk string's length is known
    it asks for it with NeedMore, so a large value is not re-parsed per read."""

    def __init__(self, max_length=DEFAULT_MAX_LENGTH):
        super().__init__(max_length)
        self.calls = 0

    def frame(self, data, start):
        self.calls += 1
        if data[start] != 0x2A:  # "*"
            raise FramingError(f"expected '*', got {data[start:start + 1]!r}")
        count, position = self.number(data, start)
        if count is None:
            return None
        arguments = []
        for _ in range(count):
            if position >= len(data):
                return None
            if data[position] != 0x24:  # "$"
                raise FramingError(f"expected '$', got {data[position:position + 1]!r}")
            length, body = self.number(data, position)
            if length is None:
                return None
            end = body + length + 2
            if end > len(data):
                return NeedMore(end - len(data))
            arguments.append(data[body:body + length])
            position = end
        return position - start, arguments

    @staticmethod
    def number(data, start):
        end = data.find(b"\r\n", start)
        if end < 0:
            return None, None
        try:
            return int(data[start + 1:end]), end + 2
        except ValueError:
            raise FramingError(f"not a number: {data[start + 1:end][:20]!r}") from None


def resp(*arguments):
    return b"*%d\r\n" % len(arguments) + b"".join(
        b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments)


class TinyStore:
    """PING, SET, GET, and OK to anything else redis-py says on connecting."""

    def __init__(self):
        self.values = {}
        self.commands = []

    def __call__(self, queue, arguments):
        command = arguments[0].upper()
        self.commands.append(command)
        if command == b"PING":
            return b"+PONG\r\n"
        if command == b"SET":
            self.values[arguments[1]] = arguments[2]
            return b"+OK\r\n"
        if command == b"GET":
            value = self.values.get(arguments[1])
            return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        return b"+OK\r\n"


def test_a_resp_framer_written_in_python_serves_pipelined_raw_resp(serve):
    store = TinyStore()
    server = serve(store, framing=RespArrays())
    requests = b"".join(resp(b"SET", b"key%d" % n, b"value %d" % n) for n in range(1000))
    requests += b"".join(resp(b"GET", b"key%d" % n) for n in range(1000))
    expected = b"+OK\r\n" * 1000 + b"".join(
        b"$%d\r\nvalue %d\r\n" % (len(b"value %d" % n), n) for n in range(1000))
    assert exchange(server, requests, expected) == expected
    assert exchange(server, resp(b"PING"), b"+PONG\r\n", send=trickle) == b"+PONG\r\n"


def test_need_more_keeps_a_framer_from_being_asked_again_for_every_read(serve):
    framer = RespArrays(max_length=1024 * 1024)
    server = serve(TinyStore(), framing=framer)
    value = bytes(range(256)) * 2048  # 512 KiB: about a hundred reads
    with connect(server, timeout=30) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = resp(b"SET", b"big", value)
        for start in range(0, len(request), 4096):
            client.sendall(request[start:start + 4096])
        assert recv_exactly(client, 5) == b"+OK\r\n"
    # Asked once when the header arrived (NeedMore: the value's length), then once when
    # it was all there, not once per read.
    assert framer.calls <= 3, framer.calls


class DecimalLength(Framer):
    """A 4-digit decimal length, then that many bytes; the callback gets it whole."""

    def __init__(self):
        super().__init__(max_length=10_004)
        self.calls = 0

    def frame(self, data, start):
        self.calls += 1
        if len(data) - start < 4:
            return NeedMore(4 - (len(data) - start))
        return 4 + int(data[start:start + 4])


def test_a_framer_that_says_the_length_is_not_asked_again_until_it_is_all_there(serve):
    framer = DecimalLength()
    messages = Messages()
    server = serve(messages, framing=framer)
    data = b"0012hello, world0003abc"
    expected = answers([b"0012hello, world", b"0003abc"])
    assert exchange(server, data, expected, send=trickle) == expected
    # Per message: asked once when its first byte arrived (NeedMore), once when all four
    # digits had, and not again for its body.
    assert framer.calls <= 4, framer.calls


def test_redis_py_against_a_store_on_a_python_framer(serve, redis_py):
    store = TinyStore()
    server = serve(store, framing=RespArrays(max_length=4 * 1024 * 1024))
    client = redis_py.Redis(port=server.port, protocol=2, socket_timeout=TIMEOUT)
    assert client.ping() is True
    assert client.set("greeting", "hello") is True
    assert client.get("greeting") == b"hello"
    big = bytes(range(256)) * 8192  # 2 MiB in one value
    assert client.set("big", big) is True
    assert client.get("big") == big
    with client.pipeline(transaction=False) as pipe:
        for n in range(2000):
            pipe.set(f"k{n}", n)
        for n in range(2000):
            pipe.get(f"k{n}")
        results = pipe.execute()
    assert results == [True] * 2000 + [b"%d" % n for n in range(2000)]
    client.close()


def readme_python_block(marker):
    """The ```python block of README.md that contains ``marker``."""
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("needs the source tree's README.md")
    blocks = re.findall(r"^```python\n(.*?)^```$", readme.read_text(), flags=re.M | re.S)
    [block] = [block for block in blocks if marker in block]
    return block


def test_the_readmes_resp_framer_serves_redis_py(serve, redis_py):
    source = readme_python_block("class RespRequests(Framer)")
    namespace = {}
    exec(source[:source.index("def execute")], namespace)  # not its TCPServer on 6379
    server = serve(TinyStore(), framing=namespace["RespRequests"](max_length=4 * 1024 * 1024))
    client = redis_py.Redis(port=server.port, protocol=2, socket_timeout=TIMEOUT)
    big = bytes(range(256)) * 8192
    assert client.set("big", big) is True
    assert client.get("big") == big
    with client.pipeline(transaction=False) as pipe:
        for n in range(500):
            pipe.set(f"k{n}", n).get(f"k{n}")
        results = pipe.execute()
    assert results == [item for n in range(500) for item in (True, b"%d" % n)]
    client.close()


# ----------------------------------------------------------------------------- life

# ----------------------------------------------------------------------------- large messages
# The rest of a large message is read straight into where it is gathered, and the bytes
# object of one nobody kept is room for the next (framing.pyx: direct_read_room,
# MessageFramer.recycle). Neither may read past a message, nor change one that is held.

class LengthThenBodyAskingForIt(Framer):
    """The same, but asking for the whole message with NeedMore, then cutting it."""

    def frame(self, data, start):
        if len(data) - start < 4:
            return NeedMore(4 - (len(data) - start))
        length = 4 + int.from_bytes(data[start:start + 4], "big")
        if len(data) - start < length:
            return NeedMore(length - (len(data) - start))
        return length, data[start:start + length]


LARGE_AND_SMALL = [1_000_000, 5, 300_000, 70_000, 1, 65_536, 2_000_000, 3]


def sized_message(index, size):
    return bytes([index % 251]) * 7 + bytes(range(256)) * (size // 256) + b"z" * (size % 256)


@pytest.mark.parametrize("framing", [
    lambda: LengthPrefixed(4, max_length=4 * 1024 * 1024),
    lambda: LengthPrefixed(4, includes_header=True, max_length=4 * 1024 * 1024),
    lambda: LengthThenBody(max_length=4 * 1024 * 1024 + 4),
    lambda: LengthThenBodyAskingForIt(max_length=4 * 1024 * 1024 + 4),
], ids=["LengthPrefixed", "LengthPrefixed-includes-header", "Framer-length",
        "Framer-NeedMore"])
@pytest.mark.parametrize("pieces", ["one-write", "random-pieces"])
def test_large_messages_between_small_ones_arrive_whole_and_none_is_read_past(
        serve, framing, pieces):
    framer = framing()
    messages = [sized_message(index, size) for index, size in enumerate(LARGE_AND_SMALL)]
    header = 4 if isinstance(framer, LengthPrefixed) and framer.includes_header else 0
    frames = [struct.pack(">I", len(m) + header) + m for m in messages]
    framed_by_python = isinstance(framer, Framer)
    expected = [frame if framed_by_python else message
                for frame, message in zip(frames, messages)]
    received = []

    def callback(queue, message):
        received.append(message)
        return b"%d;" % len(message)

    server = serve(callback, framing=framer)
    data = b"".join(frames)
    replies = b"".join(b"%d;" % len(m) for m in expected)
    send = None if pieces == "one-write" else (
        lambda client, data: in_random_pieces_large(client, data))
    assert exchange(server, data, replies, send=send) == replies
    assert [len(m) for m in received] == [len(m) for m in expected]
    assert received == expected


def in_random_pieces_large(client, data):
    """Send ``data`` in pieces of 1 byte to 200 KiB, Nagle off."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pieces = random.Random(7)
    start = 0
    while start < len(data):
        size = pieces.choice([1, 3, 4, 5, 1000, 65_536, 100_000, 200_000])
        client.sendall(data[start:start + size])
        start += size


@pytest.mark.parametrize("framing", [
    lambda: FixedSize(300_000),
    lambda: LengthThenBody(max_length=400_000),
], ids=["FixedSize", "Framer-length"])
def test_a_large_message_the_callback_keeps_never_changes_when_more_arrive(serve, framing):
    kept = []

    def callback(queue, message):
        kept.append(message)
        return b"."

    server = serve(callback, framing=framing())
    size = 300_000 - (0 if isinstance(framing(), FixedSize) else 4)
    bodies = [bytes([n]) * size for n in range(1, 9)]
    frames = [b if isinstance(framing(), FixedSize) else struct.pack(">I", size) + b
              for b in bodies]
    with connect(server, timeout=30) as client:
        for frame in frames:  # one at a time: each finished by a read of its own
            client.sendall(frame)
            assert recv_exactly(client, 1) == b"."
    assert [message[-size:] for message in kept] == bodies


def test_a_recycled_message_hashes_by_what_it_holds_now(serve):
    """A callback hashes each large message and lets it go; the loop may reuse that bytes
    object for the next message, whose hash must be its own, not the old one cached."""

    def callback(queue, message):
        return b"1" if hash(message) == hash(bytes(memoryview(message))) else b"0"

    class HashingFramer(LengthThenBody):
        def frame(self, data, start):
            self.consistent = getattr(self, "consistent", True) and \
                hash(data) == hash(bytes(memoryview(data)))
            return super().frame(data, start)

    for framer in (FixedSize(200_000), HashingFramer(max_length=300_000)):
        server = serve(callback, framing=framer)
        with connect(server, timeout=30) as client:
            for n in range(6):
                body = bytes([n]) * 199_996
                client.sendall(body + bytes(4) if isinstance(framer, FixedSize)
                               else struct.pack(">I", len(body)) + body)
                assert recv_exactly(client, 1) == b"1"
        if isinstance(framer, HashingFramer):
            assert framer.consistent


def test_a_client_that_sends_little_holds_little_even_when_large_messages_were_kept(serve):
    """A client announces a large message and sends a byte at a time, while another's
    large requests and replies, let go once done, are kept for reuse: the first must get
    room for what it sent (at most doubling), not a kept 2 MiB bytes object each (on
    bigmsg 20 such clients held 40 MiB for 120 bytes sent), nor 64 KiB of room to read
    straight into (before a message is read into straight, 64 KiB of it must be in)."""
    import tracemalloc
    size = 2 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    header = struct.pack(">I", size)
    tracemalloc.start()
    try:
        # Each round trip leaves two large bytes objects nobody holds: the request, and
        # the reply once sent; the next request takes one of them.
        server = serve(lambda queue, message: bytes(size) if message == body else b"!",
                       framing=LengthPrefixed(4, max_length=size))
        with connect(server, timeout=30) as legit:
            def round_trip():
                legit.sendall(header + body)
                assert recv_exactly(legit, size) == bytes(size)
            for _ in range(10):  # until 16 MiB are kept
                round_trip()
            before = tracemalloc.get_traced_memory()[0]
            hostile = []
            try:
                for _ in range(20):
                    client = connect(server, timeout=30)
                    hostile.append(client)
                    client.sendall(header + b"x")
                    round_trip()  # served after the read of that first byte
                    client.sendall(b"y")  # read straight into the message's room
                    round_trip()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                for client in hostile:
                    client.close()
    finally:
        tracemalloc.stop()
    print(f"20 clients that sent 6 bytes each hold {grown} bytes more")
    # 20 × a few hundred bytes, with slack for the loop's own: the kept objects were
    # kept already. (With 64 KiB of room each, 1.3 MB.)
    assert grown < 20 * 16 * 1024, grown


def test_a_callback_that_shuts_down_gets_no_later_message_of_the_same_read(serve):
    messages = []

    def callback(queue, line):
        messages.append(line)
        if line == b"QUIT":
            queue.shutdown()
            return None
        return line + b"\n"

    server = serve(callback, framing=Lines())
    with connect(server) as client:
        client.sendall(b"one\ntwo\nQUIT\nthree\nfour\n")
        assert recv_until_eof(client) == b"one\ntwo\n"
    assert messages == [b"one", b"two", b"QUIT"]


def test_framed_replies_past_high_water_pause_reading_and_all_arrive(serve):
    # The client writes far more than the server may owe it, and only then reads:
    # reading pauses and resumes, and every line is answered, in order.
    server = serve(lambda queue, line: line * 16 + b"\n", framing=Lines(),
                   high_water=64 * 1024)
    lines = [b"%06d" % n for n in range(20_000)]
    expected = b"".join(line * 16 + b"\n" for line in lines)
    with connect_slow_reader(server, 4096, timeout=60) as client:
        writer = threading.Thread(target=client.sendall,
                                  args=(b"".join(line + b"\n" for line in lines),))
        writer.start()
        assert recv_exactly(client, len(expected)) == expected
        writer.join(TIMEOUT)


def test_an_unfinished_message_at_the_peers_eof_is_dropped_and_the_replies_sent(serve):
    messages = Messages()
    server = serve(messages, framing=Lines())
    with connect(server) as client:
        client.sendall(b"whole\nhalf a li")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == answers([b"whole"])
    assert messages.received == [b"whole"]


def test_each_connection_has_its_own_unfinished_message(serve):
    messages = Messages()
    server = serve(messages, framing=Lines())
    with connect(server) as first, connect(server) as second:
        first.sendall(b"fir")
        second.sendall(b"sec")
        second.sendall(b"ond\n")
        assert recv_exactly(second, len(answers([b"second"]))) == answers([b"second"])
        first.sendall(b"st\n")
        assert recv_exactly(first, len(answers([b"first"]))) == answers([b"first"])


WORKERS_FRAMED = """
from simpletcp.framing import Lines
from simpletcp.tcpserver import TCPServer

server = TCPServer("localhost", 0, lambda queue, line: b"%d:%s;" % (len(line), line),
                   workers=2, framing=Lines())
print(server.port, flush=True)
server.run()
"""


def test_each_worker_process_frames_as_told():
    with child_server(WORKERS_FRAMED) as (child, port):
        for _ in range(4):  # connections land on either worker
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                trickle(client, b"ab\n\ncd\n")
                expected = answers([b"ab", b"", b"cd"])
                assert recv_exactly(client, len(expected)) == expected


def test_framing_none_hands_over_the_bytes_as_they_arrive(serve):
    server = serve(echo, framing=None)
    assert server.framing is None
    assert exchange(server, b"no\nframing\n", b"no\nframing\n") == b"no\nframing\n"


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("make, error, names", [
    (lambda: Lines(""), TypeError, "delimiter"),
    (lambda: Lines("\n"), TypeError, "delimiter"),
    (lambda: Lines(10), TypeError, "delimiter"),
    (lambda: Lines(b""), ValueError, "delimiter"),
    (lambda: Lines(b"x" * 257), ValueError, "delimiter"),
    (lambda: Lines(max_length=0), ValueError, "max_length"),
    (lambda: Lines(max_length=2.5), TypeError, "max_length"),
    (lambda: Lines(max_length=True), TypeError, "max_length"),
    (lambda: Lines(max_length=2**33), ValueError, "max_length"),
    (lambda: Lines(keep_delimiter=1), TypeError, "keep_delimiter"),
    (lambda: LengthPrefixed(3), ValueError, "header_size"),
    (lambda: LengthPrefixed("4"), TypeError, "header_size"),
    (lambda: LengthPrefixed(4, "network"), ValueError, "byteorder"),
    (lambda: LengthPrefixed(4, b"big"), TypeError, "byteorder"),
    (lambda: LengthPrefixed(4, "big", "yes"), TypeError, "includes_header"),
    (lambda: LengthPrefixed(max_length=-1), ValueError, "max_length"),
    (lambda: FixedSize(0), ValueError, "size"),
    (lambda: FixedSize(None), TypeError, "size"),
    (lambda: NeedMore(0), ValueError, "count"),
    (lambda: NeedMore(1.0), TypeError, "count"),
    (lambda: Framer(max_length="big"), TypeError, "max_length"),
])
def test_framer_arguments_are_checked_naming_the_argument(make, error, names):
    with pytest.raises(error, match=names):
        make()


class NoFrame(Framer):
    pass


class ForgotInit(Framer):
    def __init__(self):
        pass

    def frame(self, data, start):
        return None


@pytest.mark.parametrize("framing, match", [
    ("lines", "framing must be None or a framer"),
    (b"\n", "framing must be None or a framer"),
    (Lines, "not the class Lines"),
    (NoFrame(), "must define frame"),
    (ForgotInit(), "must call Framer.__init__"),
])
def test_tcpserver_refuses_what_is_not_a_framer(framing, match):
    with pytest.raises(TypeError, match=match):
        TCPServer("localhost", 0, echo, framing=framing)


def test_framers_say_what_they_are():
    assert repr(Lines(b"\r\n", 100)) == "Lines(b'\\r\\n', max_length=100)"
    assert repr(LengthPrefixed(2)) == ("LengthPrefixed(header_size=2, byteorder='big', "
                                       "includes_header=False, max_length=65536)")
    assert repr(FixedSize(8)) == "FixedSize(8)"
    assert repr(NeedMore(3)) == "NeedMore(3)"
    assert FixedSize(8).max_length == 8
    with pytest.raises(AttributeError):
        Lines().max_length = 10
