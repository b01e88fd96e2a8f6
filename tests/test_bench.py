"""The benchmark tools themselves: the load generator's counted and pipelined-lines
modes, the counted-cost runner (bench/run.py --counted), and the C servers of bench/
(the line-by-line floor of W5 and the io_uring prototype) as real clients see them.

Figures are never asserted as speeds; only what must hold on any machine: a counted
window holds exactly the requests asked for, the C floor makes one read and one send
per 1 KiB echo, two counted runs agree.
"""
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from support import BENCH, closing_all, recv_exactly, recv_until_eof, wait_for

if not (BENCH / "run.py").exists():
    pytest.skip("the benchmark suite (bench/) is not in this tree: it is not in the sdist",
                allow_module_level=True)

TIMEOUT = 60


def bench_module(name):
    """A module of bench/ (run, counted), imported as the runner imports it."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def start_server(binary, *args):
    """Start a bench/ C server on a free port; returns (process, port)."""
    proc = subprocess.Popen([str(binary), "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def stop_server(proc):
    proc.terminate()
    try:
        return proc.communicate(timeout=TIMEOUT)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def counted_load(loadgen, port, *args):
    """Run the load generator in counted mode, answering both quiet edges; returns the
    edges it announced, in order, and its report."""
    proc = subprocess.Popen([str(loadgen), "--port", str(port), "--counted", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    edges = []
    for _ in range(2):
        edges.append(proc.stdout.readline().strip())
        proc.stdin.write("go\n")
        proc.stdin.flush()
    report = json.loads(proc.stdout.readline())
    assert proc.wait(timeout=TIMEOUT) == 0
    return edges, report


@pytest.fixture
def c_epoll(bench_programs):
    proc, port = start_server(bench_programs["c_epoll_echo"])
    yield port
    stop_server(proc)


@pytest.mark.c_program
@pytest.mark.parametrize("connections, requests", [(10, 1000), (10, 3), (1, 50)])
def test_a_counted_window_holds_exactly_the_requests_asked_for(bench_programs, c_epoll,
                                                                connections, requests):
    edges, report = counted_load(bench_programs["loadgen"], c_epoll,
                                 "--connections", str(connections), "--size", "1024",
                                 "--warmup-requests", "100", "--requests", str(requests))
    assert edges == ["quiet window-start", "quiet window-end"]
    assert report["errors_total"] == 0
    assert report["requests"] == report["messages"] == requests
    assert report["counted"] is True


@pytest.mark.c_program


def test_the_load_generator_refuses_what_it_cannot_do(bench_programs):
    loadgen = str(bench_programs["loadgen"])
    counted = subprocess.run([loadgen, "--port", "9", "--counted"], capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert counted.returncode == 2 and "--counted needs --requests" in counted.stderr
    lines = subprocess.run([loadgen, "--port", "9", "--size", "1000", "--lines", "16"],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert lines.returncode == 2 and "--lines must divide --size" in lines.stderr


class LineCheckingEcho:
    """An echo server that checks what a pipelined-lines client sends: every write a
    whole number of 64-byte lines, each ending in its only '\\n'."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lines = 0
        self.bad = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        pending = b""
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 16)
                except ConnectionResetError:
                    return  # the load generator resets its connections when done
                if not data:
                    return
                pending += data
                while len(pending) >= 64:
                    line, pending = pending[:64], pending[64:]
                    with self.lock:
                        if not line.endswith(b"\n") or b"\n" in line[:-1]:
                            self.bad.append(line)
                        self.lines += 1
                    conn.sendall(line)


@pytest.mark.c_program


def test_pipelined_lines_are_whole_lines_and_each_is_counted(bench_programs):
    server = LineCheckingEcho()
    with closing_all(server.listener):
        edges, report = counted_load(bench_programs["loadgen"], server.port,
                                     "--connections", "4", "--size", "1024", "--lines", "16",
                                     "--warmup-requests", "8", "--requests", "40")
    assert report["errors_total"] == 0 and not server.bad
    assert report["requests"] == 40 and report["messages"] == 40 * 16
    # Each connection's first write proves it before the warm-up starts.
    assert server.lines == (4 + 8 + 40) * 16


@pytest.mark.c_program


