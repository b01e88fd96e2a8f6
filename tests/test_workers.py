"""workers=N: N processes serving one port under a supervisor (simpletcp.supervisor).

Each test runs the server in a child process (``python -m simpletcp --workers N``):
workers are forked, which the test process itself must not be.
"""
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from simpletcp.tcpserver import TCPServer
from support import (TIMEOUT, ServingCLI, child_server, open_descriptors, own_descriptors_before,
                     process_gone, recv_exactly, recv_until_eof, refused, wait_for)

pytestmark = pytest.mark.timeout(120)

# The application the workers serve: "pid" is answered with the worker's pid; "hold"
# blocks that worker's loop until the file "release" exists (it says it holds by making
# "held"); "slow" is answered by a thread 0.5 s later (a reply queued when a stop comes);
# "later" by a thread once "release" exists (the worker's loop serves on meanwhile).
APP = '''
import os, threading, time

def reply(queue, data):
    if data == b"hold":
        open("held", "w").close()
        while not os.path.exists("release"):
            time.sleep(0.01)
    if data == b"later":
        def when_released():
            while not os.path.exists("release"):
                time.sleep(0.01)
            queue.put(b"released")
        threading.Thread(target=when_released).start()
        return
    if data == b"slow":
        def later():
            time.sleep(0.5)
            queue.put(b"slow reply from %d" % os.getpid())
        threading.Thread(target=later).start()
        return
    queue.put(str(os.getpid()).encode())
'''


@pytest.fixture
def app(tmp_path):
    (tmp_path / "workers_app.py").write_text(APP)  # the working directory: importable
    return "workers_app:reply"


def ask(port: int, request: bytes = b"pid", timeout: float = TIMEOUT) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(request)
        return client.recv(100)


def worker_pids(server: ServingCLI, count: int) -> list:
    lines = server.wait_for_log("started (pid", count)
    return [int(line.rsplit("(pid ", 1)[1].split(")")[0]) for line in lines]


def test_two_workers_serve_the_port_at_once(app, tmp_path):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        pids = worker_pids(server, 2)
        assert server.child.pid not in pids
        held = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        held.sendall(b"hold")
        wait_for(lambda: (tmp_path / "held").exists())
        # One worker is stuck in a callback; the other one answers meanwhile.
        other = int(ask(server.port))
        (tmp_path / "release").touch()
        holder = int(held.recv(100))
        held.close()
        assert {other, holder} == set(pids)
        assert server.stop() == 0
    assert all(process_gone(pid) for pid in pids)


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(app):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        first, second = worker_pids(server, 2)
        answered = []
        failures = []
        done = threading.Event()

        def keep_asking():
            while not done.is_set():
                try:
                    reply = ask(server.port)
                except OSError as exc:
                    failures.append(exc)  # reset by the dying worker
                    continue
                if reply:
                    answered.append(int(reply))
                else:
                    failures.append("closed")  # accepted, unread, when the worker died

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            wait_for(lambda: len(answered) > 10)
            os.kill(first, signal.SIGKILL)
            restarted = server.wait_for_log("restarting it in")[0]
            assert f"worker 1 (pid {first}) was killed by SIGKILL" in restarted
            replacement = worker_pids(server, 3)[2]
            count = len(answered)
            wait_for(lambda: len(answered) > count + 10)
        finally:
            done.set()
            asker.join(TIMEOUT)
        # A connection the dead worker had accepted dies with it (the client asks one at
        # a time: at most one); those in the shared accept queue do not: the other
        # worker takes them.
        assert len(failures) <= 1, failures
        assert set(answered[-10:]) <= {second, replacement}
        # The replacement serves: with the other worker frozen, it alone can answer.
        os.kill(second, signal.SIGSTOP)
        try:
            assert int(ask(server.port)) == replacement
        finally:
            os.kill(second, signal.SIGCONT)
        assert server.stop() == 0


def test_all_workers_killed_at_once_are_replaced_and_a_client_waiting_meanwhile_served(app):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        pids = worker_pids(server, 2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: all(process_gone(pid) for pid in pids))
        # No worker now: the connection waits in the supervisor's backlog until a
        # replacement accepts it.
        assert int(ask(server.port)) in worker_pids(server, 4)[2:]
        assert server.stop() == 0


