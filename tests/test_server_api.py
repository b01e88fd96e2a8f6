"""Constructing a TCPServer: modes, ports, properties and argument checking."""
import functools
import gc
import logging
import socket
import sys

import pytest

from support import HandOff, echo, recv_until_eof, wait_for

from simpletcp.clientsocket import ClientSocket
from simpletcp.tcpserver import TCPServer


def make(*args, **kwargs):
    server = TCPServer(*args, **kwargs)
    server.stop()
    return server


def test_localhost_binds_loopback_and_port_0_picks_a_free_port():
    server = make("localhost", 0, echo)
    assert server.ip == "127.0.0.1"
    assert isinstance(server.port, int) and 0 < server.port < 65536


def test_public_binds_all_interfaces():
    assert make("public", 0, echo).ip == "0.0.0.0"


def test_explicit_ipv4_address():
    assert make("127.0.0.1", 0, echo).ip == "127.0.0.1"


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = TCPServer("::1", 0, echo)
    except OSError as exc:
        pytest.skip(f"::1 cannot be bound here: {exc}")
    server.start()
    try:
        with socket.create_connection(("::1", server.port), timeout=5) as client:
            client.sendall(b"six")
            assert client.recv(10) == b"six"
    finally:
        server.stop()
    assert server.ip == "::1"


def test_port_is_bound_in_the_constructor():
    server = TCPServer("localhost", 0, echo)
    try:
        with pytest.raises(OSError) as excinfo:
            TCPServer("localhost", server.port, echo)
        assert str(server.port) in str(excinfo.value)
    finally:
        server.stop()


def test_default_backlog_is_not_small():
    server = make("localhost", 0, echo)
    assert server.maximum_connections >= 128


