#!/usr/bin/env python3
"""Run the simpletcp benchmark suite: python bench/run.py [--smoke] [options]

Builds the C load generator and the C floor server, then for each workload runs
every server in turn, in rounds (servers interleaved within a round), with the
server pinned to one core and the load generator to another. Reports medians
over the rounds as markdown tables (stdout and bench/results/) and raw figures
as JSON. See bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import counted

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "build"
SERVERS_DIR = BENCH_DIR / "servers"
RESULTS_DIR = BENCH_DIR / "results"
LOADGEN = BUILD_DIR / "loadgen"
C_SERVER = BUILD_DIR / "c_epoll_echo"
C_URING_SERVER = BUILD_DIR / "c_uring_echo"

SERVER_CORE = 0
LOADGEN_CORE = 1
# Same for every server: the load generator never has more than its
# --connect-concurrency (128) handshakes unanswered, so 1024 never overflows.
LISTEN_BACKLOG = 1024
SERVER_START_TIMEOUT_S = 20.0
# Under valgrind a Python server takes seconds just to import its modules.
SERVER_START_UNDER_VALGRIND_TIMEOUT_S = 180.0
# Time to let a server settle after it printed its port, before idle RSS is read.
SERVER_SETTLE_S = 0.3
STOP_GRACE_S = 2.0

FLOOR = "c_epoll"


# ----------------------------------------------------------------------------- servers

@dataclass(frozen=True)
class Server:
    name: str
    label: str
    argv: tuple            # command line; the runner appends --port 0 --backlog N
    requires: tuple = ()   # Python modules that must import for the server to run
    # Connections past which the server is known to fail (select(): FD_SETSIZE).
    # Failing beyond it is reported but is not an error of the suite.
    connection_limit: int | None = None
    # Workloads this server variant is meant for; empty = all.
    workloads: tuple = ()
    # A command that exits 0 if the server can run here; otherwise its first line of
    # output says why (c_uring: io_uring may be missing or forbidden by seccomp).
    probe: tuple = ()
    # Answers each line of a pipelined-lines workload (W5) as a message of its own.
    # A plain echo would pass W5's byte check without doing the work, so servers
    # without framing are reported as unsupported there.
    line_framing: bool = False


def python_server(script: str, *args: str) -> tuple:
    return (sys.executable, str(SERVERS_DIR / script), *args)


SERVERS = [
    Server("c_epoll", "C epoll (floor)", (str(C_SERVER),)),
    # Bulk transfer is bounded by the read size: these show what 64 KiB reads buy.
    Server("c_epoll_64k", "C epoll, 64 KiB reads", (str(C_SERVER), "--recv-bytes", "65536"),
           workloads=("W3",)),
    # The floor of the framed workload: finds each line with memchr() and answers it.
    Server("c_epoll_lines", "C epoll, line by line (floor)", (str(C_SERVER), "--lines"),
           workloads=("W5",), line_framing=True),
    # The io_uring prototype (BENCHMARKS.md, "io_uring prototype").
    Server("c_uring", "C io_uring (prototype)", (str(C_URING_SERVER),),
           probe=(str(C_URING_SERVER), "--probe")),
    Server("c_uring_64k", "C io_uring, 64 KiB buffers", (str(C_URING_SERVER), "--recv-bytes", "65536"),
           probe=(str(C_URING_SERVER), "--probe"), workloads=("W3",)),
    Server("simpletcp", "simpletcp epoll", python_server("simpletcp_echo.py", "--backend", "epoll"),
           requires=("simpletcp.tcpserver",)),
    Server("simpletcp_poll", "simpletcp poll", python_server("simpletcp_echo.py", "--backend", "poll"),
           requires=("simpletcp.tcpserver",)),
    Server("simpletcp_64k", "simpletcp epoll, recv_bytes=65536",
           python_server("simpletcp_echo.py", "--backend", "epoll", "--recv-bytes", "65536"),
           requires=("simpletcp.tcpserver",), workloads=("W3",)),
    Server("uvloop", "uvloop Protocol", python_server("uvloop_protocol.py"), requires=("uvloop",)),
    Server("asyncio_protocol", "asyncio Protocol", python_server("asyncio_protocol.py")),
    Server("asyncio_streams", "asyncio streams", python_server("asyncio_streams.py")),
    Server("socketserver_threading", "socketserver threads", python_server("socketserver_threading.py")),
    Server("original_select", "original select()", python_server("original_select.py"),
           connection_limit=1000),
    # W5 (issue 12's framing) as users write it today: simpletcp's callback buffering
    # each connection's unfinished line, uvloop's Protocol framing by hand, asyncio
    # streams' readline().
    Server("simpletcp_lines", "simpletcp, lines framed in the callback",
           python_server("simpletcp_framed.py", "--program", "lines"),
           requires=("simpletcp.tcpserver",), workloads=("W5",), line_framing=True),
    # The same with issue 12's compiled framing: Lines, and each answer returned.
    Server("simpletcp_framed_lines", "simpletcp, Lines framing, answer returned",
           python_server("simpletcp_framed.py", "--program", "lines", "--framing", "compiled"),
           requires=("simpletcp.framing",), workloads=("W5",), line_framing=True),
    Server("uvloop_lines", "uvloop Protocol, lines framed by hand",
           python_server("protocol_framed.py", "--program", "lines"),
           requires=("uvloop",), workloads=("W5",), line_framing=True),
    Server("asyncio_lines", "asyncio streams, readline()",
           python_server("streams_framed.py", "--program", "lines"),
           workloads=("W5",), line_framing=True),
]
SERVERS_BY_NAME = {server.name: server for server in SERVERS}


# ----------------------------------------------------------------------------- workloads

@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    connections: int
    message_bytes: int
    columns: tuple               # metric keys shown in its table, see METRICS
    smoke_connections: int | None = None
    # Each message is this many pipelined lines, each answered on its own (W5); the
    # per-request figures are then per line.
    lines: int = 1
    # Counted mode: round trips (writes) before the window, and in it.
    counted_requests: tuple = (2_000, 20_000)
    smoke_counted_requests: tuple = (200, 2_000)
    # The server the "× C" columns divide by, and their header.
    floor: str = FLOOR
    floor_header: str = "× C"
    # The two servers of the "simpletcp ÷ uvloop" line.
    compared: tuple = ("simpletcp", "uvloop")

    def supported_by(self, server: "Server") -> bool:
        return self.lines == 1 or server.line_framing


@dataclass(frozen=True)
class Metric:
    header: str
    fmt: str
    vs_floor: bool = False       # add a "× C" column: value / C floor's value
    vs_uvloop: bool = False      # listed in the "simpletcp ÷ uvloop" line


METRICS = {
    "requests_per_s": Metric("req/s", "{:,.0f}", vs_floor=True, vs_uvloop=True),
    "echo_mb_per_s": Metric("echo MB/s", "{:,.1f}", vs_floor=True, vs_uvloop=True),
    "cpu_us_per_request": Metric("server CPU µs/req", "{:,.2f}", vs_floor=True, vs_uvloop=True),
    "p50_us": Metric("p50 µs", "{:,.1f}", vs_floor=True, vs_uvloop=True),
    "p99_us": Metric("p99 µs", "{:,.1f}", vs_floor=True, vs_uvloop=True),
    "server_cpu_pct": Metric("server CPU %", "{:.0f}"),
    "loadgen_cpu_pct": Metric("loadgen CPU %", "{:.0f}"),
    "established": Metric("connections", "{:,.0f}"),
    "rss_idle_mib": Metric("RSS idle MiB", "{:,.1f}"),
    "rss_loaded_mib": Metric("RSS loaded MiB", "{:,.1f}"),
    # The C floor keeps almost nothing per connection: a ratio to it says nothing.
    "kib_per_connection": Metric("KiB/conn", "{:,.2f}", vs_uvloop=True),
}

WORKLOADS = [
    Workload("W1", "100 connections × 1 KiB ping-pong", 100, 1024,
             ("requests_per_s", "cpu_us_per_request", "p50_us", "p99_us",
              "server_cpu_pct", "loadgen_cpu_pct")),
    Workload("W2", "1 connection × 64 B ping-pong (latency)", 1, 64,
             ("p50_us", "p99_us", "requests_per_s", "cpu_us_per_request",
              "server_cpu_pct", "loadgen_cpu_pct"),
             counted_requests=(500, 5_000), smoke_counted_requests=(100, 500)),
    Workload("W3", "10 connections × 256 KiB (bulk)", 10, 256 * 1024,
             ("echo_mb_per_s", "cpu_us_per_request", "p50_us", "p99_us",
              "server_cpu_pct", "loadgen_cpu_pct"),
             counted_requests=(20, 200), smoke_counted_requests=(5, 50)),
    Workload("W4", "10,000 concurrent connections × 64 B", 10_000, 64,
             ("established", "requests_per_s", "cpu_us_per_request", "rss_idle_mib",
              "rss_loaded_mib", "kib_per_connection", "p99_us", "server_cpu_pct",
              "loadgen_cpu_pct"),
             smoke_connections=500,
             counted_requests=(10_000, 50_000), smoke_counted_requests=(500, 2_000)),
    # Framing (issue 12): every write holds 16 lines of 64 bytes ("\n" last), each
    # answered by its echo. A request here is one line.
    Workload("W5", "100 connections × 16 pipelined 64-byte lines per write", 100, 16 * 64,
             ("requests_per_s", "cpu_us_per_request", "p50_us", "p99_us",
              "server_cpu_pct", "loadgen_cpu_pct"),
             lines=16, counted_requests=(200, 2_000), smoke_counted_requests=(20, 200),
             floor="c_epoll_lines", compared=("simpletcp_framed_lines", "uvloop_lines")),
]
WORKLOADS_BY_NAME = {workload.name: workload for workload in WORKLOADS}


# ----------------------------------------------------------------------------- processes

# Every child still running; killed on the way out whatever happens.
live_processes: set[subprocess.Popen] = set()


def child_setup(core: int | None):
    """Return a preexec_fn: pin the child to `core` and let it open as many sockets as allowed."""
    def setup():
        if core is not None:
            os.sched_setaffinity(0, {core})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return setup


def stop_process(proc: subprocess.Popen):
    """SIGTERM, then SIGKILL after a grace period; the whole process group either way."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    live_processes.discard(proc)