def test_the_line_floor_answers_each_line_however_it_is_cut(bench_programs):
    proc, port = start_server(bench_programs["c_epoll_echo"], "--lines")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"first\nsec")
            assert recv_exactly(client, 6) == b"first\n"
            client.sendall(b"ond\n")
            assert recv_exactly(client, 7) == b"second\n"
            for byte in b"one byte at a time\n":
                client.sendall(bytes([byte]))
            assert recv_exactly(client, 19) == b"one byte at a time\n"
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as hostile:
            with pytest.raises((ConnectionResetError, BrokenPipeError, EOFError)):
                hostile.sendall(b"x" * (64 * 1024 + 1))  # a line longer than 64 KiB
                recv_exactly(hostile, 1)
    finally:
        stop_server(proc)


# ----------------------------------------------------------------------------- counted runner

def test_strace_summaries_are_read_call_by_call():
    counted = bench_module("counted")
    summary = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 52.10    0.120000           6     20000           sendto
 45.00    0.100000           5     20002         2 read
  2.90    0.006000          30       200           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.226000           5     40202         2 total
"""
    assert counted.parse_strace_summary(summary) == {
        "sendto": 20000, "read": 20002, "epoll_wait": 200}


def ptrace_allowed():
    """strace can attach to a running process here (root, or yama scope 0)."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as scope:
            return os.geteuid() == 0 or scope.read().strip() == "0"
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_counted_mode_counts_the_c_floor_and_repeats_itself(tmp_path):
    missing = [tool for tool in ("valgrind", "callgrind_control", "strace") if not shutil.which(tool)]
    if missing or not ptrace_allowed():
        pytest.skip(f"needs valgrind and strace, and ptrace: missing {missing or 'ptrace'}")
    run = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--counted", "--smoke", "--rounds", "2",
         "--servers", "c_epoll,c_epoll_lines", "--workloads", "W1,W5", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "counted-smoke.json").read_text())["results"]
    runs = results["W1"]["c_epoll"]["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok"]
    for r in runs:
        # One read() and one send() per 1 KiB echo, and epoll_wait() now and then.
        assert r["syscalls"]["read"] == r["messages"]
        assert r["syscalls"]["sendto"] == r["messages"]
        assert 2.0 <= r["per_request"]["syscalls"] < 2.2
        assert 20 < r["per_request"]["instructions"] < 1000
    first, second = (r["per_request"]["instructions"] for r in runs)
    assert abs(first - second) / first < 0.01
    # W5 counts lines: 16 per write, one read and one send per write.
    lines = results["W5"]["c_epoll_lines"]["runs"][0]
    assert lines["messages"] == 16 * lines["syscalls"]["sendto"]
    assert results["W5"]["c_epoll"]["status"] == "unsupported"


def test_a_server_whose_probe_fails_is_unavailable_with_the_probe_words():
    run = bench_module("run")
    forbidden = run.Server("c_uring", "C io_uring", ("/nonexistent",), probe=(
        sys.executable, "-c",
        "print('io_uring unavailable: io_uring_setup failed: Operation not permitted'); exit(1)"))
    assert run.unavailable_reason(forbidden) == (
        "unavailable (io_uring unavailable: io_uring_setup failed: Operation not permitted)")


# ----------------------------------------------------------------------------- io_uring prototype

# Runs a program with io_uring_setup() failing with the errno given, as container
# seccomp profiles make it fail.
FORBID_IO_URING = r"""
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (atoi(argv[1]) & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {.len = 4, .filter = filter};
    if (argc < 3 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program))
        return 126;
    execv(argv[2], argv + 2);
    return 127;
}
"""


@pytest.mark.parametrize("errno_value, words", [(1, "Operation not permitted"),
                                                 (38, "Function not implemented")])
