#!/usr/bin/env python3
"""The TLS load generator of bench/tls.py: closed-loop echo over TLS, counted mode only.

loadgen.c speaks plain TCP; this speaks TLS with Python's ssl module, one thread,
non-blocking sockets. It follows loadgen.c's counted protocol (bench/counted.py): the
handshakes and a warm-up, then "quiet window-start" on stdout with every connection
idle; after "go" on stdin, exactly --requests round trips (each a message of --size
bytes, echoed and checked byte for byte), "quiet window-end", and after the second
"go" a JSON report. It is slow next to the C one, which does not matter to the counted
figures: they are the server's instructions and system calls per request.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import ssl
import sys
import time


class Connection:
    """One client: sends a message, waits for its echo, again."""

    def __init__(self, sock: ssl.SSLSocket, message: bytes, selector):
        self.sock = sock
        self.message = message
        self.selector = selector
        self.watching_writes = False
        self.sent = len(message)     # nothing in flight
        self.received = len(message)

    @property
    def idle(self) -> bool:
        return self.received == len(self.message)

    def start(self) -> None:
        self.sent = self.received = 0

    def step(self) -> bool:
        """Send and receive what can be: True when the echo is complete."""
        view = memoryview(self.message)
        while self.sent < len(self.message):
            try:
                self.sent += self.sock.send(view[self.sent:self.sent + 65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
        # Writability is watched only while a send is held up: always writable, the
        # selector would spin.
        blocked = self.sent < len(self.message)
        if blocked != self.watching_writes:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if blocked else 0)
            self.selector.modify(self.sock, events, self)
            self.watching_writes = blocked
        while self.received < len(self.message):
            try:
                chunk = self.sock.recv(len(self.message) - self.received)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            if not chunk:
                raise EOFError("the server closed the connection")
            if chunk != self.message[self.received:self.received + len(chunk)]:
                raise ValueError("the echo differs from what was sent")
            self.received += len(chunk)
        return True


def run_requests(connections: list, selector, count: int) -> int:
    """Run `count` round trips over the connections, each with one in flight: how many."""
    issued = done = 0

    def advance(connection) -> None:
        nonlocal issued, done
        while not connection.idle and connection.step():
            done += 1
            if issued < count:
                connection.start()
                issued += 1

    for connection in connections:
        if issued < count:
            connection.start()
            issued += 1
            advance(connection)
    while done < count:
        for key, _ in selector.select(timeout=1.0):
            advance(key.data)
        for connection in connections:  # what the SSL objects already hold
            if connection.sock.pending():
                advance(connection)
    return done


def wait_for_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--ca", required=True, help="the CA certificate (PEM) to trust")
    parser.add_argument("--counted", action="store_true", required=True)
    parser.add_argument("--warmup-requests", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10000)
    # Accepted for loadgen.c's command line (bench/counted.py passes them); unused.
    parser.add_argument("--duration", type=float, default=0)
    parser.add_argument("--ramp-timeout", type=float, default=0)
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args(argv)

    context = ssl.create_default_context(cafile=args.ca)
    message = os.urandom(args.size)
    selector = selectors.DefaultSelector()
    connections = []
    for _ in range(args.connections):
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = context.wrap_socket(raw, server_hostname="localhost")
        sock.setblocking(False)
        connection = Connection(sock, message, selector)
        connections.append(connection)
        selector.register(sock, selectors.EVENT_READ, connection)

    run_requests(connections, selector, args.warmup_requests)
    print("quiet window-start", flush=True)
    wait_for_go()
    started = time.monotonic()
    done = run_requests(connections, selector, args.requests)
    elapsed = time.monotonic() - started
    print("quiet window-end", flush=True)
    wait_for_go()
    print(json.dumps({"connections_established": len(connections), "errors_total": 0,
                      "errors": {}, "requests": done, "elapsed_s": elapsed}), flush=True)
    for connection in connections:
        connection.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