def test_a_worker_that_keeps_dying_is_restarted_with_a_growing_back_off(app):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        victim = worker_pids(server, 2)[0]
        for deaths in range(1, 4):
            os.kill(victim, signal.SIGKILL)
            server.wait_for_log("restarting it in", deaths)
            victim = worker_pids(server, 2 + deaths)[-1]
        delays = [line.rsplit("restarting it in ", 1)[1].strip()
                  for line in server.wait_for_log("restarting it in", 3)]
        assert delays == ["0.1 s", "0.2 s", "0.4 s"]
        assert int(ask(server.port))  # and it serves
        assert server.stop() == 0


def zombie_children(pid: int) -> list:
    """The children of process ``pid`` that exited and were not waited for."""
    zombies = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry))
    return zombies


def test_restarts_leak_no_descriptor_and_leave_no_zombie(app):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        supervisor = server.child.pid
        pids = worker_pids(server, 2)
        descriptors = open_descriptors(supervisor)
        for restart in range(8):  # four per worker: back-offs of 0.1 to 0.8 s
            os.kill(pids[restart % 2], signal.SIGKILL)
            pids[restart % 2] = worker_pids(server, 3 + restart)[-1]
        assert int(ask(server.port)) in pids
        assert open_descriptors(supervisor) == descriptors
        assert zombie_children(supervisor) == []
        assert server.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_every_worker_gracefully_with_replies_sent(app, signum):
    # SIGINT goes to the whole process group, as Ctrl-C at a terminal does: the workers
    # (in a group of their own) are stopped once, by the supervisor, and still flush.
    with ServingCLI(app, "--port", "0", "--workers", "2", start_new_session=True) as server:
        pids = worker_pids(server, 2)
        waiting = []
        for _ in range(4):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            client.sendall(b"slow")
            waiting.append(client)
        time.sleep(0.1)  # the requests reach their workers' callbacks
        os.killpg(server.child.pid, signum)
        for client in waiting:
            assert client.recv(100).startswith(b"slow reply from ")
            assert client.recv(100) == b""  # then the connection is closed
            client.close()
        assert server.child.wait(TIMEOUT) == 0
        assert "all workers stopped" in server.log_text()
    assert all(process_gone(pid) for pid in pids)
    # The port is released: a new server can bind it at once.
    TCPServer("localhost", server.port, lambda q, d: None).stop()


def test_a_stopping_server_with_workers_refuses_new_connections_at_once(app, tmp_path):
    """As one process does: while the workers drain, the port refuses (a balancer's
    health check sees it down, and it retries elsewhere). A socket still listening, with
    no worker to accept, would take connections only to reset them, requests and all."""
    with ServingCLI(app, "--port", "0", "--workers", "2", "--grace-period", "30") as server:
        worker_pids(server, 2)
        owed = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        owed.sendall(b"later")
        time.sleep(0.1)  # the request reaches its worker's callback
        server.child.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(server.port))
        (tmp_path / "release").touch()
        assert owed.recv(100) == b"released"  # the drain was still on: its reply came now
        owed.close()
        assert server.child.wait(TIMEOUT) == 0


# A callback that stops the server it is served by, as one may in one process: with
# workers it runs in a worker, which holds the supervisor's TCPServer as the fork left it.
STOPPED_BY_A_CALLBACK = """
import logging
from simpletcp.tcpserver import TCPServer
logging.basicConfig(level=logging.INFO)

def reply(queue, data):
    queue.put(b"stopping")
    server.stop()

server = TCPServer("localhost", 0, reply, workers=2)
print(server.port, flush=True)
server.run()
print("run returned", flush=True)
"""


def test_stop_in_a_workers_callback_stops_the_whole_server_gracefully():
    with child_server(STOPPED_BY_A_CALLBACK) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"stop")
            assert recv_until_eof(client) == b"stopping"  # its reply first, then closed
        assert child.wait(TIMEOUT) == 0
        assert child.stdout.readline() == "run returned\n"
        log = child.stderr.read()
        # (The supervisor may be still starting the second worker when it is asked.)
        assert "Traceback" not in log and "SIGTERM: stopping" in log, log


