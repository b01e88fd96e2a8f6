#!/usr/bin/env python3
"""TLS echo: python bench/tls.py [--mode counted|timed|both] [--smoke] [--rounds N]

simpletcp (TCPServer(ssl=...)), uvloop and asyncio (create_server(ssl=...)) serve the
same echo with the same SSLContext (bench/servers/tls_context.py: the standard
library's server defaults, one certificate made here by `openssl req`, ECDSA P-256).

counted (the default): driven by bench/tls_loadgen.py (Python's ssl client), for W1 and
W3 user-space instructions per request (callgrind) and system calls per request
(strace), as run.py --counted measures them (bench/counted.py). Handshakes are outside
the window: this is the cost of serving established TLS connections.

timed: driven by bench/tls_loadgen.c (OpenSSL, epoll; built here, needs libssl-dev),
pinned as run.py pins: req/s, p50/p99 latency and the server's CPU µs per request (from
/proc at the window's edges) for W1 and W3, and HS: a new connection per request (TCP
connect, full TLS 1.3 handshake, one 64 B echo, close), so that req/s is handshakes/s
and CPU per request is CPU per handshake. Medians over the rounds (default 3 × 5 s, ~4
min; --smoke: 1 × 1 s, ~30 s), written to bench/results/tls-timed.md and .json.

Figures are medians over the rounds; the ratio columns divide by uvloop's.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import counted
import run

SERVERS = {
    "simpletcp": run.Server("simpletcp", "simpletcp epoll, ssl=",
                            run.python_server("simpletcp_echo.py", "--backend", "epoll"),
                            requires=("simpletcp.tcpserver",)),
    # As run.py's simpletcp_64k: what a larger recv_bytes buys in bulk (fewer callbacks).
    "simpletcp_64k": run.Server("simpletcp_64k", "simpletcp epoll, ssl=, recv_bytes=65536",
                                run.python_server("simpletcp_echo.py", "--backend", "epoll",
                                                  "--recv-bytes", "65536"),
                                requires=("simpletcp.tcpserver",), workloads=("W3",)),
    "uvloop": run.Server("uvloop", "uvloop Protocol, ssl=",
                         run.python_server("uvloop_protocol.py"), requires=("uvloop",)),
    "asyncio": run.Server("asyncio", "asyncio Protocol, ssl=",
                          run.python_server("asyncio_protocol.py")),
}
REFERENCE = "uvloop"
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


def serving_tls(server: run.Server, cert: Path, key: Path) -> run.Server:
    """`server` given the certificate: every server gets the same SSLContext."""
    return dataclasses.replace(server, argv=server.argv + ("--certfile", str(cert),
                                                           "--keyfile", str(key)))


def count(name: str, workload: str, cert: Path, key: Path, smoke: bool,
          pin: bool) -> counted.CountedRun:
    title, connections, size, requests, smoke_requests = WORKLOADS[workload]
    warmup, window = smoke_requests if smoke else requests
    server = serving_tls(SERVERS[name], cert, key)

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
            lines.append(f"| {SERVERS[name].label} | **failed**: {reasons} |  |  |  |  |")
            continue
        row = [SERVERS[name].label]
        for key in ("instructions", "syscalls"):
            value, base = median(good, key), median([r for r in reference
                                                     if r.status == "ok"], key)
            row.append(counted.fmt(value))
            row.append(f"{value / base:.2f}×" if value and base else "—")
        row.append(counted.largest_calls(good, good[0].messages))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- timed

TLS_LOADGEN_SOURCE = run.BENCH_DIR / "tls_loadgen.c"
TLS_LOADGEN = run.BUILD_DIR / "tls_loadgen"
ECHO_COLUMNS = ("requests_per_s", "cpu_us_per_request", "p50_us", "p99_us",
                "server_cpu_pct", "loadgen_cpu_pct")
# As run.py's W1 and W3, over TLS; HS is a new connection per request.
TIMED_WORKLOADS = [
    run.Workload("W1", "100 connections × 1 KiB ping-pong", 100, 1024, ECHO_COLUMNS,
                 floor=REFERENCE, floor_header="÷ uvloop"),
    run.Workload("W3", "10 connections × 256 KiB (bulk)", 10, 256 * 1024,
                 ("echo_mb_per_s",) + ECHO_COLUMNS, floor=REFERENCE, floor_header="÷ uvloop"),
    run.Workload("HS", "handshakes: 20 at a time, a new connection per request (connect, "
                 "TLS 1.3 handshake, one 64 B echo, close); req/s = handshakes/s, CPU µs/req "
                 "= per handshake", 20, 64, ECHO_COLUMNS, floor=REFERENCE,
                 floor_header="÷ uvloop"),
]
TIMED_WORKLOADS_BY_NAME = {workload.name: workload for workload in TIMED_WORKLOADS}


def build_tls_loadgen() -> str | None:
    """Build bench/tls_loadgen.c: None, or why it cannot be built here."""
    problem = run.build_c_program(TLS_LOADGEN_SOURCE, TLS_LOADGEN, False, ("-lssl", "-lcrypto"))
    if problem and "openssl/" in problem:
        problem += " (needs OpenSSL's headers: apt-get install libssl-dev)"
    return problem


def tls_loadgen_argv(port: int, workload: run.Workload, connections: int, pin: bool, *,
                     ca: Path) -> list[str]:
    argv = [str(TLS_LOADGEN), "--port", str(port), "--connections", str(connections),
            "--size", str(workload.message_bytes), "--ca", str(ca),
            "--server-name", "localhost"]
    if workload.name == "HS":
        argv.append("--handshakes")
    if pin:
        argv += ["--server-core", str(run.SERVER_CORE)]
    return argv


def unavailable_suite(servers: list, workloads: list, reason: str) -> dict:
    """Every server of every workload reported unavailable, for `reason`."""
    return {"cells": {workload.name: {server.name: run.Cell("unavailable",
                                                            f"unavailable ({reason})")
                                      for server in servers
                                      if not server.workloads
                                      or workload.name in server.workloads}
                      for workload in workloads},
            "connections": {workload.name: workload.connections for workload in workloads}}


def negotiated(suite: dict) -> str:
    """The protocol and cipher the load generator reported ("TLSv1.3 TLS_AES_...")."""
    for cells in suite["cells"].values():
        for cell in cells.values():
            for result in cell.runs:
                if result.raw.get("tls"):
                    return result.raw["tls"]
    return "no handshake completed"


def timed_report(args, suite: dict, servers: list, workloads: list, machine: dict,
                 pin: bool) -> str:
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    header = [
        f"## TLS echo, timed{' (smoke run: not for comparison)' if args.smoke else ''}", "",
        f"{started}; {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}, uvloop {machine['uvloop_version'] or 'not installed'}, "
        f"{machine['openssl']}; {negotiated(suite)}, ECDSA P-256 certificate.",
        f"{args.rounds} round(s) of {args.duration:g} s (after {args.warmup:g} s warm-up) per "
        "server and workload; medians shown. "
        + (f"Server pinned to CPU {run.SERVER_CORE}, load generator (bench/tls_loadgen.c) "
           f"to CPU {run.LOADGEN_CORE}." if pin else "Not pinned (fewer than 2 CPUs)."),
        "÷ uvloop: value ÷ uvloop's (throughput: higher is better; CPU, latency: lower is "
        "better).", ""]
    tables = [run.workload_table(workload, suite["cells"][workload.name], servers,
                                 suite["connections"][workload.name])
              for workload in workloads]
    return "\n".join(header) + "\n" + "\n".join(tables)


def run_timed(args, names: list[str], cert: Path, key: Path, pin: bool) -> int:
    started = time.monotonic()
    servers = [serving_tls(SERVERS[name], cert, key) for name in names]
    workloads = [TIMED_WORKLOADS_BY_NAME[name] for name in args.workloads.split(",")
                 if name in TIMED_WORKLOADS_BY_NAME]
    problem = build_tls_loadgen()
    if problem:
        print(f"the TLS load generator cannot be built: {problem}", file=sys.stderr)
        suite = unavailable_suite(servers, workloads, problem)
    else:
        measure = functools.partial(run.run_once,
                                    client=functools.partial(tls_loadgen_argv, ca=cert))
        suite = run.run_suite(args, servers, workloads, pin, measure)
    machine = run.machine_description()
    machine["openssl"] = subprocess.run(["openssl", "version"], capture_output=True,
                                        text=True).stdout.split(" (")[0].strip()
    report = timed_report(args, suite, servers, workloads, machine, pin)
    print(report, flush=True)
    run.write_results(args.output, "tls-timed-smoke" if args.smoke else "tls-timed", report,
                      run.results_json(args, suite, machine), started)
    failures = run.unexpected_failures(suite, set())
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- counted

def run_counted(args, servers: list[str], cert: Path, key: Path, pin: bool) -> int:
    for workload in args.workloads.split(","):
        if workload not in WORKLOADS:
            continue  # HS is timed only
        results: dict = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for name in servers:
                result = count(name, workload, cert, key, args.smoke, pin)
                results[name].append(result)
                figures = result.per_request()
                print(f"{workload} {name} round {round_ + 1}: {result.status} "
                      f"{figures} {result.reason}", file=sys.stderr, flush=True)
        print(table(workload, results), flush=True)
        print(flush=True)
    return 0


# Runs per server and workload unless --rounds says: (full, --smoke).
TIMED_ROUNDS = (3, 1)
COUNTED_ROUNDS = (1, 1)


def with_rounds(args, defaults: tuple[int, int]) -> argparse.Namespace:
    """`args` with .rounds set: --rounds, or this mode's default."""
    full, smoke = defaults
    rounds = args.rounds if args.rounds is not None else (smoke if args.smoke else full)
    return argparse.Namespace(**{**vars(args), "rounds": rounds})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("counted", "timed", "both"), default="counted",
                        help="counted: instructions and system calls per request (valgrind, "
                             "strace; the default); timed: req/s, latency, CPU per request "
                             "and handshakes/s (bench/tls_loadgen.c); both: one then the other")
    parser.add_argument("--smoke", action="store_true",
                        help="few requests, or 1 round of 1 s: checks it works")
    parser.add_argument("--rounds", type=int,
                        help="runs per server and workload (default: counted 1, timed 3, "
                             "smoke 1)")
    parser.add_argument("--workloads", default=None,
                        help="counted: W1,W3 (default); timed: W1,W3,HS (default)")
    parser.add_argument("--servers", default=None,
                        help=f"any of {', '.join(SERVERS)} (default: counted "
                             "simpletcp,uvloop,asyncio; timed all, simpletcp_64k in W3 only)")
    parser.add_argument("--duration", type=float, help="timed: measured seconds (default 5; "
                                                       "smoke 1)")
    parser.add_argument("--warmup", type=float, help="timed: warm-up seconds (default 1; "
                                                     "smoke 0.3)")
    parser.add_argument("--ramp-timeout", type=float, default=20.0,
                        help="timed: seconds to connect and handshake every connection")
    parser.add_argument("--output", type=Path, default=run.RESULTS_DIR,
                        help=f"timed: directory for tls-timed.md/.json (default "
                             f"{run.RESULTS_DIR})")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    args = parser.parse_args(argv)
    defaults = ({"duration": 1.0, "warmup": 0.3} if args.smoke
                else {"duration": 5.0, "warmup": 1.0})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (args.rounds is not None and args.rounds < 1) or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds must be >= 1, --duration > 0, --warmup >= 0")
    known_workloads = set(WORKLOADS) | set(TIMED_WORKLOADS_BY_NAME)
    args.workloads = args.workloads or ("W1,W3" if args.mode == "counted" else "W1,W3,HS")
    unknown = sorted(set(args.workloads.split(",")) - known_workloads)
    if unknown:
        parser.error(f"unknown workloads {unknown}; these exist: {', '.join(sorted(known_workloads))}")
    counted_servers = [name for name in (args.servers or "simpletcp,uvloop,asyncio").split(",")
                       if name]
    timed_servers = [name for name in (args.servers or ",".join(SERVERS)).split(",") if name]
    unknown = sorted(set(counted_servers + timed_servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; these exist: {', '.join(SERVERS)}")
    if args.mode != "timed" and counted.missing_tools():
        missing = counted.missing_tools()
        print(f"counted mode needs {', '.join(missing)} (apt-get install {' '.join(missing)})",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, run.terminate_on_signal)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    status = 0
    with tempfile.TemporaryDirectory(prefix="simpletcp-tls-bench-") as tmp:
        cert, key = make_certificate(Path(tmp))
        try:
            if args.mode != "counted":
                status = run_timed(with_rounds(args, TIMED_ROUNDS), timed_servers, cert, key,
                                   pin)
            if args.mode != "timed":
                status = run_counted(with_rounds(args, COUNTED_ROUNDS), counted_servers, cert,
                                     key, pin) or status
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            run.stop_all_processes()
    return status


if __name__ == "__main__":
    sys.exit(main())
