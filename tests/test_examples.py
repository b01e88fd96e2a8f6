"""The examples/ servers and clients run as documented."""
import pathlib
import socket
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not EXAMPLES.is_dir(), reason="needs the source tree's examples/"),
]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("example, expected", [
    ("echo", ["Hello, world!", "simpletcp", "bye"]),
    ("echoreverse", ["!dlrow ,olleH", "desserts", "racecar"]),
])
def test_example_client_talks_to_its_server(example, expected):
    port = free_port()
    server = subprocess.Popen([sys.executable, str(EXAMPLES / example / "server.py"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert "listening on 127.0.0.1:%d" % port in server.stdout.readline()
        result = subprocess.run([sys.executable, str(EXAMPLES / example / "client.py"), str(port)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected
    finally:
        server.kill()
        server.wait()


def test_the_shared_counter_counts_across_its_two_workers(tmp_path):
    """Each hit is counted once, in order, whichever worker takes it: the count lives in
    the store, not in either worker."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(EXAMPLES / "shared_counter" / "server.py"),
                               str(port), str(tmp_path / "store.sqlite3")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on 127.0.0.1:%d with 2 workers" % port in server.stdout.readline()
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