def test_workers_stop_when_the_supervisor_is_killed(app):
    with ServingCLI(app, "--port", "0", "--workers", "2") as server:
        pids = worker_pids(server, 2)
        server.child.kill()
        server.child.wait()
        wait_for(lambda: all(process_gone(pid) for pid in pids))


def test_one_worker_is_the_in_process_server():
    server = TCPServer("localhost", 0, lambda queue, data: queue.put(data), workers=1)
    with server.start():
        assert server.worker_pids == []
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            client.sendall(b"x")
            assert recv_exactly(client, 1) == b"x"
        assert server.connection_count in (0, 1)


def test_a_server_with_workers_cannot_start_in_a_thread_or_count_connections():
    server = TCPServer("localhost", 0, lambda queue, data: None, workers=2)
    try:
        with pytest.raises(RuntimeError, match="run\\(\\) in the main thread"):
            server.start()
        with pytest.raises(RuntimeError, match="per worker process"):
            server.connection_count
        failures = []
        thread = threading.Thread(target=lambda: _record_failure(server.run, failures))
        thread.start()
        thread.join(TIMEOUT)
        assert failures and "main thread" in str(failures[0])
        assert server.workers == 2 and server.worker_pids == []
    finally:
        assert server.stop(timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def test_a_server_with_workers_that_never_runs_holds_no_descriptor():
    before = own_descriptors_before()
    TCPServer("localhost", 0, lambda queue, data: None, workers=2).stop()
    with TCPServer("localhost", 0, lambda queue, data: None, workers=2):
        pass
    assert open_descriptors() == before


# run() with workers, stopped by a signal handler (no thread: the process forks), then
# stop() again as a with-block's exit or a cleanup path does, once the application has
# opened files: they take the lowest free descriptor numbers, those the server closed.
STOP_AFTER_RUN = """
import signal, tempfile
from simpletcp.tcpserver import TCPServer
server = TCPServer("localhost", 0, lambda queue, data: None, workers=2)
signal.signal(signal.SIGALRM, lambda signum, frame: server.stop())
signal.setitimer(signal.ITIMER_REAL, 0.5)
server.run()
files = [tempfile.TemporaryFile() for _ in range(16)]
server.stop()
server.stop()
for opened in files:
    opened.seek(0)
print("written into the files:", b"".join(opened.read() for opened in files))
"""


def test_stop_after_run_returned_writes_into_no_descriptor_reused_since():
    result = subprocess.run([sys.executable, "-c", STOP_AFTER_RUN], capture_output=True,
                            text=True, timeout=TIMEOUT * 3)
    assert result.stdout == "written into the files: b''\n", result


# A process that already has more than FD_SETSIZE (1024) descriptors open when it
# starts its workers: the supervisor's own descriptors are numbered above 1024.
MANY_DESCRIPTORS_OPEN = """
import os, resource, signal
from simpletcp.tcpserver import TCPServer
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [open(os.devnull) for _ in range(1100)]
server = TCPServer("localhost", 0, lambda queue, data: None, workers=2)
signal.signal(signal.SIGALRM, lambda signum, frame: server.stop())
signal.setitimer(signal.ITIMER_REAL, 0.5)
server.run()
print("run returned")
"""


def test_workers_are_supervised_with_more_than_1024_descriptors_open():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
    result = subprocess.run([sys.executable, "-c", MANY_DESCRIPTORS_OPEN],
                            capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert (result.returncode, result.stdout) == (0, "run returned\n"), result.stderr


# The supervisor's third fork fails (EAGAIN: the process limit, memory), when it
# replaces a worker killed half a second in; the server is stopped once the fourth
# fork, the retry, has started a worker.
FORK_FAILS_AT_A_RESTART = """
import errno, logging, os, signal
from simpletcp.tcpserver import TCPServer
logging.basicConfig(level=logging.INFO)
forks = 0
real_fork = os.fork
def fork():
    global forks
    forks += 1
    if forks == 3:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    pid = real_fork()
    if pid and forks == 4:
        signal.signal(signal.SIGALRM, lambda signum, frame: server.stop())
        signal.setitimer(signal.ITIMER_REAL, 0.3)
    return pid
os.fork = fork
server = TCPServer("localhost", 0, lambda queue, data: queue.put(data), workers=2)
signal.signal(signal.SIGALRM, lambda signum, frame: os.kill(server.worker_pids[0],
                                                            signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, 0.5)
server.run()
print("run returned after", forks, "forks")
"""


# SIGTERM comes while the supervisor starts its workers: right after the first fork.
STOPPED_WHILE_STARTING = """
import os, signal
from simpletcp.tcpserver import TCPServer
forks = 0
real_fork = os.fork
def fork():
    global forks
    forks += 1
    pid = real_fork()
    if pid:
        os.kill(os.getpid(), signal.SIGTERM)
    return pid
os.fork = fork
server = TCPServer("localhost", 0, lambda queue, data: None, workers=3)
server.run()
print("run returned after", forks, "forks")
"""


def test_a_stop_while_the_workers_start_starts_no_more_of_them():
    result = subprocess.run([sys.executable, "-c", STOPPED_WHILE_STARTING],
                            capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert (result.returncode, result.stdout) == (0, "run returned after 1 forks\n"), \
        result.stderr


def test_a_fork_that_fails_at_a_restart_is_retried_not_fatal():
    """A fork that fails for a moment must not take the supervisor down, and the
    workers serving with it (killed, their queued replies lost): it is retried with
    the back-off of a worker that died at once."""
    result = subprocess.run([sys.executable, "-c", FORK_FAILS_AT_A_RESTART],
                            capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert (result.returncode, result.stdout) == (0, "run returned after 4 forks\n"), \
        result.stderr
    assert ("worker 1 could not be started ([Errno 11] Resource temporarily "
            "unavailable); restarting it in 0.2 s") in result.stderr
    assert result.stderr.count("was killed by SIGKILL") == 1  # only the one the test killed


def _record_failure(action, failures):
    try:
        action()
    except Exception as exc:
        failures.append(exc)


@pytest.mark.parametrize("workers, error", [
    (0, ValueError), (-1, ValueError), (1025, ValueError), ("2", TypeError),
    (2.0, TypeError), (True, TypeError), (None, TypeError),
])
def test_bad_workers_are_named(workers, error):
    with pytest.raises(error, match="workers"):
        TCPServer("localhost", 0, lambda queue, data: None, workers=workers)


def test_bad_workers_on_the_command_line_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "simpletcp", "--workers", "0"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "argument --workers: workers must be from 1 to 1024, got 0" in result.stderr


def test_workers_on_a_unix_socket_leave_no_file_behind(app, tmp_path):
    path = str(tmp_path / "workers.sock")
    with ServingCLI(app, "--mode", "unix:" + path, "--workers", "2") as server:
        worker_pids(server, 2)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"pid")
            assert int(client.recv(100)) in worker_pids(server, 2)
        assert server.stop() == 0
    # The supervisor bound it and removes it; the workers, which were given the socket,
    # do not (one stopping early would pull the path from under the others).
    assert not os.path.exists(path)


def test_a_worker_stopping_by_itself_does_not_remove_the_unix_socket(tmp_path):
    """A worker whose callback calls stop() exits and is replaced; the socket file,
    the supervisor's, stays for the others and the replacement."""
    (tmp_path / "stopping_app.py").write_text(
        "import os\n"
        "def reply(queue, data):\n"
        "    queue.put(str(os.getpid()).encode())\n")
    path = str(tmp_path / "workers.sock")
    def ask_over_unix():
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"pid")
            return int(client.recv(100))

    with ServingCLI("stopping_app:reply", "--mode", "unix:" + path, "--workers", "2") as server:
        worker_pids(server, 2)
        victim = ask_over_unix()  # it serves: its loop handles SIGTERM by now
        os.kill(victim, signal.SIGTERM)  # a graceful stop of one worker alone
        server.wait_for_log(f"(pid {victim}) exited with status 0")
        worker_pids(server, 3)
        assert os.path.exists(path)
        assert ask_over_unix() != victim
        assert server.stop() == 0