def test_where_io_uring_is_forbidden_the_prototype_is_unavailable_and_says_why(
        bench_programs, tmp_path, errno_value, words):
    binary = bench_programs["c_uring_echo"]
    if binary is None:
        pytest.skip("c_uring_echo.c does not compile here (needs Linux 6.1 headers)")
    source = tmp_path / "forbid.c"
    source.write_text(FORBID_IO_URING)
    forbid = tmp_path / "forbid"
    subprocess.run(["gcc", "-o", str(forbid), str(source)], check=True)
    probe = (str(forbid), str(errno_value), str(binary), "--probe")
    checked = subprocess.run(probe, capture_output=True, text=True, timeout=TIMEOUT)
    if checked.returncode == 126:
        pytest.skip("cannot install a seccomp filter here")
    assert checked.returncode == 1
    assert checked.stdout.startswith("io_uring unavailable: io_uring_setup")
    assert words in checked.stdout
    run = bench_module("run")
    prototype = run.Server("c_uring", "C io_uring", (str(binary),), probe=probe)
    assert run.unavailable_reason(prototype).startswith("unavailable (io_uring unavailable")
    # The server itself refuses to start, naming the step, rather than serving nothing.
    started = subprocess.run(probe[:3] + ("--port", "0"), capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert started.returncode == 1 and words in started.stderr


@pytest.fixture(params=[(), ("--buffers", "64"), ("--buffers", "64", "--no-bundles")],
                ids=["default", "64-buffers", "64-buffers-no-bundles"])
def c_uring(request, bench_programs):
    """The io_uring prototype; with 64 buffers of 2 KiB the shared pool runs dry, which
    exercises -ENOBUFS, re-arming and copying out of the pool."""
    binary = bench_programs["c_uring_echo"]
    if binary is None:
        pytest.skip("c_uring_echo.c does not compile here (needs Linux 6.1 headers)")
    probe = subprocess.run([str(binary), "--probe"], capture_output=True, text=True,
                           timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(probe.stdout.strip())
    proc, port = start_server(binary, *request.param)
    yield port
    assert "stale" in stop_server(proc)  # it printed its counters: it stopped cleanly


@pytest.mark.c_program


def test_the_prototype_echoes_a_half_closed_stream_then_closes(c_uring):
    payload = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", c_uring), timeout=TIMEOUT) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        echoed = recv_exactly(client, len(payload))
        sender.join()
        client.shutdown(socket.SHUT_WR)
        assert echoed == payload
        assert recv_until_eof(client) == b""


@pytest.mark.c_program


def test_a_client_that_never_reads_does_not_stall_the_others(c_uring):
    stuck = socket.create_connection(("127.0.0.1", c_uring), timeout=TIMEOUT)
    with closing_all(stuck):
        stuck.setblocking(False)
        sent = 0
        chunk = b"s" * 65536

        def send_more():
            nonlocal sent
            try:
                sent += stuck.send(chunk)
            except BlockingIOError:
                return True  # the server stopped taking its data: backpressure
            return False

        wait_for(send_more, timeout=TIMEOUT)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", c_uring), timeout=TIMEOUT) as other:
                message = os.urandom(4096)
                other.sendall(message)
                assert recv_exactly(other, len(message)) == message
        stuck.setblocking(True)
        stuck.settimeout(TIMEOUT)
        assert recv_exactly(stuck, sent) == b"s" * sent


@pytest.mark.c_program


def test_reset_connections_give_their_slots_back(c_uring):
    for _ in range(50):
        client = socket.create_connection(("127.0.0.1", c_uring), timeout=TIMEOUT)
        client.sendall(os.urandom(100_000))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # RST, with data in flight both ways
    with socket.create_connection(("127.0.0.1", c_uring), timeout=TIMEOUT) as client:
        client.sendall(b"still here")
        assert recv_exactly(client, 10) == b"still here"


@pytest.mark.c_program


def test_the_prototype_under_load_echoes_every_byte(bench_programs, c_uring):
    edges, report = counted_load(bench_programs["loadgen"], c_uring, "--connections", "100",
                                 "--size", "1024", "--warmup-requests", "500",
                                 "--requests", "5000")
    assert report["errors_total"] == 0 and report["requests"] == 5000
    edges, report = counted_load(bench_programs["loadgen"], c_uring, "--connections", "10",
                                 "--size", str(256 * 1024), "--warmup-requests", "10",
                                 "--requests", "40")
    assert report["errors_total"] == 0 and report["requests"] == 40


# ----------------------------------------------------------------------------- framed peers (issue 12)

FRAMED_SERVERS = {
    "simpletcp": ("simpletcp_framed.py",),
    "simpletcp_compiled": ("simpletcp_framed.py", "--framing", "compiled"),
    "uvloop": ("protocol_framed.py", "--loop", "uvloop"),
    "asyncio_protocol": ("protocol_framed.py", "--loop", "asyncio"),
    "asyncio_streams": ("streams_framed.py",),
}


@pytest.fixture(params=sorted(FRAMED_SERVERS))
def framed_server(request):
    """start(program) -> port of bench/servers' framed server of this kind, serving
    `program` (lines, resp, http); stopped after the test."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="needs uvloop: pip install '.[bench]'")
    started = []

    def start(program):
        if request.param == "simpletcp_compiled" and program != "lines":
            pytest.skip("--framing compiled is W5's (lines): resp and http are the "
                        "examples, framed by their own Framer, in the 'simpletcp' case")
        script, *options = FRAMED_SERVERS[request.param]
        proc = subprocess.Popen([sys.executable, str(BENCH / "servers" / script), "--program",
                                 program, "--port", "0", *options], cwd=BENCH / "servers",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return int(proc.stdout.readline())

    yield start
    for proc in started:
        assert proc.poll() is None, "the server died: " + stop_server(proc)[-2000:]
        stop_server(proc)


def test_framed_servers_answer_w5_lines_however_they_are_cut(framed_server, bench_programs):
    port = framed_server("lines")
    edges, report = counted_load(bench_programs["loadgen"], port, "--connections", "10",
                                 "--size", "1024", "--lines", "16",
                                 "--warmup-requests", "20", "--requests", "200")
    assert report["errors_total"] == 0 and report["messages"] == 200 * 16
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(b"one\ntw")
        assert recv_exactly(client, 4) == b"one\n"
        client.sendall(b"o\n")
        assert recv_exactly(client, 4) == b"two\n"


def test_framed_servers_run_redis_benchmark_without_an_error(framed_server):
    redis_benchmark = shutil.which("redis-benchmark")
    if redis_benchmark is None:
        pytest.skip("needs redis-benchmark: apt-get install redis-tools (.ci/run installs it)")
    port = framed_server("resp")
    for pipeline in ("16", "1"):
        run = subprocess.run([redis_benchmark, "-p", str(port), "-t", "ping,set,get,incr",
                              "-n", "1000", "-c", "10", "-P", pipeline, "--csv"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert run.returncode == 0 and "error" not in (run.stdout + run.stderr).lower(), run
        assert len(run.stdout.splitlines()) == 6  # a header and the five tests
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            # Without -r all INCRs hit one key; -P 1 sends exactly -n of them.
            client.sendall(b"GET counter:__rand_int__\r\nDEL counter:__rand_int__\r\n")
            counter = recv_exactly(client, 14 if pipeline == "1" else 1)
        assert pipeline != "1" or counter == b"$4\r\n1000\r\n:1\r\n"


def test_framed_servers_serve_wrk_only_200s(framed_server):
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("needs wrk: apt-get install wrk (.ci/run installs it)")
    port = framed_server("http")
    run = subprocess.run([wrk, "-t", "1", "-c", "10", "-d", "1s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    assert "Non-2xx" not in run.stdout and "Socket errors" not in run.stdout, run.stdout
    assert " 0 requests in" not in run.stdout


def test_resp_suite_smoke_reports_every_server(tmp_path):
    if shutil.which("redis-benchmark") is None:
        pytest.skip("needs redis-benchmark: apt-get install redis-tools (.ci/run installs it)")
    pytest.importorskip("uvloop", reason="needs uvloop: pip install '.[bench]'")
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--resp", "--smoke",
                          "--output", str(tmp_path)], capture_output=True, text=True,
                         timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "resp-timed-smoke.json").read_text())["results"]
    for pipeline in ("P1", "P16"):
        for name in ("simpletcp_resp", "uvloop_resp", "asyncio_resp"):
            cell = results[pipeline][name]
            assert cell["status"] == "ok", cell["reason"]
            assert cell["median"]["requests_per_s"] > 0


def test_resp_large_smoke_sets_a_million_bytes_on_every_server(tmp_path):
    """--resp --resp-large: redis-benchmark's 1,000,000-byte SETs (which it checks were
    answered +OK) on every store, reported with page faults per request."""
    if shutil.which("redis-benchmark") is None:
        pytest.skip("needs redis-benchmark: apt-get install redis-tools (.ci/run installs it)")
    pytest.importorskip("uvloop", reason="needs uvloop: pip install '.[bench]'")
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--resp", "--resp-large",
                          "--smoke", "--output", str(tmp_path)], capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((tmp_path / "resp-large-timed-smoke.json").read_text())
    assert data["config"]["value_size"] == 1_000_000
    for name in ("simpletcp_resp", "uvloop_resp", "asyncio_resp"):
        cell = data["results"]["P1"][name]
        assert cell["status"] == "ok", cell["reason"]
        assert cell["median"]["requests_per_s"] > 0
        assert cell["median"]["page_faults_per_request"] >= 0


@pytest.mark.timeout(300)
def test_the_workers_benchmark_runs_both_configurations(tmp_path):
    """bench/workers.py --smoke: both configurations serve the counted window (every
    echoed byte checked by the load generator) and are reported."""
    run = subprocess.run([sys.executable, str(BENCH / "workers.py"), "--smoke",
                          "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    (results,) = tmp_path.glob("workers-*.json")
    runs = json.loads(results.read_text())["runs"]
    assert sorted(runs) == ["1", "2"]
    assert all(r["requests_per_s"] > 0 for r in runs["1"] + runs["2"])
    assert "| 2 |" in run.stdout and "| 1 |" in run.stdout
