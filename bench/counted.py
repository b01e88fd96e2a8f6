"""Counted cost: user-space instructions and system calls per request (run.py --counted).

Timed figures move when other work shares the machine; these do not. For a fixed
number of requests the load generator (loadgen --counted) runs a warm-up, stops
with every connection idle, says so ("quiet window-start") and waits; then it runs
exactly the window's requests, stops idle again ("quiet window-end") and waits. At
those two edges:

* instructions: the server runs under `valgrind --tool=callgrind`; its counters are
  zeroed at the start (`callgrind_control --zero`) and dumped at the end
  (`callgrind_control --dump`). Instructions executed in user space by the server
  process, all threads (the kernel's work is not in them).
* system calls: the server runs natively; `strace -c -f` attaches to all its threads
  at the start and is interrupted at the end. Every system call the server made in
  the window, by name.

The two are separate runs: valgrind and ptrace do not mix. Both slow the server down
a lot while the load generator does not slow down, so the server always finds a full
batch of ready connections: the figures describe a saturated server. That is the
regime of the timed benchmarks too, but it means a wait (epoll_wait, io_uring_enter)
is shared by more requests here than at full speed; read/send-like calls per request
do not depend on it.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = {
    "valgrind": "valgrind",          # instructions
    "callgrind_control": "valgrind",  # zero/dump (and vgdb, which ships with it)
    "vgdb": "valgrind",
    "strace": "strace",              # system calls
}
# Edge actions and attaching must be quick; the window itself may take minutes under
# valgrind (asyncio: ~15,000 instructions per request, valgrind ~50x slower).
EDGE_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 1800.0


def missing_tools() -> list[str]:
    """Debian packages to install for counted mode, empty if everything is here."""
    return sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})


def tool_versions() -> dict:
    versions = {}
    for tool, flag in (("valgrind", "--version"), ("strace", "-V")):
        try:
            out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=30).stdout
            versions[tool] = out.splitlines()[0].strip() if out else None
        except OSError:
            versions[tool] = None
    return versions


class CountingError(Exception):
    """A counted run failed; the message says how."""


@dataclass
class CountedRun:
    status: str                  # "ok" or "failed"
    reason: str = ""
    messages: int = 0            # requests in the window (lines, for W5)
    instructions: int | None = None
    syscalls: dict = field(default_factory=dict)   # name -> calls in the window
    loadgen: dict = field(default_factory=dict)

    def per_request(self) -> dict:
        figures = {}
        if self.messages and self.instructions is not None:
            figures["instructions"] = self.instructions / self.messages
        if self.messages and self.syscalls:
            figures["syscalls"] = sum(self.syscalls.values()) / self.messages
        return figures


# ----------------------------------------------------------------------------- driving the window

def read_line(stream, deadline: float) -> str | None:
    """One line from a pipe (without its newline), or None at EOF or past the deadline."""
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            return None
        line += chunk
    return line.decode().rstrip("\n")


def drive_window(argv: list[str], preexec_fn, on_start, on_end, live_processes: set) -> dict:
    """Run the load generator in counted mode, calling on_start()/on_end() at the quiet
    edges of the window; return its JSON report."""
    loadgen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=preexec_fn)
    live_processes.add(loadgen)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for edge, action in (("window-start", on_start), ("window-end", on_end)):
            line = read_line(loadgen.stdout, deadline)
            if line != f"quiet {edge}":
                loadgen.kill()
                error = loadgen.stderr.read().decode(errors="replace").strip()[-300:]
                raise CountingError(f"load generator did not reach the {edge} "
                                    f"(said {line!r}; {error or 'no error output'})")
            action()
            loadgen.stdin.write(b"go\n")
            loadgen.stdin.flush()
        report = read_line(loadgen.stdout, time.monotonic() + EDGE_TIMEOUT_S)
        loadgen.wait(timeout=EDGE_TIMEOUT_S)
        if not report:
            raise CountingError("load generator printed no report")
        return json.loads(report)
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        live_processes.discard(loadgen)


def load_problems(raw: dict, connections: int) -> list[str]:
    """What went wrong on the load generator's side of a run (timed or counted)."""
    problems = []
    if raw["connections_established"] < connections:
        problems.append(f"{raw['connections_established']:,} of {connections:,} "
                        "connections established")
    if raw["errors_total"]:
        problems.append("errors: " + ", ".join(
            f"{name.replace('_', ' ')} {count:,}" for name, count in raw["errors"].items()
            if count))
    if raw["requests"] == 0:
        problems.append("no requests completed")
    return problems


