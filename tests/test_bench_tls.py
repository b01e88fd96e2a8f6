"""bench/tls.py's parts, without valgrind: each TLS echo server (simpletcp, uvloop,
asyncio, given the same certificate) is driven through a counted window by
bench/tls_loadgen.py, which checks every echoed byte and counts exactly the requests
asked for; and the timed half, bench/tls_loadgen.c and `tls.py --mode timed`."""
import json
import socket
import ssl
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


# ----------------------------------------------------------------------------- timed, in C
# bench/tls_loadgen.c (OpenSSL) drives bench/tls.py --mode timed. Speeds are never
# asserted; what must hold anywhere: every echoed byte is checked, a wrong one is counted,
# each handshake of --handshakes is a new connection, and every server gets its rows.

def tls_load(tls_loadgen, port, ca, *options):
    """Run the C TLS load generator briefly against `port`: its JSON report."""
    run = subprocess.run([str(tls_loadgen), "--port", str(port), "--ca", str(ca),
                          "--duration", "0.5", "--warmup", "0.1", *options],
                         capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def echo(queue, data):
    queue.put(data)


@pytest.mark.parametrize("options", [("--connections", "20", "--size", "1024"),
                                     ("--connections", "3", "--size", str(256 * 1024)),
                                     ("--connections", "5", "--size", "64", "--handshakes")],
                         ids=["W1", "W3", "HS"])
def test_the_c_tls_load_generator_echoes_through_simpletcp(serve, server_context, tls_files,
                                                           tls_loadgen, options):
    server = serve(echo, ssl=server_context)
    report = tls_load(tls_loadgen, server.port, tls_files["ca"], *options)
    assert report["errors_total"] == 0, report["errors"]
    assert report["tls"].startswith("TLSv1.3 ")
    assert report["requests"] > 0 and report["window_s"] > 0
    if "--handshakes" in options:
        # A request is a connection of its own: at least one per request was proven.
        assert report["workload"] == "handshakes"
        assert report["connections_established"] >= report["requests"]
    else:
        assert report["connections_established"] == int(options[1])


@pytest.mark.parametrize("handshakes", [(), ("--handshakes",)], ids=["echo", "HS"])
def test_a_wrong_echo_is_counted_never_passed(serve, server_context, tls_files, tls_loadgen,
                                              handshakes):
    def corrupting_echo(queue, data):
        queue.put(bytes([data[0] ^ 1]) + data[1:])

    server = serve(corrupting_echo, ssl=server_context)
    report = tls_load(tls_loadgen, server.port, tls_files["ca"], "--connections", "2",
                      "--size", "64", *handshakes)
    assert report["requests"] == 0
    assert report["errors"]["mismatch"] > 0 and report["errors_total"] > 0


def test_a_server_it_does_not_trust_is_a_tls_error(serve, tls_files, tls_loadgen, tmp_path):
    """--ca is checked: a certificate from another CA fails every handshake."""
    trustme = pytest.importorskip("trustme")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["certfile"], tls_files["keyfile"])
    server = serve(echo, ssl=context)
    report = tls_load(tls_loadgen, server.port, other_ca, "--connections", "2",
                      "--ramp-timeout", "5")
    assert report["requests"] == 0 and report["errors"]["tls"] == 2


@pytest.mark.parametrize("handshakes", [(), ("--handshakes",)], ids=["echo", "HS"])
def test_a_port_that_refuses_ends_the_run_with_each_connect_counted(tls_files, tls_loadgen,
                                                                   handshakes):
    """Not a storm of reconnects: a refused connect is not retried, even in HS."""
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        report = tls_load(tls_loadgen, port, tls_files["ca"], "--connections", "3",
                          *handshakes)
    assert report["errors"]["connect_failed"] == 3 and report["errors_total"] == 3
    assert report["requests"] == 0 and report["connections_alive_at_end"] == 0


@pytest.mark.timeout(300)
def test_the_timed_tls_bench_reports_every_server(tmp_path, tls_loadgen, openssl):
    """python bench/tls.py --mode timed --smoke: simpletcp, uvloop and asyncio each serve
    W1, W3 and HS, every byte checked, and each gets a row with its ratio to uvloop."""
    pytest.importorskip("uvloop", reason="needs uvloop: pip install '.[bench]'")
    run = subprocess.run([sys.executable, str(BENCH / "tls.py"), "--mode", "timed", "--smoke",
                          "--duration", "0.5", "--warmup", "0.2", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "tls-timed-smoke.json").read_text())["results"]
    assert sorted(results) == ["HS", "W1", "W3"]
    for workload, cells in results.items():
        expected = ["asyncio", "simpletcp", "uvloop"] + (["simpletcp_64k"] if workload == "W3"
                                                         else [])
        assert sorted(cells) == sorted(expected)
        for name, cell in cells.items():
            assert cell["status"] == "ok", (workload, name, cell["reason"])
            assert cell["median"]["requests_per_s"] > 0
    for label in ("simpletcp epoll, ssl=", "uvloop Protocol, ssl=", "asyncio Protocol, ssl="):
        assert run.stdout.count(f"| {label} |") == 3
    assert "| uvloop Protocol, ssl= |" in run.stdout and "÷ uvloop" in run.stdout


def test_without_openssl_headers_the_servers_are_unavailable(tmp_path, monkeypatch, openssl,
                                                             capsys):
    """Where tls_loadgen.c cannot compile, the timed table says why, row by row, and the
    run does not fail (as run.py reports a server it cannot run)."""
    sys.path.insert(0, str(BENCH))
    try:
        import run as bench_run
        import tls
    finally:
        sys.path.remove(str(BENCH))
    source = tmp_path / "tls_loadgen.c"
    source.write_text("#include <openssl/no_such_header.h>\nint main(void) { return 0; }\n")
    monkeypatch.setattr(tls, "TLS_LOADGEN_SOURCE", source)
    monkeypatch.setattr(tls, "TLS_LOADGEN", tmp_path / "tls_loadgen")
    monkeypatch.setattr(tls.signal, "signal", lambda *args: None)
    monkeypatch.setattr(bench_run, "build_failures", {})
    assert tls.main(["--mode", "timed", "--smoke", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "unavailable (tls_loadgen.c does not compile" in line]
    assert len(rows) == 3 + 4 + 3, out
    assert all("apt-get install libssl-dev" in row for row in rows)