def stop_all_processes():
    for proc in list(live_processes):
        stop_process(proc)


def terminate_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def read_first_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first stdout line of `proc`, or None if it exits or says nothing in time."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            return None
        line += chunk
    return line.decode().strip()


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


# ----------------------------------------------------------------------------- one run

@dataclass
class RunResult:
    status: str                  # "ok" or "failed"
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


def derive_metrics(raw: dict, rss_idle_kib: int | None) -> dict:
    window = raw["window_s"]
    # A request is one answered message: a line in W5, a round trip elsewhere.
    requests = raw["messages"]
    metrics = {
        "requests_per_s": requests / window if window else 0.0,
        "echo_mb_per_s": raw["echo_mb_per_s"],
        "p50_us": raw["latency_us"]["p50"],
        "p99_us": raw["latency_us"]["p99"],
        "established": raw["connections_established"],
        "loadgen_cpu_pct": 100 * raw["loadgen_cpu_s"] / window if window else None,
    }
    if raw["server_cpu_s"] >= 0 and requests:
        metrics["cpu_us_per_request"] = 1e6 * raw["server_cpu_s"] / requests
        metrics["server_cpu_pct"] = 100 * raw["server_cpu_s"] / window
    if rss_idle_kib is not None and raw["server_rss_kib"] > 0:
        metrics["rss_idle_mib"] = rss_idle_kib / 1024
        metrics["rss_loaded_mib"] = raw["server_rss_kib"] / 1024
        if raw["connections_established"]:
            metrics["kib_per_connection"] = (
                (raw["server_rss_kib"] - rss_idle_kib) / raw["connections_established"])
    return metrics


