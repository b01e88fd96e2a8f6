#!/usr/bin/env python3
"""TLS echo, counted: python bench/tls.py [--smoke] [--rounds N] [--workloads W1,W3]

simpletcp (TCPServer(ssl=...)), uvloop and asyncio (create_server(ssl=...)) serve the
same echo with the same SSLContext (bench/servers/tls_context.py: the standard
library's server defaults, one certificate made here by `openssl req`, ECDSA P-256),
driven by bench/tls_loadgen.py (Python's ssl client). For each server and workload:
user-space instructions per request (callgrind) and system calls per request (strace),
as run.py --counted measures them (bench/counted.py). Figures are medians over the
rounds; the ratio column divides by uvloop's. Handshakes are outside the window: this
is the cost of serving established TLS connections.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import counted
import run

SERVERS = {
    "simpletcp": ("simpletcp epoll, ssl=", run.python_server("simpletcp_echo.py",
                                                             "--backend", "epoll")),
    # As run.py's simpletcp_64k: what a larger recv_bytes buys in bulk (fewer callbacks).
    "simpletcp_64k": ("simpletcp epoll, ssl=, recv_bytes=65536",
                      run.python_server("simpletcp_echo.py", "--backend", "epoll",
                                        "--recv-bytes", "65536")),
    "uvloop": ("uvloop Protocol, ssl=", run.python_server("uvloop_protocol.py")),
    "asyncio": ("asyncio Protocol, ssl=", run.python_server("asyncio_protocol.py")),
}
# (connections, message bytes, (warm-up, window) round trips, smoke's)
WORKLOADS = {
    "W1": ("100 connections × 1 KiB ping-pong", 100, 1024, (2_000, 20_000), (200, 2_000)),
    "W3": ("10 connections × 256 KiB (bulk)", 10, 256 * 1024, (20, 200), (5, 50)),
}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (its own CA): (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def count(name: str, workload: str, cert: Path, key: Path, smoke: bool,
          pin: bool) -> counted.CountedRun:
    label, argv = SERVERS[name]
    title, connections, size, requests, smoke_requests = WORKLOADS[workload]
    warmup, window = smoke_requests if smoke else requests
    server = run.Server(f"{name}_tls", label, argv + ("--certfile", str(cert),
                                                      "--keyfile", str(key)))

    @contextlib.contextmanager
    def start_server(wrapper, timeout):
        try:
            with run.running_server(server, pin, wrapper, timeout) as running:
                yield running
        except run.ServerStartError as error:
            raise counted.CountingError(str(error)) from None

    def loadgen(port: int) -> list[str]:
        return [sys.executable, str(run.BENCH_DIR / "tls_loadgen.py"), "--port", str(port),
                "--connections", str(connections), "--size", str(size), "--ca", str(cert)]

    return counted.measure(start_server, run.SERVER_START_TIMEOUT_S,
                           run.SERVER_START_UNDER_VALGRIND_TIMEOUT_S, loadgen, connections,
                           warmup, window, 1,
                           run.child_setup(run.LOADGEN_CORE if pin else None),
                           run.live_processes)


def median(runs: list, key: str):
    values = [r.per_request()[key] for r in runs if key in r.per_request()]
    return statistics.median(values) if values else None


def table(workload: str, results: dict) -> str:
    title = WORKLOADS[workload][0]
    lines = [f"#### TLS {workload}: {title}", "",
             "| server | instructions/req | ÷ uvloop | system calls/req | ÷ uvloop "
             "| most frequent system calls per request |", "|---|---|---|---|---|---|"]
    reference = results.get("uvloop", [])
    for name, runs in results.items():
        good = [r for r in runs if r.status == "ok"]
        if not good:
            reasons = "; ".join(r.reason for r in runs)
            lines.append(f"| {SERVERS[name][0]} | **failed**: {reasons} |  |  |  |  |")
            continue
        row = [SERVERS[name][0]]
        for key in ("instructions", "syscalls"):
            value, base = median(good, key), median([r for r in reference
                                                     if r.status == "ok"], key)
            row.append(counted.fmt(value))
            row.append(f"{value / base:.2f}×" if value and base else "—")
        row.append(counted.largest_calls(good, good[0].messages))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="few requests: checks it works")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workloads", default="W1,W3")
    parser.add_argument("--servers", default="simpletcp,uvloop,asyncio",
                        help=f"any of {', '.join(SERVERS)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    args = parser.parse_args(argv)
    missing = counted.missing_tools()
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install {' '.join(missing)})",
              file=sys.stderr)
        return 2
    servers = [name for name in args.servers.split(",") if name]
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; these exist: {', '.join(SERVERS)}")
    with tempfile.TemporaryDirectory(prefix="simpletcp-tls-bench-") as tmp:
        cert, key = make_certificate(Path(tmp))
        try:
            for workload in args.workloads.split(","):
                results: dict = {name: [] for name in servers}
                for round_ in range(args.rounds):
                    for name in servers:
                        result = count(name, workload, cert, key, args.smoke,
                                       not args.no_pin)
                        results[name].append(result)
                        figures = result.per_request()
                        print(f"{workload} {name} round {round_ + 1}: {result.status} "
                              f"{figures} {result.reason}", file=sys.stderr, flush=True)
                print(table(workload, results), flush=True)
                print(flush=True)
        finally:
            run.stop_all_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
