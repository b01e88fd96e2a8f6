"""pytest fixtures that fake a TCP service with simpletcp.

Installed with simpletcp as a pytest plugin, so in any project that has simpletcp the
fixtures are just there. A server runs on 127.0.0.1, on a free port, in a background
thread, and is stopped when the test ends::

    def test_client_gives_up_on_errors(tcp_server_factory):
        server = tcp_server_factory(lambda queue, data: queue.put(b"-ERR busy\\r\\n"))
        client = MyClient("127.0.0.1", server.port)
        with pytest.raises(BusyError):
            client.get("key")

or, for one fake service used by a whole module, override ``tcp_server_callback``::

    @pytest.fixture
    def tcp_server_callback():
        def pong(queue, data):
            queue.put(b"+PONG\\r\\n")
        return pong

    def test_ping(tcp_server):
        assert MyClient("127.0.0.1", tcp_server.port).ping()

``tcp_server_factory(callback, **keywords)`` takes TCPServer's keywords (``mode``
too); ``grace_period`` defaults to 1 second so a test never waits long for a client
that does not read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional

import pytest

if TYPE_CHECKING:  # tcpserver is imported when a fixture is used, not at load
    from simpletcp.tcpserver import TCPServer

ServerFactory = Callable[..., "TCPServer"]

#: How long teardown waits for a server to stop.
STOP_TIMEOUT = 10.0


def _echo(queue: Any, data: bytes) -> None:
    queue.put(data)


@pytest.fixture
def tcp_server_factory() -> Iterator[ServerFactory]:
    """A factory: ``tcp_server_factory(callback, **keywords)`` -> a serving TCPServer."""
    from simpletcp.tcpserver import TCPServer

    servers: List[TCPServer] = []

    def start(callback: Callable[..., Any], mode: Optional[str] = "localhost",
              **keywords: Any) -> TCPServer:
        keywords.setdefault("grace_period", 1.0)
        # A socket of the caller's (sock=) is bound already: no mode or port then.
        port = None if keywords.get("sock") is not None else 0
        server = TCPServer(mode, port, callback, **keywords)
        servers.append(server)
        return server.start()

    yield start
    stuck = [server for server in servers if not server.stop(timeout=STOP_TIMEOUT)]
    if stuck:
        pytest.fail(f"simpletcp test server(s) did not stop: {stuck}")


@pytest.fixture
def tcp_server_callback() -> Callable[..., Any]:
    """The callback ``tcp_server`` serves: an echo. Override it to fake your service."""
    return _echo


@pytest.fixture
def tcp_server(tcp_server_factory: ServerFactory,
               tcp_server_callback: Callable[..., Any]) -> "TCPServer":
    """A TCPServer serving ``tcp_server_callback`` on 127.0.0.1 (read ``.port``)."""
    return tcp_server_factory(tcp_server_callback)
