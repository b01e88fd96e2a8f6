"""What serving does to the process's signal handling, and undoes (simpletcp._signals)."""
import signal
import socket
import subprocess
import sys
import threading

import pytest

from simpletcp.tcpserver import TCPServer
from support import SIGNAL_AT_LINE, TIMEOUT, child_server, echo, recv_until_eof

pytestmark = pytest.mark.timeout(60)


def handlers():
    return (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))


def wakeup_fd():
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def echo_once(server):
    with socket.create_connection((server.ip, server.port), timeout=10) as client:
        client.sendall(b"ping")
        return client.recv(10)


def test_run_in_the_main_thread_takes_ctrl_c_and_sigterm_and_gives_them_back(backend):
    # The defaults Python starts with: run() takes both while it serves (so that they
    # stop it gracefully), then puts them and the wakeup descriptor back.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        before = handlers()
        assert before == (signal.default_int_handler, signal.SIG_DFL)
        assert wakeup_fd() == -1
        server = TCPServer("localhost", 0, echo, backend=backend)
        while_serving = {}

        def client():
            while not server.running:
                threading.Event().wait(0.01)
            while_serving["handlers"] = handlers()
            while_serving["echo"] = echo_once(server)
            server.stop(timeout=10)

        talker = threading.Thread(target=client)
        talker.start()
        server.run()
        talker.join(10)
        assert while_serving["echo"] == b"ping"
        sigint, sigterm = while_serving["handlers"]
        assert sigint is not signal.default_int_handler and callable(sigint)
        assert sigterm is not signal.SIG_DFL and callable(sigterm)
        assert handlers() == before
        assert wakeup_fd() == -1
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_handlers_the_application_set_before_run_are_left_alone(backend):
    def applications_handler(signum, frame):
        pass

    previous = (signal.signal(signal.SIGINT, applications_handler),
                signal.signal(signal.SIGTERM, applications_handler))
    try:
        server = TCPServer("localhost", 0, echo, backend=backend)
        seen = []

        def client():
            while not server.running:
                threading.Event().wait(0.01)
            seen.append(handlers())
            server.stop(timeout=10)

        talker = threading.Thread(target=client)
        talker.start()
        server.run()
        talker.join(10)
        assert seen == [(applications_handler, applications_handler)]
        assert handlers() == (applications_handler, applications_handler)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_a_server_started_in_a_thread_changes_no_signal_handling(backend):
    # Only the main thread may set handlers; start() serves in another one.
    before = handlers(), wakeup_fd()
    with TCPServer("localhost", 0, echo, backend=backend).start() as server:
        assert echo_once(server) == b"ping"
        assert (handlers(), wakeup_fd()) == before
    assert (handlers(), wakeup_fd()) == before


# An application's own signal handler that raises (its way to stop the server) runs
# wherever the main thread is: here at each line of simpletcp/_signals.py in turn (a
# tracer sends the signal there) while run() takes and gives back the signal handling.
# Wherever it lands, run() must give everything back: Ctrl-C left to the handler of a
# finished loop would only log, and the pipe would leak.
RAISING_HANDLER_AT_EACH_LINE = """
import faulthandler, os, signal, sys, threading
faulthandler.dump_traceback_later(100, exit=True)
import simpletcp._signals
from simpletcp.tcpserver import TCPServer

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop()

def descriptors():
    return sorted(os.listdir("/proc/self/fd"))

signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
number = 1
while True:
    before = descriptors()
    server = TCPServer("localhost", 0, lambda queue, data: None, backend=sys.argv[1])
    seen = signal_at_line(simpletcp._signals.__file__, number)
    stopper = threading.Timer(0.2, server.stop)  # where the signal did not stop it
    stopper.start()
    try:
        server.run()
    except Stop:
        pass
    sys.settrace(None)
    stopper.cancel()
    stopper.join()
    assert server.stop(timeout=10), number
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, number
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, number
    assert signal.set_wakeup_fd(-1) == -1, number
    assert descriptors() == before, (number, before, descriptors())
    if seen[0] < number:
        break  # every line of _signals.py that run() goes through has had its signal
    number += 1
print("lines tried:", number)
"""


@pytest.mark.timeout(120)
def test_run_gives_signal_handling_back_whatever_line_a_raising_handler_lands_on(backend):
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_LINE + RAISING_HANDLER_AT_EACH_LINE, backend],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 20  # install and uninstall were both covered


