"""The examples/ servers and clients run as documented."""
import re
import signal
import socket
import subprocess
import sys

import pytest

from support import EXAMPLES

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not EXAMPLES.is_dir(), reason="needs the source tree's examples/"),
]


def start_example(example, *args, **popen_keywords):
    """python examples/EXAMPLE/server.py 0 ARGS: (the server, its port, its banner). Port 0
    lets the kernel choose, and the banner names the port: a port found free first and
    passed on could be taken meanwhile by another test's server or client."""
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / example / "server.py"), "0", *args],
        stdout=subprocess.PIPE, text=True, **popen_keywords)
    banner = server.stdout.readline()
    listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
    if listening is None:
        server.kill()
        server.wait()
        raise AssertionError(f"no listening line: {banner!r}")
    return server, int(listening.group(1)), banner


@pytest.mark.parametrize("example, expected", [
    ("echo", ["Hello, world!", "simpletcp", "bye"]),
    ("echoreverse", ["!dlrow ,olleH", "desserts", "racecar"]),
])
def test_example_client_talks_to_its_server(example, expected):
    server, port, _ = start_example(example)
    try:
        result = subprocess.run([sys.executable, str(EXAMPLES / example / "client.py"), str(port)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("example, request_bytes, reply_start", [
    ("chat", b"alice\n", b"* hello: send your nickname\n* welcome, alice"),
    ("kvstore", b"PING\r\n", b"+PONG\r\n"),
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
])
def test_protocol_example_serves_as_its_readme_runs_it(example, request_bytes, reply_start):
    # python examples/NAME/server.py PORT, as in README.md; each answers, and stops on Ctrl-C.
    server, port, _ = start_example(example)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request_bytes)
            reply = b""
            while len(reply) < len(reply_start) and reply_start.startswith(reply):
                chunk = client.recv(4096)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(reply_start)
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
        server.wait()

def test_the_shared_counter_counts_across_its_two_workers(tmp_path):
    """Each hit is counted once, in order, whichever worker takes it: the count lives in
    the store, not in either worker."""
    server, port, banner = start_example("shared_counter", str(tmp_path / "store.sqlite3"),
                                         stderr=subprocess.PIPE)
    try:
        assert f"listening on 127.0.0.1:{port} with 2 workers" in banner
        replies = []
        for _ in range(3):
            result = subprocess.run(
                [sys.executable, str(EXAMPLES / "shared_counter" / "client.py"), str(port)],
                capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
            replies += result.stdout.splitlines()
        hits = [int(line.split()[1].rstrip(",")) for line in replies]
        assert hits == list(range(1, 13))
        workers = {line.rsplit(" ", 1)[1] for line in replies}
        assert server.pid not in {int(pid) for pid in workers}
        assert len(workers) <= 2
    finally:
        server.terminate()
        assert server.wait(30) == 0
