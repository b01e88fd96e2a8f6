#!/usr/bin/env python3
"""Where a server's CPU per request goes: python bench/perf_breakdown.py c_epoll c_uring

Runs each server (names as in run.py) under one workload (W1 by default), samples it
with `perf record -p` for part of the window, and prints a markdown table: server CPU
per request (from /proc, as run.py measures it) split into groups of kernel and user
functions by the share of perf samples. Servers run alternately, --rounds times, and
each round gets its own column. Needs perf with kernel symbols (kptr_restrict 0).

The groups are by function name: io_uring's and epoll's own machinery, system call
entry and file lookup, the scheduler, the server's user-space code, and everything
else, which is the kernel's TCP/IP work over loopback (both directions, skb
allocation and freeing, waking the peer) that any server pays.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import run

GROUPS = [
    ("io_uring machinery", r"^(io_|__io_|llist_|tctx_|task_work|__task_work)"),
    ("epoll machinery", r"^(ep_|do_epoll|__x64_sys_epoll|tcp_poll|sock_poll|__list_del_entry)"),
    ("system call entry/exit, file lookup, user-copy checks",
     r"^(do_syscall_64|entry_SYSCALL|syscall_exit|__x64_sys_|ksys_|x64_sys_call|fdget|fput|"
     r"__fget|__fdget|vfs_read|vfs_write|sock_read_iter|sock_write_iter|__sys_|"
     r"sockfd_lookup|rw_verify|security_|exit_to_user|arch_exit|__put_user|__get_user|"
     r"import_single|import_ubuf|__import|__check_object_size|__virt_addr_valid|"
     r"check_stack_object|fpregs|switch_fpu|restore_fpregs|rseq|__rseq|syscall$|read$|"
     r"__send|sendto$|__libc)"),
    ("scheduler, idle, the server's own wakeups",
     r"^(schedule|__schedule|finish_task_switch|pick_|enqueue_|dequeue_|update_curr|"
     r"update_load|psi_|__switch_to|switch_mm|native_|pv_|default_idle|cpuidle|do_idle|"
     r"set_next|put_prev|sched_|__cond_resched|raw_spin_rq|prepare_task_switch)"),
]
OTHER = "TCP/IP over loopback, skbs, waking the peer (any server)"
USER = "user space"


def sample(server: run.Server, workload: run.Workload, seconds: float, pin: bool):
    """(server CPU µs per request, {symbol: (percent, is_user)})."""
    with tempfile.TemporaryDirectory(prefix="perf-breakdown-") as tmp:
        data = os.path.join(tmp, "perf.data")
        with run.running_server(server, pin) as running:
            argv = run.loadgen_argv(running.port, workload, workload.connections, pin) + [
                "--duration", str(seconds + 2), "--warmup", "1",
                "--server-pid", str(running.proc.pid)]
            loadgen = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                       preexec_fn=run.child_setup(run.LOADGEN_CORE if pin else None))
            time.sleep(2)
            subprocess.run(["perf", "record", "-q", "-F", "2000", "-o", data,
                            "-p", str(running.proc.pid), "--", "sleep", str(seconds)],
                           capture_output=True, check=True)
            report = json.loads(loadgen.communicate(timeout=seconds + 60)[0].splitlines()[-1])
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", "dso,sym", "-g", "none"],
                             capture_output=True, text=True, check=True).stdout
    symbols = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].endswith("%"):
            continue
        user = fields[2] == "[.]"
        symbols[fields[-1]] = (symbols.get(fields[-1], (0.0, user))[0] + float(fields[0][:-1]),
                               user)
    return 1e6 * report["server_cpu_s"] / report["messages"], symbols


def group(symbols: dict) -> dict:
    totals: dict = {}
    for symbol, (percent, user) in symbols.items():
        name = USER if user else next(
            (name for name, pattern in GROUPS if re.search(pattern, symbol)), OTHER)
        totals[name] = totals.get(name, 0.0) + percent
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", choices=list(run.SERVERS_BY_NAME))
    parser.add_argument("--workload", default="W1", choices=list(run.WORKLOADS_BY_NAME))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="sampled seconds per run")
    args = parser.parse_args()
    run.build_c_programs()
    workload = run.WORKLOADS_BY_NAME[args.workload]
    pin = (os.cpu_count() or 1) >= 2
    columns = []
    try:
        for round_number in range(1, args.rounds + 1):
            for name in args.servers:
                cpu, symbols = sample(run.SERVERS_BY_NAME[name], workload, args.seconds, pin)
                columns.append((f"{name} ({round_number})", cpu, group(symbols)))
                print(f"{name} round {round_number}: {cpu:.2f} µs/req", file=sys.stderr)
    finally:
        run.stop_all_processes()
    names = [name for name, _ in GROUPS] + [USER, OTHER]
    names.sort(key=lambda n: -max(groups.get(n, 0) * cpu for _, cpu, groups in columns))
    print(f"ns of server CPU per request, {workload.name}: {workload.title}\n")
    print("| | " + " | ".join(label for label, _, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{groups.get(name, 0) * cpu * 10:,.0f}"
                                          for _, cpu, groups in columns) + " |")
    print("| **total (from /proc)** | " + " | ".join(f"**{cpu * 1000:,.0f}**"
                                                      for _, cpu, _ in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