def check_load(raw: dict, connections: int, requests: int) -> None:
    problems = load_problems(raw, connections)
    if raw["requests"] != requests:
        problems.append(f"{raw['requests']:,} of {requests:,} requests in the window")
    if problems:
        raise CountingError("; ".join(problems))


# ----------------------------------------------------------------------------- instructions

CALLGRIND_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def callgrind_control(action: str, pid: int) -> None:
    done = subprocess.run(["callgrind_control", action, str(pid)], capture_output=True,
                          text=True, timeout=EDGE_TIMEOUT_S)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise CountingError(f"callgrind_control {action} failed: "
                            f"{(done.stdout + done.stderr).strip()[-300:]}")


def dumped_instructions(out_file: Path) -> int:
    """Instructions in callgrind's first dump (OUT.1): zeroed at the window's start,
    dumped at its end."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"))
    if not dumps:
        raise CountingError("callgrind wrote no dump")
    match = CALLGRIND_TOTAL.search(dumps[0].read_text(errors="replace"))
    if not match:
        raise CountingError(f"no instruction total in {dumps[0].name}")
    return int(match.group(1))


def count_instructions(start_server, start_timeout: float, loadgen, preexec_fn,
                       live_processes: set) -> tuple[int, dict]:
    with tempfile.TemporaryDirectory(prefix="simpletcp-callgrind-") as tmp:
        out_file = Path(tmp) / "callgrind.out"
        wrapper = ("valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out_file}")
        with start_server(wrapper, start_timeout) as server:
            pid = server.proc.pid
            raw = drive_window(loadgen(server.port) + ["--server-pid", str(pid)], preexec_fn,
                               lambda: callgrind_control("--zero", pid),
                               lambda: callgrind_control("--dump", pid), live_processes)
            problem = server.exit_problem()
            if problem:
                raise CountingError(problem)
        return dumped_instructions(out_file), raw


# ----------------------------------------------------------------------------- system calls

def parse_strace_summary(text: str) -> dict:
    """{syscall: calls} from `strace -c` output."""
    calls = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit() or fields[-1] == "total":
            continue
        calls[fields[-1]] = calls.get(fields[-1], 0) + int(fields[3])
    return calls


def traced_by(pid: int, tracer: int) -> bool:
    """Every thread of `pid` is traced by `tracer`."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/status") as status:
                tracer_line = next(line for line in status if line.startswith("TracerPid:"))
            if int(tracer_line.split()[1]) != tracer:
                return False
        return True
    except (OSError, StopIteration):
        return False


