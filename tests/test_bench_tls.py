"""bench/tls.py's parts, without valgrind: each TLS echo server (simpletcp, uvloop,
asyncio, given the same certificate) is driven through a counted window by
bench/tls_loadgen.py, which checks every echoed byte and counts exactly the requests
asked for."""
import json
import subprocess
import sys

import pytest

from support import BENCH, TIMEOUT

if not (BENCH / "tls.py").exists():
    pytest.skip("needs the source tree's bench/", allow_module_level=True)

SERVERS = {
    "simpletcp": ["simpletcp_echo.py", "--backend", "epoll"],
    "uvloop": ["uvloop_protocol.py"],
    "asyncio": ["asyncio_protocol.py"],
}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory, openssl):
    sys.path.insert(0, str(BENCH))
    try:
        import tls
        return tls.make_certificate(tmp_path_factory.mktemp("bench-tls"))
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", sorted(SERVERS))
@pytest.mark.parametrize("size, connections", [(1024, 5), (256 * 1024, 2)])
def test_each_tls_server_serves_a_counted_window(certificate, name, size, connections):
    if name == "uvloop":
        pytest.importorskip("uvloop")
    cert, key = certificate
    server = subprocess.Popen(
        [sys.executable, str(BENCH / "servers" / SERVERS[name][0]), *SERVERS[name][1:],
         "--port", "0", "--certfile", str(cert), "--keyfile", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=BENCH / "servers")
    try:
        port = int(server.stdout.readline())
        result = subprocess.run(
            [sys.executable, str(BENCH / "tls_loadgen.py"), "--port", str(port),
             "--connections", str(connections), "--size", str(size), "--ca", str(cert),
             "--counted", "--warmup-requests", "7", "--requests", "23"],
            input="go\ngo\n", capture_output=True, text=True, timeout=6 * TIMEOUT)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["quiet window-start", "quiet window-end"]
        report = json.loads(lines[2])
        assert report["requests"] == 23 and report["connections_established"] == connections
    finally:
        server.kill()
        server.wait()