@pytest.mark.parametrize(
    "args, kwargs, error, word",
    [
        (("localhost", "80", echo), {}, TypeError, "port"),
        (("localhost", 1.5, echo), {}, TypeError, "port"),
        (("localhost", True, echo), {}, TypeError, "port"),
        (("localhost", -1, echo), {}, ValueError, "port"),
        (("localhost", 65536, echo), {}, ValueError, "port"),
        ((None, 0, echo), {}, TypeError, "mode"),
        (("", 0, echo), {}, ValueError, "mode"),
        (("localhost", 0, "echo"), {}, TypeError, "read_callback"),
        (("localhost", 0, None), {}, TypeError, "read_callback"),
        (("localhost", 0, lambda: None), {}, TypeError, "read_callback"),
        (("localhost", 0, lambda a, b, c, d: None), {}, TypeError, "read_callback"),
        (("localhost", 0, echo), {"recv_bytes": 0}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"recv_bytes": "2048"}, TypeError, "recv_bytes"),
        (("localhost", 0, echo), {"maximum_connections": 0}, ValueError, "maximum_connections"),
        (("localhost", 0, echo), {"maximum_connections": 2.0}, TypeError, "maximum_connections"),
        (("localhost", 0, echo), {"backend": "kqueue"}, ValueError, "backend"),
        (("localhost", 0, echo), {"backend": 1}, TypeError, "backend"),
        (("localhost", 0, echo), {"grace_period": -1}, ValueError, "grace_period"),
        # Past the documented upper bounds: a ValueError, never OverflowError/MemoryError.
        (("localhost", 0, echo), {"recv_bytes": 2**63}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"recv_bytes": 2**40}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"recv_bytes": 64 * 2**20 + 1}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"high_water": 2**64}, ValueError, "high_water"),
        (("localhost", 0, echo), {"low_water": 2**64}, ValueError, "low_water"),
        (("localhost", 0, echo), {"connection_limit": 2**64}, ValueError, "connection_limit"),
        (("localhost", 0, echo), {"connection_limit": 0}, ValueError, "connection_limit"),
        (("localhost", 0, echo), {"maximum_connections": 2**31}, ValueError,
         "maximum_connections"),
        (("localhost", 0, echo), {"grace_period": float("nan")}, ValueError, "grace_period"),
        (("localhost", 0, echo), {"grace_period": float("inf")}, ValueError, "grace_period"),
        (("localhost", 0, echo), {"grace_period": 10**400}, ValueError, "grace_period"),
        (("localhost", 0, echo), {"grace_period": 7 * 24 * 3600 + 1}, ValueError,
         "grace_period"),
        (("localhost", 0, echo), {"idle_timeout": 0}, ValueError, "idle_timeout"),
        (("localhost", 0, echo), {"idle_timeout": float("inf")}, ValueError, "idle_timeout"),
        (("localhost", 0, echo), {"idle_timeout": "5"}, TypeError, "idle_timeout"),
        (("localhost", 2**64, echo), {}, ValueError, "port"),
        (("a" * 64 + ".example", 0, echo), {}, ValueError, "mode"),
        (("é" + "a" * 63 + ".example", 0, echo), {}, ValueError, "mode"),
        (("127.0.0.1\0x", 0, echo), {}, ValueError, "mode"),
        (("a" * 254, 0, echo), {}, ValueError, "mode"),
        (("\ud800", 0, echo), {}, ValueError, "mode"),
        (("localhost", 0, echo), {"recv_bytes": 2**64}, ValueError, "recv_bytes"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(args, kwargs, error, word):
    with pytest.raises(error, match=word):
        TCPServer(*args, **kwargs)


# Subclasses whose own conversions or comparisons say something else than the value
# they hold: the checks read the plain value, and that is the value used.
class BigWhenConverted(int):
    def __int__(self):
        return 2**62

    __index__ = __int__


class NaNWhenConverted(float):
    def __float__(self):
        return float("nan")


class IntNaNWhenConverted(int):
    def __float__(self):
        return float("nan")


class InRangeWhenCompared(int):
    def __le__(self, other):
        return True

    __ge__ = __le__

    def __lt__(self, other):
        return False

    __gt__ = __lt__


class HidesItsNul(str):
    def __contains__(self, item):
        return False

    def __len__(self):
        return 1

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("args, kwargs, word", [
    (("localhost", InRangeWhenCompared(-5), echo), {}, "port"),
    (("localhost", 0, echo), {"recv_bytes": InRangeWhenCompared(-5)}, "recv_bytes"),
    (("localhost", 0, echo), {"high_water": InRangeWhenCompared(0)}, "high_water"),
    ((HidesItsNul("127.0.0.1\0x"), 0, echo), {}, "mode"),
    ((HidesItsNul("a" * 254), 0, echo), {}, "mode"),
    (("localhost", 0, echo), {"backend": HidesItsNul("kqueue")}, "backend"),
])
def test_hostile_subclasses_are_checked_by_their_value(args, kwargs, word):
    with pytest.raises(ValueError, match=word):
        TCPServer(*args, **kwargs)


def test_hostile_subclasses_in_range_are_used_as_checked():
    server = TCPServer("localhost", 0, echo, recv_bytes=BigWhenConverted(5),
                  high_water=BigWhenConverted(100), maximum_connections=BigWhenConverted(8),
                  connection_limit=BigWhenConverted(10), grace_period=NaNWhenConverted(1.0),
                  idle_timeout=IntNaNWhenConverted(30))
    assert (server.recv_bytes, server.high_water, server.maximum_connections,
            server.connection_limit) == (5, 100, 8, 10)
    assert (server.grace_period, server.idle_timeout) == (1.0, 30.0)
    assert all(type(value) in (int, float) for value in (
        server.recv_bytes, server.high_water, server.low_water, server.maximum_connections,
        server.connection_limit, server.grace_period, server.idle_timeout))
    with server:
        server.start()
        client = ClientSocket(HidesItsNul("localhost"), BigWhenConverted(server.port),
                              recv_bytes=BigWhenConverted(3), timeout=NaNWhenConverted(10.0))
        assert (client.connect_port, client.recv_bytes, client.timeout) == (server.port, 3, 10.0)
        assert client.send(b"0123456789") == b"012"
        assert server.stop(timeout=NaNWhenConverted(10.0))


@pytest.mark.parametrize("keywords", [
    {"recv_bytes": 64 * 2**20},
    {"high_water": sys.maxsize, "low_water": sys.maxsize},
    {"connection_limit": 2**31 - 1},
    {"maximum_connections": 2**31 - 1},
    {"grace_period": 7 * 24 * 3600, "idle_timeout": 7 * 24 * 3600},
    {"grace_period": 0},
])
def test_the_documented_upper_bounds_are_accepted(keywords):
    server = TCPServer("localhost", 0, echo, **keywords)
    server.start()
    try:
        with socket.create_connection((server.ip, server.port), timeout=5) as client:
            client.sendall(b"edge")
            assert client.recv(10) == b"edge"
    finally:
        assert server.stop(timeout=10)


def test_unresolvable_mode_raises_oserror_naming_mode():
    with pytest.raises(OSError, match="mode"):
        TCPServer("no-such-host.invalid", 0, echo)


class Handler:
    def __init__(self):
        self.seen = []

    def two(self, queue, data):
        self.seen.append(("two", data))
        queue.put(data)

    def three(self, ip, queue, data):
        self.seen.append(("three", ip))
        queue.put(data)

    def __call__(self, ip, queue, data):
        self.seen.append(("call", ip))
        queue.put(data)


def three_args(ip, queue, data, suffix):
    queue.put(data + suffix)


@pytest.mark.parametrize(
    "make_callback, expected",
    [
        (lambda h: (lambda q, d: q.put(d)), None),
        (lambda h: (lambda ip, q, d: q.put(d)), None),
        (lambda h: h.two, ("two", b"ping")),
        (lambda h: h.three, ("three", "127.0.0.1")),
        (lambda h: h, ("call", "127.0.0.1")),
        (lambda h: functools.partial(three_args, suffix=b"!"), None),
        (lambda h: (lambda *args: args[-2].put(args[-1])), None),
    ],
    ids=["lambda2", "lambda3", "bound2", "bound3", "callable-object", "partial", "varargs"],
)
def test_callback_arity_is_detected(serve, make_callback, expected):
    handler = Handler()
    server = serve(make_callback(handler))
    with socket.create_connection((server.ip, server.port), timeout=5) as client:
        client.sendall(b"ping")
        reply = client.recv(100)
    assert reply in (b"ping", b"ping!")
    if expected is not None:
        assert handler.seen == [expected]


async def async_echo(queue, data):
    queue.put(data)


async def async_echo_generator(queue, data):
    queue.put(data)
    yield


def generator_echo(queue, data):
    queue.put(data)
    yield


class AsyncCall:
    async def __call__(self, ip, queue, data):
        queue.put(data)


class AsyncMethods:
    async def handle(self, queue, data):
        queue.put(data)


@pytest.mark.parametrize(
    "callback, word",
    [
        (async_echo, "async"),
        (functools.partial(async_echo), "async"),
        (functools.partial(functools.partial(async_echo)), "async"),
        (AsyncCall(), "async"),
        (functools.partial(AsyncCall(), "127.0.0.1"), "async"),
        (AsyncMethods().handle, "async"),
        (async_echo_generator, "async"),
        (generator_echo, "generator"),
        pytest.param(staticmethod(async_echo), "async", marks=pytest.mark.skipif(
            sys.version_info < (3, 10), reason="a staticmethod is callable since 3.10")),
        # partial() refuses a staticmethod where it is not callable, at collection time.
        pytest.param(functools.partial(staticmethod(async_echo))
                     if sys.version_info >= (3, 10) else None, "async",
                     marks=pytest.mark.skipif(sys.version_info < (3, 10),
                                              reason="a staticmethod is callable since 3.10")),
    ],
    ids=["async-def", "partial", "partial-of-partial", "async-__call__",
         "partial-of-async-__call__", "async-method", "async-generator", "generator",
         "staticmethod", "partial-of-staticmethod"],
)
def test_a_callback_whose_body_would_never_run_is_rejected(callback, word):
    with pytest.raises(TypeError, match=f"read_callback is an? {word}"):
        TCPServer("localhost", 0, callback)


def test_a_class_with_an_async_call_is_still_a_plain_callback(serve):
    # Calling the class constructs an instance: that runs, so it is not rejected.
    class Reply:
        def __init__(self, queue, data):
            queue.put(data)

        async def __call__(self):
            pass

    server = serve(Reply)
    with socket.create_connection((server.ip, server.port), timeout=5) as client:
        client.sendall(b"built")
        assert client.recv(10) == b"built"


def test_a_callback_returning_a_coroutine_is_logged_once_and_closes(serve, caplog, recwarn):
    # A plain def wrapping an async one gets past the constructor's check: the loop
    # finds the coroutine it returns, closes it unrun and closes that connection.
    ran = []

    async def handler(queue, data):
        ran.append(data)
        queue.put(data)

    caplog.set_level(logging.ERROR, logger="simpletcp")
    server = serve(lambda queue, data: handler(queue, data))
    for attempt in range(3):
        with socket.create_connection((server.ip, server.port), timeout=5) as client:
            client.sendall(b"anyone?")
            assert recv_until_eof(client) == b""
    gc.collect()
    errors = [r for r in caplog.records if "coroutine" in r.getMessage()]
    assert len(errors) == 1, errors  # then at most once per 10 s, with a count
    assert "nothing awaits" in errors[0].getMessage()
    assert ran == []
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


@pytest.mark.parametrize("form", ["queue-data", "ip-queue-data"])
def test_queue_peer_is_the_clients_address_unique_per_connection(serve, form):
    peers = []

    def record_two(queue, data):
        peers.append(queue.peer)
        queue.put(b"%d" % len(peers))

    callback = (record_two if form == "queue-data"
                else lambda ip, queue, data: record_two(queue, data))
    server = serve(callback)
    clients = [socket.create_connection((server.ip, server.port), timeout=5) for _ in range(2)]
    try:
        for client in clients:
            client.sendall(b"who am i")
            assert client.recv(10)
        assert peers == [client.getsockname() for client in clients]
        assert len(set(peers)) == 2
    finally:
        for client in clients:
            client.close()


def test_queue_peer_outlives_the_connection(serve):
    handoff = HandOff()
    server = serve(handoff)
    with socket.create_connection((server.ip, server.port), timeout=5) as client:
        client.sendall(b"x")
        queue = handoff.first_queue()
        address = client.getsockname()
    wait_for(lambda: server.connection_count == 0)
    assert queue.peer == address
    assert f"{address[0]}:{address[1]}" in repr(queue)


def test_ip_form_and_peer_over_ipv6(serve):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    seen = []

    def record(ip, queue, data):
        seen.append((ip, queue.peer, repr(queue)))
        queue.put(data)

    try:
        server = serve(record, mode="::1")
    except OSError as exc:
        pytest.skip(f"::1 cannot be bound here: {exc}")
    with socket.create_connection(("::1", server.port), timeout=5) as client:
        client.sendall(b"six")
        assert client.recv(10) == b"six"
        host, port = client.getsockname()[:2]
    assert seen == [("::1", ("::1", port), seen[0][2])]
    assert f"[::1]:{port}" in seen[0][2]
