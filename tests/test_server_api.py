"""Constructing a TCPServer: modes, ports, properties and argument checking."""
import functools
import socket

import pytest

from support import backend, serve  # noqa: F401  (fixtures)

from simpletcp.tcpserver import TCPServer


def echo(queue, data):
    queue.put(data)


async def async_echo(queue, data):
    queue.put(data)


def generator_echo(queue, data):
    yield queue.put(data)


class AsyncCallable:
    async def __call__(self, queue, data):
        queue.put(data)


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
        # Too large for what they size (found: OverflowError or a bare MemoryError
        # that named nothing).
        (("localhost", 0, echo), {"recv_bytes": 2**64}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"recv_bytes": 2**40}, ValueError, "recv_bytes"),
        (("localhost", 0, echo), {"maximum_connections": 2**31}, ValueError, "maximum_connections"),
        (("localhost", 0, echo), {"high_water": 2**64}, ValueError, "high_water"),
        (("localhost", 0, echo), {"connection_limit": 2**64}, ValueError, "connection_limit"),
        # Calling these runs nothing: every request would go unanswered, silently.
        (("localhost", 0, async_echo), {}, TypeError, "read_callback"),
        (("localhost", 0, generator_echo), {}, TypeError, "read_callback"),
        (("localhost", 0, AsyncCallable()), {}, TypeError, "read_callback"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(args, kwargs, error, word):
    with pytest.raises(error, match=word):
        TCPServer(*args, **kwargs)


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
