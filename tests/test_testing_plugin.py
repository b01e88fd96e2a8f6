"""simpletcp.testing: the fixtures a user's own tests get from the installed plugin."""
import importlib.metadata
import socket
import textwrap

import pytest

from support import echo

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)


def test_plugin_is_registered_as_a_pytest_entry_point():
    entry_points = importlib.metadata.entry_points()
    group = (entry_points.select(group="pytest11") if hasattr(entry_points, "select")
             else entry_points.get("pytest11", []))
    assert any(ep.name == "simpletcp" and ep.value == "simpletcp.testing" for ep in group)


def test_fixtures_serve_a_users_fake_service(pytester):
    pytester.makepyfile(test_user=textwrap.dedent(
        """
        import socket
        import pytest

        @pytest.fixture
        def tcp_server_callback():
            def pong(queue, data):
                queue.put(b"+PONG\\r\\n" if data == b"PING\\r\\n" else b"-ERR\\r\\n")
            return pong

        def ask(server, line):
            with socket.create_connection((server.ip, server.port), timeout=5) as client:
                client.sendall(line)
                return client.recv(100)

        def test_overridden_callback(tcp_server):
            assert ask(tcp_server, b"PING\\r\\n") == b"+PONG\\r\\n"
            assert ask(tcp_server, b"HELLO\\r\\n") == b"-ERR\\r\\n"

        def test_factory_with_keywords(tcp_server_factory):
            server = tcp_server_factory(lambda ip, queue, data: queue.put(ip.encode()),
                                        recv_bytes=64)
            assert ask(server, b"who") == b"127.0.0.1"
            assert server.recv_bytes == 64

        def test_factory_servers_are_independent(tcp_server_factory):
            first = tcp_server_factory(lambda queue, data: queue.put(b"1"))
            second = tcp_server_factory(lambda queue, data: queue.put(b"2"))
            assert first.port != second.port
            assert (ask(first, b"?"), ask(second, b"?")) == (b"1", b"2")
        """
    ))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_servers_are_stopped_after_the_test(tcp_server_factory):
    # Used directly, as our own fixture: the server serves now ...
    server = tcp_server_factory(echo)
    with socket.create_connection((server.ip, server.port), timeout=5) as client:
        client.sendall(b"echo")
        assert client.recv(10) == b"echo"
    test_servers_are_stopped_after_the_test.port = server.port


def test_the_previous_tests_server_is_gone():
    # ... and nothing listens on its port once its test is over.
    port = getattr(test_servers_are_stopped_after_the_test, "port", None)
    if port is None:
        pytest.skip("runs after test_servers_are_stopped_after_the_test")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_default_callback_is_an_echo(tcp_server):
    with socket.create_connection((tcp_server.ip, tcp_server.port), timeout=5) as client:
        client.sendall(b"default")
        assert client.recv(10) == b"default"
