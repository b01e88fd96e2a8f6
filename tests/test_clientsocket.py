"""ClientSocket, the original's small client, against a real simpletcp server."""
import socket
import threading

import pytest

from support import echo, wait_for

from simpletcp.clientsocket import ClientSocket
from simpletcp.tcpserver import TCPServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server():
    connections = []

    def echo_with_count(queue, data):
        if queue not in connections:
            connections.append(queue)
        queue.put(data)

    with TCPServer("localhost", 0, echo_with_count) as server:
        server.start()
        server.connections_seen = connections
        yield server


@pytest.mark.parametrize(
    "data, expected",
    [("héllo", "héllo".encode()), (b"bytes", b"bytes"),
     (bytearray(b"array"), b"array"), (memoryview(b"view"), b"view")],
)
def test_send_returns_the_reply(server, data, expected):
    assert ClientSocket("localhost", server.port).send(data) == expected


def test_single_use_opens_a_connection_per_send(server):
    client = ClientSocket("localhost", server.port)
    assert client.send("one") == b"one"
    assert not client.connected
    assert client.send("two") == b"two"
    assert len(server.connections_seen) == 2


def test_reused_connection_when_not_single_use(server):
    with ClientSocket("localhost", server.port, single_use=False) as client:
        assert client.send("one") == b"one"
        assert client.connected
        assert client.send("two") == b"two"
    assert not client.connected
    assert len(server.connections_seen) == 1


def test_close_is_idempotent(server):
    client = ClientSocket("localhost", server.port, single_use=False)
    client.send("x")
    client.close()
    client.close()
    assert client.send("again") == b"again"  # reconnects
    client.close()


def test_recv_bytes_bounds_the_reply(server):
    assert ClientSocket("localhost", server.port, recv_bytes=4).send("abcdefgh") == b"abcd"


def test_public_mode_reaches_this_host(server):
    public = TCPServer("public", 0, echo)
    public.start()
    try:
        assert ClientSocket("public", public.port).send("pub") == b"pub"
    finally:
        public.stop()


def test_timeout_when_the_server_never_answers():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        client = ClientSocket("localhost", silent.getsockname()[1], timeout=0.2)
        with pytest.raises(socket.timeout):
            client.send("anyone?")
        assert not client.connected
    finally:
        silent.close()


def test_a_failed_send_leaves_the_client_usable():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    answered = []

    def serve_the_second_connection():
        first, _ = silent.accept()  # never answered: the client times out
        second, _ = silent.accept()
        with first, second:
            answered.append(second.recv(100))
            second.sendall(b"late but here")

    helper = threading.Thread(target=serve_the_second_connection, daemon=True)
    helper.start()
    try:
        client = ClientSocket("localhost", silent.getsockname()[1], single_use=False,
                              timeout=0.5)
        with pytest.raises(socket.timeout):
            client.send("first")
        client.timeout = 10.0
        assert client.send("second") == b"late but here"
        assert answered == [b"second"]
        client.close()
    finally:
        helper.join(10)
        silent.close()


def test_send_returns_empty_bytes_when_the_server_closes():
    def hang_up(queue, data):
        queue.shutdown()

    with TCPServer("localhost", 0, hang_up) as server:
        server.start()
        client = ClientSocket("localhost", server.port, single_use=False)
        assert client.send("bye?") == b""
        assert not client.connected


def test_connection_refused_raises_oserror():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        ClientSocket("localhost", port).send("x")


@pytest.mark.parametrize(
    "args, kwargs, error, word",
    [
        ((None, 5000), {}, TypeError, "mode"),
        (("localhost", "5000"), {}, TypeError, "port"),
        (("localhost", 70000), {}, ValueError, "port"),
        (("localhost", 5000), {"recv_bytes": 0}, ValueError, "recv_bytes"),
        (("localhost", 5000), {"single_use": "yes"}, TypeError, "single_use"),
        (("localhost", 5000), {"timeout": -1}, ValueError, "timeout"),
        # timeout=0 would make the socket non-blocking: send() raised BlockingIOError.
        (("localhost", 5000), {"timeout": 0}, ValueError, "timeout"),
        (("localhost", 5000), {"timeout": float("nan")}, ValueError, "timeout"),
        (("localhost", 5000), {"timeout": 7 * 24 * 3600 + 1}, ValueError, "timeout"),
        # recv_bytes=2**63 used to fail only in recv(), after the data was sent.
        (("localhost", 5000), {"recv_bytes": 2**63}, ValueError, "recv_bytes"),
        (("localhost", 5000), {"recv_bytes": 64 * 2**20 + 1}, ValueError, "recv_bytes"),
        (("localhost", 0), {}, ValueError, "port"),
        (("127.0.0.1\0x", 5000), {}, ValueError, "mode"),
    ],
)
def test_bad_arguments_name_the_argument(args, kwargs, error, word):
    with pytest.raises(error, match=word):
        ClientSocket(*args, **kwargs)


def test_send_rejects_non_bytes(server):
    with pytest.raises(TypeError, match="data"):
        ClientSocket("localhost", server.port).send(12345)


def test_the_originals_attributes(server):
    client = ClientSocket("localhost", server.port)
    assert (client.connect_ip, client.connect_port) == ("127.0.0.1", server.port)
    assert (client.closed, client.used) == (True, False)
    assert client.send("one") == b"one"
    assert (client.closed, client.used) == (True, True)  # single use: closed after send


def test_a_kept_connection_opens_in_the_constructor_as_in_the_original(server):
    with ClientSocket("localhost", server.port, single_use=False) as client:
        assert not client.closed
        wait_for(lambda: server.connection_count == 1)  # open before anything is sent
        assert client.send("x") == b"x"
    assert client.closed


def test_a_kept_connection_to_nobody_fails_in_the_constructor():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        ClientSocket("localhost", port, single_use=False)


def test_a_single_use_client_sends_again_on_a_new_connection(server):
    # The original raised RuntimeError on a second send(); every program that worked
    # with it works here, and this one works too.
    client = ClientSocket("localhost", server.port)
    assert [client.send("a"), client.send("b")] == [b"a", b"b"]
    assert len(server.connections_seen) == 2