class ServerStartError(Exception):
    """The server did not print its port; the message says what it printed instead."""


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    stderr_path: Path

    def exit_problem(self) -> str | None:
        """'server exited with code N (last stderr line)' if it has exited, else None."""
        code = self.proc.poll()
        if code is None:
            return None
        last = tail(self.stderr_path, 1)
        return f"server exited with code {code}" + (f" ({last})" if last else "")


@contextlib.contextmanager
def running_server(server: Server, pin: bool, wrapper: tuple = (),
                   start_timeout: float = SERVER_START_TIMEOUT_S):
    """Start `server` (inside `wrapper`, e.g. valgrind), pinned to the server core, and
    yield it once it has printed its port; stop it on the way out, whatever happens."""
    with tempfile.NamedTemporaryFile(prefix=f"{server.name}-", suffix=".stderr",
                                     delete=False) as stderr_file:
        stderr_path = Path(stderr_file.name)
    proc = None
    try:
        with open(stderr_path, "wb") as stderr_sink:
            proc = subprocess.Popen(
                [*wrapper, *server.argv, "--port", "0", "--backlog", str(LISTEN_BACKLOG)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_sink,
                preexec_fn=child_setup(SERVER_CORE if pin else None),
                start_new_session=True, cwd=SERVERS_DIR)
        live_processes.add(proc)
        port_line = read_first_line(proc, start_timeout)
        if not port_line or not port_line.isdigit():
            raise ServerStartError(f"server did not start: {tail(stderr_path) or port_line}")
        yield ServerProcess(proc, int(port_line), stderr_path)
    finally:
        if proc is not None:
            stop_process(proc)
        stderr_path.unlink(missing_ok=True)


def loadgen_argv(port: int, workload: Workload, connections: int, pin: bool) -> list[str]:
    argv = [str(LOADGEN), "--port", str(port), "--connections", str(connections),
            "--size", str(workload.message_bytes), "--lines", str(workload.lines)]
    if pin:
        argv += ["--server-core", str(SERVER_CORE)]
    return argv


def run_once(server: Server, workload: Workload, connections: int, args, pin: bool,
             client=loadgen_argv) -> RunResult:
    """One timed run; `client(port, workload, connections, pin)` is the load generator's
    command line without the window's options (bench/tls.py's is the TLS one)."""
    try:
        with running_server(server, pin) as running:
            time.sleep(SERVER_SETTLE_S)
            rss_idle_kib = vm_rss_kib(running.proc.pid)
            argv = client(running.port, workload, connections, pin) + [
                "--duration", str(args.duration), "--warmup", str(args.warmup),
                "--ramp-timeout", str(args.ramp_timeout), "--server-pid", str(running.proc.pid)]
            time_limit = args.ramp_timeout + args.warmup + args.duration + 30
            try:
                loadgen = subprocess.run(
                    argv, capture_output=True, text=True, timeout=time_limit,
                    preexec_fn=child_setup(LOADGEN_CORE if pin else None))
            except subprocess.TimeoutExpired:
                return RunResult("failed", f"load generator exceeded {time_limit:.0f} s")
            server_problem = running.exit_problem()
    except ServerStartError as error:
        return RunResult("failed", str(error))
    if loadgen.returncode != 0 or not loadgen.stdout.strip():
        return RunResult("failed", f"load generator failed: {loadgen.stderr.strip()[-300:]}")
    raw = json.loads(loadgen.stdout.strip().splitlines()[-1])
    raw["server_rss_idle_kib"] = rss_idle_kib
    result = RunResult("ok", metrics=derive_metrics(raw, rss_idle_kib), raw=raw)
    problems = (([server_problem] if server_problem else [])
                + counted.load_problems(raw, connections))
    if problems:
        result.status = "failed"
        result.reason = "; ".join(problems)
    return result


# ----------------------------------------------------------------------------- suite

# (source, binary, required): a required program that does not compile stops the run;
# an optional one makes its servers unavailable, with the compiler's first error.
C_PROGRAMS = [
    (BENCH_DIR / "loadgen.c", LOADGEN, True),
    (SERVERS_DIR / "c_epoll_echo.c", C_SERVER, True),
    # Needs <linux/io_uring.h> from Linux >= 6.1 headers.
    (SERVERS_DIR / "c_uring_echo.c", C_URING_SERVER, False),
]
# What the programs include from bench/: a change to it rebuilds them.
C_HEADERS = (BENCH_DIR / "loadgen_common.h",)
build_failures: dict[str, str] = {}   # binary path -> why it did not build


def build_c_program(source: Path, binary: Path, required: bool,
                    libraries: tuple = ()) -> str | None:
    """Compile `source` into `binary` unless it is newer than the sources: None when it is
    there, else why not (also kept in build_failures). A required program that does not
    compile stops the run."""
    BUILD_DIR.mkdir(exist_ok=True)
    newest_source = max(path.stat().st_mtime for path in (source, *C_HEADERS))
    if binary.exists() and binary.stat().st_mtime >= newest_source:
        return None
    command = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source), *libraries]
    print("building:", " ".join(command), file=sys.stderr)
    compiled = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(compiled.stderr)
    if compiled.returncode == 0:
        return None
    if required:
        raise SystemExit(f"building {source.name} failed")
    errors = [line for line in compiled.stderr.splitlines() if "error" in line]
    build_failures[str(binary)] = (f"{source.name} does not compile here: "
                                   f"{(errors or ['gcc failed'])[0].strip()}")
    binary.unlink(missing_ok=True)
    return build_failures[str(binary)]


def build_c_programs():
    for program in C_PROGRAMS:
        build_c_program(*program)