# The application logs through a handler that, like a stream's buffered writer, refuses
# to be re-entered: a stop signal whose Python handler logs while it is interrupted in
# the middle of a write (as a full stderr pipe makes likely) would see its own log call
# raise. SIGTERM is sent to itself inside the write of the record that holds sys.argv[3].
LOGS_THROUGH_A_NON_REENTRANT_STREAM = """
import logging, os, signal, sys
from simpletcp.tcpserver import TCPServer

backend, workers, signalled_while_writing = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class NonReentrantStream(logging.Handler):
    def __init__(self):
        super().__init__()
        self.writing = False

    def emit(self, record):
        if self.writing:
            raise RuntimeError("reentrant call inside the log stream")
        self.writing = True
        try:
            message = self.format(record)
            if signalled_while_writing in message:
                os.kill(os.getpid(), signal.SIGTERM)
            sys.stderr.write(message + "\\n")
        except Exception:
            self.handleError(record)  # as StreamHandler does
        finally:
            self.writing = False

logging.getLogger().addHandler(NonReentrantStream())
logging.getLogger().setLevel(logging.INFO)

def reply(queue, data):
    logging.getLogger("app").info("request of %d bytes", len(data))
    queue.put(data)

server = TCPServer("localhost", 0, reply, backend=backend, workers=workers)
print(server.port, flush=True)
server.run()
"""


@pytest.mark.parametrize("workers, signalled_while_writing",
                         [(1, "request of"), (2, "worker 1 started")])
def test_a_stop_signal_that_lands_inside_a_log_write_still_stops_the_server(
        backend, workers, signalled_while_writing):
    """Whatever the main thread was doing when the signal came, the stop is not lost and
    is logged: in one process, inside a callback's log call; with workers, inside the
    supervisor's own "worker started" line (a supervisor that lost it served on)."""
    with child_server(LOGS_THROUGH_A_NON_REENTRANT_STREAM, backend, str(workers),
                      signalled_while_writing) as (child, port):
        if workers == 1:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                client.sendall(b"ping")
                assert recv_until_eof(client) == b"ping"  # replied, then closed
        assert child.wait(TIMEOUT) == 0
        log = child.stderr.read()
        assert "SIGTERM: stopping" in log and "reentrant" not in log, log


# For the child programs below: after run() returned, what it took is given back.
GIVEN_BACK = """
import os, signal

def descriptors():
    return sorted(os.listdir("/proc/self/fd"))

def children():
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.append(pid)
        except (OSError, ValueError):
            pass
    return found

def assert_given_back(number, before, sigterm=signal.SIG_DFL):
    assert children() == [], (number, children())  # no worker serves on, no zombie
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, number
    assert signal.getsignal(signal.SIGTERM) == sigterm, number
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL, number
    assert signal.set_wakeup_fd(-1) == -1, number
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == set(), number
    assert descriptors() == before, (number, before, descriptors())
"""


