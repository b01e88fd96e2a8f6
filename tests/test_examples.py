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