def unavailable_reason(server: Server) -> str | None:
    """Why a server cannot run here, or None. Imports are tried the way the script would."""
    if server.argv[0] in build_failures:
        return f"unavailable ({build_failures[server.argv[0]]})"
    for module in server.requires:
        check = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=SERVERS_DIR,
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            last_line = (check.stderr.strip().splitlines() or ["import failed"])[-1]
            return f"unavailable ({last_line})"
    if server.probe:
        check = subprocess.run(server.probe, capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            said = (check.stdout.strip() or check.stderr.strip() or "probe failed").splitlines()
            return f"unavailable ({said[0]})"
    return None


def median_metrics(runs: list[RunResult]) -> dict:
    keys = {key for run in runs for key in run.metrics}
    medians = {}
    for key in keys:
        values = [run.metrics[key] for run in runs if run.metrics.get(key) is not None]
        if values:
            medians[key] = statistics.median(values)
    return medians


@dataclass
class Cell:
    """Outcome of one server on one workload over all rounds."""
    status: str                  # "ok", "failed", "unavailable", "unsupported"
    reason: str = ""
    expected_failure: bool = False
    runs: list = field(default_factory=list)
    medians: dict = field(default_factory=dict)


def connections_for(workload: Workload, args) -> int:
    if workload.name == "W4" and args.w4_connections:
        return args.w4_connections
    if args.smoke and workload.smoke_connections:
        return workload.smoke_connections
    return workload.connections


# A plain echo would pass W5's byte check without answering each line: not counted.
UNSUPPORTED_LINES = "unsupported (no line framing yet)"


def initial_cells(workload: Workload, servers: list[Server], connections: int,
                  availability: dict) -> dict[str, Cell]:
    """A cell for each server meant for `workload`: ok to run, or why not."""
    cells = {}
    for server in servers:
        if server.workloads and workload.name not in server.workloads:
            continue  # a variant meant for other workloads
        cell = Cell("ok")
        if not workload.supported_by(server):
            cell.status, cell.reason = "unsupported", UNSUPPORTED_LINES
        elif availability[server.name]:
            cell.status, cell.reason = "unavailable", availability[server.name]
        cell.expected_failure = (server.connection_limit is not None
                                 and connections > server.connection_limit)
        cells[server.name] = cell
    return cells


def run_rounds(args, servers: list[Server], workloads: list[Workload], pin: bool, kind: str,
               measure, describe) -> dict:
    """Each server meant for each workload, once per round, servers interleaved within a
    round. measure(server, workload, connections, args, pin) returns a run with
    .status/.reason; describe(run) is its progress line."""
    cells: dict[str, dict[str, Cell]] = {}
    availability = {server.name: unavailable_reason(server) for server in servers}
    for workload in workloads:
        connections = connections_for(workload, args)
        cells[workload.name] = initial_cells(workload, servers, connections, availability)
        for round_number in range(1, args.rounds + 1):
            for server in servers:
                cell = cells[workload.name].get(server.name)
                if cell is None or cell.status != "ok":
                    continue  # not meant for it, unavailable, or failed: failures repeat
                run = measure(server, workload, connections, args, pin)
                cell.runs.append(run)
                if run.status != "ok":
                    cell.status, cell.reason = "failed", run.reason
                print(f"[{workload.name} {kind} {round_number}/{args.rounds}] {server.name:24s} "
                      + (describe(run) if run.status == "ok" else f"FAILED: {run.reason}"),
                      file=sys.stderr, flush=True)
    return {"cells": cells,
            "connections": {w.name: connections_for(w, args) for w in workloads}}


def describe_timed(run: RunResult) -> str:
    m = run.metrics
    return (f"{m['requests_per_s']:>10,.0f} req/s {m['echo_mb_per_s']:>8,.1f} MB/s "
            f"{m.get('cpu_us_per_request', float('nan')):>8.2f} µs/req "
            f"p99 {m['p99_us']:,.0f} µs  cpu server {m.get('server_cpu_pct', 0):.0f}% "
            f"loadgen {m['loadgen_cpu_pct']:.0f}%")


def run_suite(args, servers: list[Server], workloads: list[Workload], pin: bool,
              measure=run_once) -> dict:
    suite = run_rounds(args, servers, workloads, pin, "round", measure, describe_timed)
    for workload_cells in suite["cells"].values():
        for cell in workload_cells.values():
            if cell.status == "ok":
                cell.medians = median_metrics(cell.runs)
    return suite


# ----------------------------------------------------------------------------- counted suite

COUNTED_DEFAULT_WORKLOADS = ("W1", "W3", "W5")


def counted_requests_for(workload: Workload, args) -> tuple[int, int]:
    """(warm-up, measured) round trips of a counted run."""
    return workload.smoke_counted_requests if args.smoke else workload.counted_requests


def count_once(server: Server, workload: Workload, connections: int, args,
               pin: bool) -> counted.CountedRun:
    @contextlib.contextmanager
    def start_server(wrapper, timeout):
        try:
            with running_server(server, pin, wrapper, timeout) as running:
                yield running
        except ServerStartError as error:
            raise counted.CountingError(str(error)) from None

    warmup, requests = counted_requests_for(workload, args)
    return counted.measure(
        start_server, SERVER_START_TIMEOUT_S, SERVER_START_UNDER_VALGRIND_TIMEOUT_S,
        lambda port: loadgen_argv(port, workload, connections, pin),
        connections, warmup, requests, workload.lines,
        child_setup(LOADGEN_CORE if pin else None), live_processes)


def describe_counted(run: counted.CountedRun) -> str:
    figures = run.per_request()
    return (f"{figures['instructions']:>10,.0f} instructions/req "
            f"{figures['syscalls']:>7.3f} system calls/req")


def run_counted_suite(args, servers: list[Server], workloads: list[Workload], pin: bool) -> dict:
    """Instructions and system calls per request, each server once per round."""
    suite = run_rounds(args, servers, workloads, pin, "counted", count_once, describe_counted)
    suite["requests"] = {w.name: counted_requests_for(w, args) for w in workloads}
    return suite


# ----------------------------------------------------------------------------- RESP suite
# The key-value store of examples/kvstore (issue 12) under redis-benchmark, as each
# server's users would write it: simpletcp's callback framing RESP itself, uvloop's
# Protocol framing by hand, asyncio streams' readline()/readexactly(). All run the same
# store; only framing and I/O differ. The figures are per request, ratios to uvloop.

RESP_SERVERS = [
    Server("simpletcp_resp", "simpletcp, examples/kvstore (a RESP Framer, compiled buffering)",
           python_server("simpletcp_framed.py", "--program", "resp"),
           requires=("simpletcp.framing",)),
    Server("uvloop_resp", "uvloop Protocol, RESP framed by hand",
           python_server("protocol_framed.py", "--program", "resp"),
           requires=("uvloop", "simpletcp.tcpserver")),
    Server("asyncio_resp", "asyncio streams, readline()/readexactly()",
           python_server("streams_framed.py", "--program", "resp"),
           requires=("simpletcp.tcpserver",)),
]
RESP_REFERENCE = "uvloop_resp"
@dataclass(frozen=True)
class RespPlan:
    """What redis-benchmark asks the RESP stores: its tests, clients, value size, the
    pipelines run, and how many requests per test (timed, counted; smoke divides)."""
    tests: str
    test_names: tuple
    clients: int
    value_size: int
    pipelines: tuple
    timed_requests: tuple    # (full, smoke), times the pipeline up to 4
    counted_requests: tuple  # (full, smoke), times the pipeline

    def requests_per_test(self, pipeline: int, args) -> int:
        if args.mode == "counted":
            return self.counted_requests[args.smoke] * pipeline
        return self.timed_requests[args.smoke] * min(pipeline, 4)

    def describe(self) -> str:
        return (f"redis-benchmark -t {self.tests} -c {self.clients}"
                + (f" -d {self.value_size}" if self.value_size != 3 else "")
                + f"; a request is one command of its {len(self.test_names)} test(s)")


# Five runs: PING_INLINE, PING_MBULK, SET, GET, INCR, with redis-benchmark's 3-byte values.
RESP_MIX = RespPlan("ping,set,get,incr", ("PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"),
                    clients=50, value_size=3, pipelines=(1, 16),
                    timed_requests=(100_000, 2_000), counted_requests=(2_000, 200))
# Issue 13's large message: a SET of 1,000,000 bytes (the stores refuse requests over
# 1 MiB), 10 clients, no pipelining.
RESP_LARGE_SET = RespPlan("set", ("SET",), clients=10, value_size=1_000_000, pipelines=(1,),
                          timed_requests=(2_000, 50), counted_requests=(100, 20))


def resp_plan(args) -> RespPlan:
    return RESP_LARGE_SET if args.resp_large else RESP_MIX


def resp_requests_per_test(pipeline: int, args) -> int:
    """Requests of each of redis-benchmark's tests."""
    return resp_plan(args).requests_per_test(pipeline, args)


def redis_benchmark(port: int, requests: int, pipeline: int, pin: bool,
                    plan: RespPlan = RESP_MIX) -> dict:
    """Run redis-benchmark to completion: {test: requests/s}; CountingError on any error."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", plan.tests,
            "-n", str(requests), "-c", str(plan.clients), "-P", str(pipeline),
            "-d", str(plan.value_size), "--csv"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=counted.RUN_TIMEOUT_S,
                          preexec_fn=child_setup(LOADGEN_CORE if pin else None))
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "error" in said.lower():
        raise counted.CountingError(f"redis-benchmark failed: {said[-300:]}")
    rates = {}
    for line in done.stdout.splitlines()[1:]:
        fields = [field.strip('"') for field in line.split(",")]
        rates[fields[0]] = float(fields[1])
    if set(rates) != set(plan.test_names):
        raise counted.CountingError(f"redis-benchmark ran {sorted(rates)}: {said[-300:]}")
    return rates


def process_cpu_seconds(pid: int) -> float:
    return process_counters(pid)[0]


def process_counters(pid: int) -> tuple:
    """(CPU seconds, minor page faults) of the process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def resp_timed_once(server: Server, pipeline: int, args, pin: bool) -> RunResult:
    plan = resp_plan(args)
    requests = resp_requests_per_test(pipeline, args)
    try:
        with running_server(server, pin) as running:
            redis_benchmark(running.port, requests // 10 or 1, pipeline, pin, plan)  # warm-up
            cpu_before, faults_before = process_counters(running.proc.pid)
            rates = redis_benchmark(running.port, requests, pipeline, pin, plan)
            cpu, faults = process_counters(running.proc.pid)
            cpu -= cpu_before
            faults -= faults_before
            problem = running.exit_problem()
    except (ServerStartError, counted.CountingError, subprocess.TimeoutExpired) as error:
        return RunResult("failed", str(error))
    if problem:
        return RunResult("failed", problem)
    total = requests * len(rates)
    busy = sum(requests / rate for rate in rates.values())
    return RunResult("ok", metrics={"requests_per_s": total / busy,
                                    "cpu_us_per_request": 1e6 * cpu / total,
                                    "server_cpu_pct": 100 * cpu / busy,
                                    "page_faults_per_request": faults / total},
                     raw={"rates": rates})


def resp_counted_once(server: Server, pipeline: int, args, pin: bool) -> counted.CountedRun:
    """Instructions (callgrind) and system calls (strace) of the server over one
    redis-benchmark run, after a warm-up run; two separate server runs."""
    plan = resp_plan(args)
    requests = resp_requests_per_test(pipeline, args)
    run = counted.CountedRun("ok", messages=requests * len(plan.test_names))
    try:
        with tempfile.TemporaryDirectory(prefix="simpletcp-callgrind-") as tmp:
            out_file = Path(tmp) / "callgrind.out"
            wrapper = ("valgrind", "--tool=callgrind", "--quiet",
                       f"--callgrind-out-file={out_file}")
            with running_server(server, pin, wrapper, SERVER_START_UNDER_VALGRIND_TIMEOUT_S) as running:
                redis_benchmark(running.port, requests // 10 or 1, pipeline, pin, plan)
                counted.callgrind_control("--zero", running.proc.pid)
                redis_benchmark(running.port, requests, pipeline, pin, plan)
                counted.callgrind_control("--dump", running.proc.pid)
            run.instructions = counted.dumped_instructions(out_file)
        with tempfile.TemporaryDirectory(prefix="simpletcp-strace-") as tmp:
            summary = Path(tmp) / "strace.txt"
            with running_server(server, pin) as running:
                redis_benchmark(running.port, requests // 10 or 1, pipeline, pin, plan)
                window = counted.StraceWindow(running.proc.pid, summary, live_processes)
                try:
                    window.start()
                    redis_benchmark(running.port, requests, pipeline, pin, plan)
                    window.stop()
                finally:
                    window.close()
            run.syscalls = counted.parse_strace_summary(summary.read_text())
    except (ServerStartError, counted.CountingError, subprocess.TimeoutExpired, OSError) as error:
        run.status, run.reason = "failed", str(error)
    return run


def run_resp_suite(args, pin: bool) -> dict:
    """{pipeline: {server: Cell}}: each RESP server once per round, for -P 1 and -P 16."""
    measure = resp_counted_once if args.mode == "counted" else resp_timed_once
    describe = describe_counted if args.mode == "counted" else (
        lambda run: f"{run.metrics['requests_per_s']:>10,.0f} req/s "
                    f"{run.metrics['cpu_us_per_request']:>8.2f} µs/req")
    availability = {server.name: unavailable_reason(server) for server in RESP_SERVERS}
    if shutil.which("redis-benchmark") is None:
        availability = {name: "unavailable (needs redis-benchmark: apt-get install redis-tools)"
                        for name in availability}
    cells: dict = {}
    for pipeline in resp_plan(args).pipelines:
        cells[pipeline] = {server.name: Cell("unavailable", availability[server.name])
                           if availability[server.name] else Cell("ok")
                           for server in RESP_SERVERS}
        for round_number in range(1, args.rounds + 1):
            for server in RESP_SERVERS:
                cell = cells[pipeline][server.name]
                if cell.status != "ok":
                    continue
                run = measure(server, pipeline, args, pin)
                cell.runs.append(run)
                if run.status != "ok":
                    cell.status, cell.reason = "failed", run.reason
                print(f"[RESP -P {pipeline} {args.mode} {round_number}/{args.rounds}] "
                      f"{server.name:16s} "
                      + (describe(run) if run.status == "ok" else f"FAILED: {run.reason}"),
                      file=sys.stderr, flush=True)
        for cell in cells[pipeline].values():
            if cell.status == "ok" and args.mode != "counted":
                cell.medians = median_metrics(cell.runs)
    return cells


def render_resp_report(args, cells: dict, machine: dict) -> str:
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    kind = "counted" if args.mode == "counted" else "timed"
    plan = resp_plan(args)
    lines = [f"## RESP store under redis-benchmark ({kind}{', smoke' if args.smoke else ''})",
             "",
             f"{started}; {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
             f"uvloop {machine['uvloop_version'] or 'not installed'}. {plan.describe()}. "
             f"÷ uvloop: value ÷ uvloop's. {args.rounds} round(s), medians.", ""]
    labels = {server.name: server.label for server in RESP_SERVERS}
    for pipeline, by_server in cells.items():
        requests = resp_requests_per_test(pipeline, args)
        title = f"### RESP -P {pipeline}: {requests:,} requests per test"
        if kind == "counted":
            lines.append(counted.table(title, by_server, labels, RESP_REFERENCE)
                         .replace("× C", "÷ uvloop"))
            continue
        reference = by_server.get(RESP_REFERENCE)
        reference_medians = reference.medians if reference and reference.status == "ok" else {}
        lines += [title, "", "| server | req/s | ÷ uvloop | server CPU µs/req | ÷ uvloop "
                  "| server CPU % | page faults/req |", "|---|---|---|---|---|---|---|"]
        for name, label in labels.items():
            cell = by_server[name]
            if cell.status != "ok":
                lines.append(f"| {label} | {cell.reason} |  |  |  |  |  |")
                continue
            m = cell.medians
            lines.append(
                f"| {label} | {m['requests_per_s']:,.0f} | "
                f"{ratio(m['requests_per_s'], reference_medians.get('requests_per_s'))} | "
                f"{m['cpu_us_per_request']:,.2f} | "
                f"{ratio(m['cpu_us_per_request'], reference_medians.get('cpu_us_per_request'))} | "
                f"{m['server_cpu_pct']:.0f} | {m['page_faults_per_request']:,.2f} |")
        lines.append("")
    return "\n".join(lines)


def resp_results_json(args, cells: dict, machine: dict) -> dict:
    return {"config": {"smoke": args.smoke, "mode": args.mode, "rounds": args.rounds,
                       "clients": resp_plan(args).clients, "tests": resp_plan(args).tests,
                       "value_size": resp_plan(args).value_size},
            "machine": machine,
            "results": {f"P{pipeline}": {name: {
                "status": cell.status, "reason": cell.reason, "median": cell.medians,
                "runs": [run.metrics if isinstance(run, RunResult) else
                         {"instructions": run.instructions, "syscalls": run.syscalls,
                          "per_request": run.per_request()} for run in cell.runs]}
                for name, cell in by_server.items()}
                for pipeline, by_server in cells.items()}}


# ----------------------------------------------------------------------------- report

def format_value(key: str, value) -> str:
    return "—" if value is None else METRICS[key].fmt.format(value)


def ratio(value, reference) -> str:
    if value is None or not reference:
        return "—"
    return f"{value / reference:.2f}×"


def workload_table(workload: Workload, cells: dict[str, Cell], servers: list[Server],
                   connections: int) -> str:
    headers = ["server"]
    for key in workload.columns:
        headers.append(METRICS[key].header)
        if METRICS[key].vs_floor:
            headers.append(workload.floor_header)
    floor = cells.get(workload.floor)
    floor_medians = floor.medians if floor and floor.status == "ok" else {}
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for server in servers:
        if server.name not in cells:
            continue  # a variant meant for other workloads
        cell = cells[server.name]
        row = [server.label]
        if cell.status != "ok":
            status = cell.reason if cell.status != "failed" else f"**failed**: {cell.reason}"
            if cell.expected_failure:
                status += (f" (expected: more than {server.connection_limit:,} connections;"
                           " select() only takes descriptors below 1024)")
            row.append(status)
            row += [""] * (len(headers) - 2)
        else:
            for key in workload.columns:
                value = cell.medians.get(key)
                row.append(format_value(key, value))
                if METRICS[key].vs_floor:
                    row.append(ratio(value, floor_medians.get(key)))
        lines.append("| " + " | ".join(row) + " |")

    title = f"### {workload.name}: {workload.title}"
    if connections != workload.connections:
        title += f" — run with {connections:,} connections"
    notes = []
    simpletcp, uvloop = (cells.get(name) for name in workload.compared)
    if simpletcp and uvloop and simpletcp.status == uvloop.status == "ok":
        comparisons = [
            f"{METRICS[key].header} {ratio(simpletcp.medians.get(key), uvloop.medians.get(key))}"
            for key in workload.columns if METRICS[key].vs_uvloop]
        notes.append("simpletcp ÷ uvloop: " + ", ".join(comparisons))
    return "\n".join([title, "", *lines, "", *notes]).rstrip() + "\n"


def machine_description() -> dict:
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("uvloop", "simpletcp"):
        check = subprocess.run(
            [sys.executable, "-c",
             f"import importlib.metadata as m; print(m.version({module!r}))"],
            cwd=SERVERS_DIR, capture_output=True, text=True)
        versions[module] = check.stdout.strip() or None
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gcc": gcc.splitlines()[0] if gcc else None,
        **{f"{name}_version": version for name, version in versions.items()},
    }


def render_report(args, suite: dict, servers, workloads, machine: dict, pin: bool) -> str:
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = [
        f"## simpletcp benchmarks{' (smoke run: not for comparison)' if args.smoke else ''}",
        "",
        f"{started}; {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}, uvloop {machine['uvloop_version'] or 'not installed'}.",
        f"{args.rounds} round(s) of {args.duration:g} s (after {args.warmup:g} s warmup) per "
        f"server and workload; medians shown. "
        + (f"Server pinned to CPU {SERVER_CORE}, load generator to CPU {LOADGEN_CORE}."
           if pin else "Not pinned (fewer than 2 CPUs)."),
        "× C: value ÷ the C floor's value (throughput: higher is better; CPU, latency, "
        "memory: lower is better).",
        "",
    ]
    tables = [workload_table(w, suite["cells"][w.name], servers, suite["connections"][w.name])
              for w in workloads]
    return "\n".join(header) + "\n" + "\n".join(tables)


def render_counted_report(args, suite: dict, servers, workloads, machine: dict) -> str:
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    tools = machine.get("tools", {})
    header = [
        f"## simpletcp counted cost{' (smoke run: small counts)' if args.smoke else ''}",
        "",
        f"{started}; {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}, uvloop {machine['uvloop_version'] or 'not installed'}, "
        f"{tools.get('valgrind') or 'valgrind ?'}, {tools.get('strace') or 'strace ?'}.",
        f"{args.rounds} run(s) per server and workload, each a fixed number of requests "
        "after a warm-up; medians shown. Instructions: user space, counted by callgrind "
        "between the window's edges. System calls: strace -c -f over the same window, in a "
        "second run. × C: value ÷ the C floor's value. Spread: (max − min) ÷ mean over "
        "the runs, instructions / system calls.",
        "",
    ]
    labels = {server.name: server.label for server in servers}
    tables = []
    for workload in workloads:
        warmup, requests = suite["requests"][workload.name]
        unit = (f"{requests:,} writes = {requests * workload.lines:,} lines"
                if workload.lines > 1 else f"{requests:,} requests")
        title = (f"### {workload.name}: {workload.title} — counted: {unit} after "
                 f"{warmup:,} warm-up")
        if suite["connections"][workload.name] != workload.connections:
            title += f", {suite['connections'][workload.name]:,} connections"
        tables.append(counted.table(title, suite["cells"][workload.name], labels, workload.floor))
    return "\n".join(header) + "\n" + "\n".join(tables)


def results_tree(suite: dict, cell_record) -> dict:
    """{workload: {server: cell_record(cell)}} for the JSON results."""
    return {workload: {server: cell_record(cell) for server, cell in cells.items()}
            for workload, cells in suite["cells"].items()}


def counted_results_json(args, suite: dict, machine: dict) -> dict:
    return {
        "config": {"smoke": args.smoke, "runs": args.rounds,
                   "connections": suite["connections"], "requests": suite["requests"]},
        "machine": machine,
        "results": results_tree(suite, lambda cell: {
            "status": cell.status,
            "reason": cell.reason,
            "runs": [{"status": run.status, "reason": run.reason, "messages": run.messages,
                      "instructions": run.instructions, "syscalls": run.syscalls,
                      "per_request": run.per_request(), "loadgen": run.loadgen}
                     for run in cell.runs],
        }),
    }


def results_json(args, suite: dict, machine: dict) -> dict:
    return {
        "config": {"smoke": args.smoke, "rounds": args.rounds, "duration_s": args.duration,
                   "warmup_s": args.warmup, "connections": suite["connections"]},
        "machine": machine,
        "results": results_tree(suite, lambda cell: {
            "status": cell.status,
            "reason": cell.reason,
            "expected_failure": cell.expected_failure,
            "median": cell.medians,
            "rounds": [{"status": run.status, "reason": run.reason,
                        "metrics": run.metrics, "loadgen": run.raw}
                       for run in cell.runs],
        }),
    }


def unexpected_failures(suite: dict, required: set[str]) -> list[str]:
    failures = []
    for workload, cells in suite["cells"].items():
        for server, cell in cells.items():
            if cell.status == "failed" and not cell.expected_failure:
                failures.append(f"{workload} {server}: {cell.reason}")
            elif cell.status == "unavailable" and server in required:
                failures.append(f"{workload} {server}: {cell.reason}")
    return failures


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run the simpletcp benchmark suite.",
        epilog="Servers: " + ", ".join(SERVERS_BY_NAME) +
               ". Workloads: " + ", ".join(f"{w.name} ({w.title})" for w in WORKLOADS) + ".")
    parser.add_argument("--smoke", action="store_true",
                        help="prove the suite works: ~1 s per server and workload, 1 round, "
                             "W4 with 500 connections; exits non-zero on errors, never on speed")
    parser.add_argument("--servers", help="comma-separated server names (default: all)")
    parser.add_argument("--workloads", help="comma-separated workload names (default: all)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5; smoke 1)")
    parser.add_argument("--warmup", type=float, help="warmup seconds per run (default 1; smoke 0.3)")
    parser.add_argument("--rounds", type=int, help="rounds, servers interleaved (default 3; smoke 1)")
    parser.add_argument("--ramp-timeout", type=float, default=None,
                        help="seconds allowed to establish all connections (default 60; smoke 20)")
    parser.add_argument("--w4-connections", type=int, help="override W4's connection count")
    parser.add_argument("--require", default="",
                        help="comma-separated servers that must be available (else exit non-zero)")
    parser.add_argument("--mode", choices=("timed", "counted", "both"), default="timed",
                        help="timed: req/s, CPU, latency (default); counted: instructions "
                             "and system calls per request for a fixed number of requests "
                             "(needs valgrind and strace; default workloads "
                             f"{','.join(COUNTED_DEFAULT_WORKLOADS)}, 2 runs); both: one then "
                             "the other")
    parser.add_argument("--counted", dest="mode", action="store_const", const="counted",
                        help="same as --mode counted")
    parser.add_argument("--resp", action="store_true",
                        help="run the RESP store (examples/kvstore) under redis-benchmark "
                             "-P 1 and -P 16 on simpletcp, uvloop and asyncio instead of the "
                             "load generator's workloads; timed, or counted with --counted "
                             "(needs redis-benchmark: apt-get install redis-tools)")
    parser.add_argument("--resp-large", action="store_true",
                        help="with --resp: the stores under SETs of 1,000,000-byte values "
                             "(redis-benchmark -t set -d 1000000 -c 10) instead of the mix")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR,
                        help=f"directory for the .md/.json results (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    counted_only = args.mode == "counted"
    defaults = ({"duration": 1.0, "warmup": 0.3, "rounds": 1, "ramp_timeout": 20.0} if args.smoke
                else {"duration": 5.0, "warmup": 1.0, "rounds": 2 if counted_only else 3,
                      "ramp_timeout": 60.0})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    def pick(option, known, what):
        if not option:
            return list(known.values())
        names = [name.strip() for name in option.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
        return [known[name] for name in names]

    args.server_list = pick(args.servers, SERVERS_BY_NAME, "server")
    args.workload_list = pick(args.workloads, WORKLOADS_BY_NAME, "workload")
    args.counted_workload_list = (
        args.workload_list if args.workloads
        else [WORKLOADS_BY_NAME[name] for name in COUNTED_DEFAULT_WORKLOADS])
    args.required = ({server.name for server in pick(args.require, SERVERS_BY_NAME, "server")}
                     if args.require else set())
    if args.resp_large and not args.resp:
        parser.error("--resp-large is an option of --resp")
    if args.resp and args.mode == "both":
        parser.error("--resp runs one mode at a time: timed (default) or --counted")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds must be >= 1, --duration > 0, --warmup >= 0")
    return args


def write_results(directory: Path, stem: str, report: str, data: dict, started: float):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.md").write_text(report)
    (directory / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"written: {directory / (stem + '.md')}, {directory / (stem + '.json')} "
          f"({time.monotonic() - started:.0f} s)", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode != "timed" and counted.missing_tools():
        print("counted mode needs valgrind (callgrind_control, vgdb) and strace; install: "
              f"apt-get install {' '.join(counted.missing_tools())}", file=sys.stderr)
        return 2
    # Ctrl-C must reach the cleanup even if SIGINT was ignored by whoever started us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate_on_signal)
    signal.signal(signal.SIGHUP, terminate_on_signal)
    pin = (os.cpu_count() or 1) >= 2
    if not pin:
        print("warning: fewer than 2 CPUs; server and load generator share a core",
              file=sys.stderr)
    started = time.monotonic()
    suites = {}
    try:
        build_c_programs()
        machine = machine_description()
        if args.mode != "timed":
            machine["tools"] = counted.tool_versions()
        if args.resp:
            suites["resp"] = run_resp_suite(args, pin)
        elif args.mode != "counted":
            suites["timed"] = run_suite(args, args.server_list, args.workload_list, pin)
        if args.mode != "timed" and not args.resp:
            suites["counted"] = run_counted_suite(args, args.server_list,
                                                  args.counted_workload_list, pin)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        stop_all_processes()

    failures = []
    if "resp" in suites:
        cells = suites["resp"]
        report = render_resp_report(args, cells, machine)
        print(report)
        stem = ("resp-large-" if args.resp_large else "resp-") + (
            "counted" if args.mode == "counted" else "timed")
        write_results(args.output, stem + ("-smoke" if args.smoke else ""), report,
                      resp_results_json(args, cells, machine), started)
        failures += unexpected_failures({"cells": {f"RESP -P {p}": c for p, c in cells.items()}},
                                        args.required)
    if "timed" in suites:
        suite = suites["timed"]
        report = render_report(args, suite, args.server_list, args.workload_list, machine, pin)
        print(report)
        write_results(args.output, "smoke" if args.smoke else "latest", report,
                      results_json(args, suite, machine), started)
        failures += unexpected_failures(suite, args.required)
    if "counted" in suites:
        suite = suites["counted"]
        report = render_counted_report(args, suite, args.server_list,
                                       args.counted_workload_list, machine)
        print(report)
        write_results(args.output, "counted-smoke" if args.smoke else "counted", report,
                      counted_results_json(args, suite, machine), started)
        failures += unexpected_failures(suite, args.required)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