# A worker's own signals, at each line it runs of simpletcp's Python code (a tracer sends
# the signal there), in a fresh supervisor each time: "group" is a terminal's Ctrl-C
# (SIGINT to the supervisor's process group) at each line of the worker's start, "worker"
# a SIGINT to the worker itself at each line of its start and of its stop (sent by the
# supervisor once the worker serves). The first worker forked is traced; once it (or its
# replacement) serves, it asks the supervisor to stop (SIGTERM).
SIGINT_AT_EACH_LINE_OF_A_WORKER = """
import faulthandler, linecache, logging, os, signal, sys, threading
faulthandler.dump_traceback_later(100, exit=True)
import simpletcp._signals, simpletcp.supervisor, simpletcp.tcpserver
from simpletcp.tcpserver import TCPServer

backend, who = sys.argv[1:3]
FILES = {simpletcp.supervisor.__file__}
if who == "worker":
    FILES |= {simpletcp.tcpserver.__file__, simpletcp._signals.__file__}
logging.basicConfig(level=logging.INFO)
supervisor = os.getpid()
run = {"forks": 0}  # and, for each run, the line number and its two pipes

def sigint_at_line():
    number, sent_w, stop_r = run["number"], run["sent_w"], run["stop_r"]
    seen = [0]
    def stop_once_serving():  # the traced worker or its replacement, once
        if run["forks"] == 1:
            return  # the second worker: it may serve before the traced one is there
        try:
            if os.read(stop_r, 1):
                os.kill(supervisor, signal.SIGTERM)
        except BlockingIOError:
            pass
    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "set" and frame.f_back is not None \\
                and frame.f_back.f_code.co_name == "_serve":
            stop_once_serving()  # the loop's ready(): it serves
        if frame.f_code.co_filename not in FILES or run["forks"] > 0:
            return None
        def each_line(frame, event, arg):
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            if event == "line" and line not in ("try:", "finally:"):
                seen[0] += 1
                if seen[0] == number:
                    os.write(sent_w, b"s")
                    if who == "group":
                        os.killpg(os.getpgid(supervisor), signal.SIGINT)
                    else:
                        os.kill(os.getpid(), signal.SIGINT)
            return each_line
        return each_line
    sys.settrace(trace)

os.register_at_fork(after_in_parent=lambda: run.__setitem__("forks", run["forks"] + 1),
                    after_in_child=sigint_at_line)
number = 1
while True:
    sent_r, sent_w = os.pipe()
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK)
    os.write(stop_w, b"t")
    before = descriptors()
    server = TCPServer("localhost", 0, lambda queue, data: None, backend=backend, workers=2)
    run.update(forks=0, number=number, sent_w=sent_w, stop_r=stop_r)
    try:
        server.run()
    finally:
        if os.getpid() != supervisor:
            print("a worker came out of run() at line", number, flush=True)
            os._exit(0)
    assert server.worker_pids == [], number
    assert_given_back(number, before)
    for fd in (sent_w, stop_r, stop_w):
        os.close(fd)
    sent = os.read(sent_r, 1)
    os.close(sent_r)
    if not sent:
        break  # every line of the traced worker has had its signal
    number += 1
print("lines tried:", number, flush=True)
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("who", ["group", "worker"])
def test_a_workers_sigint_at_whatever_line_neither_fails_it_nor_lets_it_out_of_run(
        backend, who):
    """Ctrl-C at a terminal while a worker starts, before it has left the supervisor's
    process group, is the supervisor's alone: the worker logged "worker failed" with a
    KeyboardInterrupt. A SIGINT to a worker as it stops (Python's default handler back,
    a KeyboardInterrupt out of any call) never takes it out of its exit into the
    supervisor's code: it killed the other workers and returned from run() in the
    worker."""
    result = subprocess.run(
        [sys.executable, "-c", GIVEN_BACK + SIGINT_AT_EACH_LINE_OF_A_WORKER, backend, who],
        capture_output=True, text=True, timeout=280, start_new_session=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "came out of run()" not in result.stdout, result.stdout[-2000:]
    assert int(result.stdout.split()[-1]) > (10 if who == "group" else 60), result.stdout
    if who == "group":
        assert "Traceback" not in result.stderr, result.stderr[-3000:]


# The supervisor of a server with workers, signalled at each line of
# simpletcp/supervisor.py it runs in turn (a tracer sends the signal there; the workers
# are not traced), from run()'s first line to its last: "raising" is an application's
# SIGUSR1 handler that raises (its way to stop), "sigterm" a SIGTERM while the
# application has a handler of its own that calls server.stop() (it has the signal
# before run() takes it and after run() gives it back). Once the workers are started,
# stop() is called if no signal came yet (from the tracer, as from another thread).
SUPERVISOR_SIGNALLED_AT_EACH_LINE = """
import faulthandler, logging, os, signal, sys, tempfile
faulthandler.dump_traceback_later(250, exit=True)
import simpletcp.supervisor
from simpletcp.tcpserver import TCPServer

backend, signalled = sys.argv[1:3]
logging.basicConfig(level=logging.INFO)

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop()

os.register_at_fork(after_in_child=lambda: sys.settrace(None))
signal.signal(signal.SIGUSR1, stop)
path = os.path.join(tempfile.mkdtemp(), "server.sock")
number = 1
while True:
    before = descriptors()
    server = TCPServer("unix:" + path, 0, lambda queue, data: None, backend=backend,
                       workers=2)
    def stop_on_sigterm(signum, frame):
        server.stop()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    def stop_once_started(frame):
        if frame.f_code.co_name == "_wait" and frame.f_back.f_code.co_name == "run" \\
                and seen[0] < number:
            server.stop()
    seen = signal_at_line(simpletcp.supervisor.__file__, number,
                          signal.SIGUSR1 if signalled == "raising" else signal.SIGTERM,
                          stop_once_started)
    try:
        server.run()
        raised = False
    except Stop:
        raised = True
    sys.settrace(None)
    assert raised == (signalled == "raising" and seen[0] >= number), number
    assert server.worker_pids == [] and not os.path.exists(path), number
    assert_given_back(number, before, sigterm=stop_on_sigterm)
    if seen[0] < number:
        break  # every line of supervisor.py that run() goes through has had its signal
    number += 1
print("lines tried:", number, flush=True)
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signalled", ["raising", "sigterm"])
def test_the_supervisor_signalled_at_whatever_line_stops_and_gives_everything_back(
        backend, signalled):
    """Wherever the signal lands, run() stops its workers, reaps them (no worker
    serves on, no zombie), gives the signal handling back (the wake-up descriptor too),
    closes every descriptor and removes the socket file; an exception of the
    application's handler comes out of run(). (Before: raised between fork and noting
    the pid, it left a worker serving that nothing stopped or reaped; raised while run()
    took or gave back the handlers, it left the supervisor's in place, and the wake-up
    descriptor to a closed pipe.)"""
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_LINE + GIVEN_BACK + SUPERVISOR_SIGNALLED_AT_EACH_LINE,
         backend, signalled], capture_output=True, text=True, timeout=280, start_new_session=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 100, result.stdout  # start and stop both covered
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