class StraceWindow:
    """strace -c -f attached to a running server between start() and stop()."""

    def __init__(self, pid: int, summary: Path, live_processes: set):
        self.pid, self.summary, self.live = pid, summary, live_processes
        self.strace: subprocess.Popen | None = None

    def start(self):
        self.strace = subprocess.Popen(
            ["strace", "-c", "-f", "-qq", "-o", str(self.summary), "-p", str(self.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.live.add(self.strace)
        deadline = time.monotonic() + EDGE_TIMEOUT_S
        while not traced_by(self.pid, self.strace.pid):
            if self.strace.poll() is not None or time.monotonic() > deadline:
                error = self.strace.stderr.read().decode(errors="replace").strip()
                raise CountingError(f"strace could not attach: {error[-300:] or 'timed out'}")
            time.sleep(0.01)

    def stop(self):
        self.strace.send_signal(signal.SIGINT)
        try:
            self.strace.wait(timeout=EDGE_TIMEOUT_S)
        finally:
            self.close()

    def close(self):
        if self.strace is not None:
            if self.strace.poll() is None:
                self.strace.kill()
                self.strace.wait()
            self.live.discard(self.strace)


def count_syscalls(start_server, start_timeout: float, loadgen, preexec_fn,
                   live_processes: set) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="simpletcp-strace-") as tmp:
        summary = Path(tmp) / "strace.txt"
        with start_server((), start_timeout) as server:
            window = StraceWindow(server.proc.pid, summary, live_processes)
            try:
                raw = drive_window(loadgen(server.port) + ["--server-pid", str(server.proc.pid)],
                                   preexec_fn,
                                   window.start, window.stop, live_processes)
            finally:
                window.close()
            problem = server.exit_problem()
            if problem:
                raise CountingError(problem)
        if not summary.exists():
            raise CountingError("strace wrote no summary")
        return parse_strace_summary(summary.read_text()), raw


# ----------------------------------------------------------------------------- one server

def measure(start_server, start_timeout: float, valgrind_start_timeout: float,
            loadgen, connections: int, warmup_requests: int, requests: int,
            lines: int, preexec_fn, live_processes: set) -> CountedRun:
    """Instructions and system calls of one server over `requests` requests.

    `start_server(wrapper, timeout)` is a context manager that starts the server (inside
    `wrapper`) and yields it with .proc, .port and .exit_problem(); `loadgen(port)` is
    the load generator's command line for this workload, without counted-mode options."""
    def counted_loadgen(port: int) -> list[str]:
        return loadgen(port) + [
            "--counted", "--warmup-requests", str(warmup_requests), "--requests", str(requests),
            "--duration", str(RUN_TIMEOUT_S), "--ramp-timeout", str(EDGE_TIMEOUT_S)]

    run = CountedRun("ok", messages=requests * lines)
    try:
        run.instructions, raw = count_instructions(
            start_server, valgrind_start_timeout, counted_loadgen, preexec_fn, live_processes)
        check_load(raw, connections, requests)
        run.syscalls, run.loadgen = count_syscalls(
            start_server, start_timeout, counted_loadgen, preexec_fn, live_processes)
        check_load(run.loadgen, connections, requests)
    except (CountingError, subprocess.TimeoutExpired) as error:
        run.status, run.reason = "failed", str(error)
    return run


# ----------------------------------------------------------------------------- report

def spread(values: list[float]) -> float | None:
    """(max - min) / mean, or None with fewer than two values."""
    if len(values) < 2 or not sum(values):
        return None
    return (max(values) - min(values)) / (sum(values) / len(values))


def largest_calls(runs: list[CountedRun], messages: int, top: int = 4) -> str:
    """The most frequent system calls per request, averaged over the runs."""
    totals: dict = {}
    for run in runs:
        for name, calls in run.syscalls.items():
            totals[name] = totals.get(name, 0) + calls / len(runs)
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{name} {calls / messages:.2f}" for name, calls in ranked)


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def table(title: str, cells: dict, labels: dict, floor: str) -> str:
    """Markdown table for one workload. `cells`: server name -> Cell whose runs are
    CountedRuns; `labels`: server name -> label, in display order."""
    def median_of(cell, key):
        values = sorted(run.per_request()[key] for run in cell.runs
                        if key in run.per_request())
        if not values:
            return None
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    floor_cell = cells.get(floor)
    floor_ok = floor_cell is not None and floor_cell.status == "ok"
    header = ("| server | instructions/req | × C | system calls/req | × C "
              "| system calls per request, most frequent | spread between runs |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|"]
    for name, label in labels.items():
        if name not in cells:
            continue
        cell = cells[name]
        if cell.status != "ok":
            text = cell.reason if cell.status != "failed" else f"**failed**: {cell.reason}"
            lines.append(f"| {label} | {text} |  |  |  |  |  |")
            continue
        row = [label]
        for key in ("instructions", "syscalls"):
            value = median_of(cell, key)
            reference = median_of(floor_cell, key) if floor_ok else None
            row += [fmt(value), f"{value / reference:.2f}×" if value and reference else "—"]
        row.append(largest_calls(cell.runs, cell.runs[0].messages))
        spreads = [spread([run.per_request().get(key, 0) for run in cell.runs])
                   for key in ("instructions", "syscalls")]
        row.append("—" if spreads[0] is None else
                   f"{100 * spreads[0]:.2f}% / {100 * spreads[1]:.2f}%")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
