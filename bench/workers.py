#!/usr/bin/env python3
"""workers=2 against workers=1: python bench/workers.py [--smoke] [options]

The echo server of bench/servers/simpletcp_echo.py with --workers 1 (today's
in-process loop) and --workers 2 (a supervisor and two worker processes sharing the
listening socket), under the C load generator in counted mode: a fixed number of
round trips, with the server quiet at both edges of the window. At the edges the CPU
time (user + system) of every server process is read from /proc, so the figures are:

- requests/s: the window's round trips over its wall-clock length (timed: noisy on a
  shared machine, and the load generator competes with the server for the cores);
- server CPU per request: the CPU time of the supervisor and all its workers over the
  window, per round trip (what serving costs, whoever got the cores).

With a bare echo (the default) the single-threaded load generator is the bottleneck,
not the server; --work-us 50 gives every callback 50 µs of CPU, so that one worker
saturates a core and the second one has something to add.

Nothing is pinned: the point is to let the workers spread over the cores. On this
2-core machine the load generator takes a core's worth of CPU itself, so two workers
share what is left with it. Rounds interleave the two configurations; medians are
reported, as markdown on stdout and JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import counted
import run

ECHO_SERVER = run.SERVERS_DIR / "simpletcp_echo.py"


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


@contextlib.contextmanager
def echo_server(workers: int, work_us: float):
    """The echo server with ``workers``, serving: (port, the pids of all its processes)."""
    proc = subprocess.Popen(
        [sys.executable, str(ECHO_SERVER), "--port", "0", "--backlog",
         str(run.LISTEN_BACKLOG), "--workers", str(workers), "--work-us", str(work_us)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=run.SERVERS_DIR)
    run.live_processes.add(proc)
    try:
        line = run.read_first_line(proc, run.SERVER_START_TIMEOUT_S)
        if not line or not line.isdigit():
            raise run.ServerStartError(f"echo server with {workers} workers did not start")
        pids = [proc.pid]
        if workers > 1:
            deadline = time.monotonic() + run.SERVER_START_TIMEOUT_S
            while len(children_of(proc.pid)) < workers:
                if time.monotonic() > deadline:
                    raise run.ServerStartError(f"{workers} workers did not start")
                time.sleep(0.01)
            pids += children_of(proc.pid)
        yield int(line), pids
    finally:
        run.stop_process(proc)
        run.live_processes.discard(proc)


def measure_once(workers: int, args) -> dict:
    with echo_server(workers, args.work_us) as (port, pids):
        argv = [str(run.LOADGEN), "--port", str(port), "--connections", str(args.connections),
                "--size", str(args.size), "--counted", "--warmup-requests",
                str(args.warmup_requests), "--requests", str(args.requests),
                "--duration", str(counted.RUN_TIMEOUT_S), "--ramp-timeout",
                str(counted.EDGE_TIMEOUT_S)]
        edges = {}

        def at(edge):
            def read():
                edges[edge] = (time.monotonic(), sum(process_cpu_seconds(pid) for pid in pids))
            return read

        raw = counted.drive_window(argv, None, at("start"), at("end"), run.live_processes)
    counted.check_load(raw, args.connections, args.requests)
    wall = edges["end"][0] - edges["start"][0]
    cpu = edges["end"][1] - edges["start"][1]
    return {"requests_per_s": args.requests / wall,
            "cpu_us_per_request": 1e6 * cpu / args.requests,
            "server_cpu_pct": 100 * cpu / wall,
            "p50_us": raw["latency_us"]["p50"], "p99_us": raw["latency_us"]["p99"]}


def report(results: dict, args) -> str:
    lines = [
        f"### workers=2 against workers=1 ({args.connections} connections, {args.size}-byte "
        f"echoes{f', {args.work_us:g} µs of callback CPU each' if args.work_us else ''}, "
        f"{args.requests:,} round trips per window, median of {args.rounds} rounds, "
        f"{os.cpu_count()} cores, nothing pinned)",
        "",
        "| workers | requests/s | server CPU µs/request | server CPU % (of one core) | p50 µs | p99 µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workers, runs in results.items():
        median = {key: statistics.median(run_[key] for run_ in runs) for key in runs[0]}
        lines.append(f"| {workers} | {median['requests_per_s']:,.0f} | "
                     f"{median['cpu_us_per_request']:.1f} | {median['server_cpu_pct']:.0f} | "
                     f"{median['p50_us']:.0f} | {median['p99_us']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="bytes per echo")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--warmup-requests", type=int, default=20_000)
    parser.add_argument("--work-us", type=float, default=0,
                        help="CPU microseconds each callback spends before echoing: 0 (a "
                             "bare echo: the load generator is the bottleneck) or e.g. 50 "
                             "(the server is)")
    parser.add_argument("--output", type=Path, default=run.RESULTS_DIR,
                        help="directory for the markdown and JSON results")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run that checks the tool works (figures meaningless)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.connections, args.requests, args.warmup_requests = 1, 10, 2000, 200
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    run.build_c_programs()
    results: dict = {1: [], 2: []}
    for round_number in range(args.rounds):
        for workers in results:
            figures = measure_once(workers, args)
            results[workers].append(figures)
            print(f"round {round_number + 1}, workers={workers}: "
                  f"{figures['requests_per_s']:,.0f} requests/s, "
                  f"{figures['cpu_us_per_request']:.1f} µs CPU/request", file=sys.stderr)
    text = report(results, args)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = "workers-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.output / f"{stem}.md").write_text(text)
    (args.output / f"{stem}.json").write_text(json.dumps(
        {"arguments": {key: str(value) for key, value in vars(args).items()},
         "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
