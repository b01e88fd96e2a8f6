"""Helpers for the server tests: a server per backend on a free port, and a client.

Test modules take the ``serve`` fixture (imported from here): every test that uses it
runs once on each poller backend.
"""
from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time
from typing import Callable, Iterator, List

import pytest

from simpletcp.tcpserver import TCPServer

BACKENDS = ["epoll", "poll"]
TIMEOUT = 10.0
# The benchmark suite of the source tree (its C programs are also test tools).
BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def serve(backend: str) -> Iterator[Callable[..., TCPServer]]:
    """serve(callback, **keywords) -> a started TCPServer on 127.0.0.1, stopped after the test."""
    servers: List[TCPServer] = []

    def start(callback: Callable[..., object], **keywords: object) -> TCPServer:
        keywords.setdefault("backend", backend)
        server = TCPServer("localhost", 0, callback, **keywords)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        assert server.stop(timeout=TIMEOUT), "server did not stop"


class HandOff:
    """A callback that hands each connection's queue to the test, as to a worker thread."""

    def __init__(self) -> None:
        self.queues: List[object] = []
        self._arrived = threading.Event()

    def __call__(self, queue: object, data: bytes) -> None:
        self.queues.append(queue)
        self._arrived.set()

    def first_queue(self, timeout: float = TIMEOUT):  # -> ConnectionQueue
        assert self._arrived.wait(timeout), "no data reached the callback"
        return self.queues[0]


def connect(server: TCPServer, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((server.ip, server.port), timeout=timeout)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (the peer may send them in any number of pieces)."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(chunks)
        chunks += chunk


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@contextlib.contextmanager
def closing_all(*socks: socket.socket) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in socks:
            sock.close()
