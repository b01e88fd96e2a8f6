"""No callback can take the server down: whatever it raises closes only its own
connection, after what it queued; Ctrl-C and the application's own signal handlers
stop the server gracefully instead of cutting into a callback."""
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from support import (SIGNALLED_SERVER, child_server, connect, recv_exactly, recv_until_eof, refused,
                     reset, reset_at_once, wait_for)

pytestmark = pytest.mark.timeout(60)


class CustomBaseException(BaseException):
    """Not an Exception: what a framework might use to unwind."""


RAISED = [SystemExit, SystemExit(3), GeneratorExit, KeyboardInterrupt, CustomBaseException,
          MemoryError, RuntimeError]


@pytest.mark.parametrize("raised", RAISED, ids=lambda e: type(e).__name__ if isinstance(e, BaseException) else e.__name__)
def test_a_callback_raising_anything_closes_only_its_connection(serve, caplog, raised):
    caplog.set_level(logging.ERROR, logger="simpletcp")
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB, still pending for another client
    big_queued = threading.Event()

    def callback(queue, data):
        if data == b"big":
            queue.put(big)
            big_queued.set()
        elif data == b"boom":
            queue.put(b"last words")
            raise raised
        else:
            queue.put(data)

    server = serve(callback)
    with connect(server, timeout=30) as bystander, connect(server) as raiser:
        bystander.sendall(b"big")
        assert big_queued.wait(10)
        raiser.sendall(b"boom")
        assert recv_until_eof(raiser) == b"last words"
        assert recv_exactly(bystander, len(big)) == big
        with connect(server) as newcomer:
            newcomer.sendall(b"served?")
            assert recv_exactly(newcomer, 7) == b"served?"
    assert server.running
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert failures[0].exc_info is not None
    expected = raised if isinstance(raised, type) else type(raised)
    assert isinstance(failures[0].exc_info[1], expected)


def _busy_callback_then(child, port, signum):
    """Start a busy callback, send ``signum`` while it runs; the busy client's reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as busy:
        busy.sendall(b"busy")
        assert child.stdout.readline() == "busy\n"
        child.send_signal(signum)
        return recv_until_eof(busy)


def test_ctrl_c_during_a_callback_lets_it_finish_then_stops_gracefully(backend):
    with child_server(SIGNALLED_SERVER, backend, "default") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bystander:
            bystander.sendall(b"big")
            first = bystander.recv(1)  # the 4 MiB reply is on its way
            assert _busy_callback_then(child, port, signal.SIGINT) == b"done after the signal"
            assert len(first + recv_until_eof(bystander)) == 4 * 1024 * 1024
        out, err = child.communicate(timeout=10)
        assert child.returncode == 0, err
        assert "run returned" in out
        assert "Traceback" not in err


def test_a_second_ctrl_c_stops_without_waiting(backend):
    # A grace period far longer than a busy machine can delay the exit: the test tells
    # "did not wait" from "waited" without a tight bound.
    with child_server(SIGNALLED_SERVER, backend, "default", "4", "120") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"big")
            slow.recv(1)  # and never more: the first Ctrl-C waits for this reply
            child.send_signal(signal.SIGINT)
            wait_for(lambda: refused(port))  # the first one began the stop
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)  # well within the 120 s grace period
        assert child.returncode == 0, err
        assert "run returned" in out
        assert "Traceback" not in err


@pytest.mark.parametrize("during", ["callback", "wait"])
def test_an_exception_from_the_applications_signal_handler_stops_gracefully_and_propagates(
        backend, during):
    # A SystemExit raised by the application's own handler is the application asking to
    # exit: the server stops gracefully (queued replies go out) and run() re-raises it.
    with child_server(SIGNALLED_SERVER, backend, "raising-handler") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bystander:
            bystander.sendall(b"big")
            first = bystander.recv(1)
            if during == "callback":
                # The handler's exception unwinds the callback it interrupted: that
                # client gets no reply, but an orderly close.
                assert _busy_callback_then(child, port, signal.SIGUSR1) == b""
            else:
                child.send_signal(signal.SIGUSR1)
            assert len(first + recv_until_eof(bystander)) == 4 * 1024 * 1024
        out, err = child.communicate(timeout=10)
    assert child.returncode == 7, err
    assert "run returned" not in out
    assert "read_callback raised" not in err


class RaisingHandler(logging.Handler):
    """An application's logging handler that fails (a log shipper whose network is
    down, say) on every record at or above its level."""

    def emit(self, record):
        raise ConnectionError(f"log shipper down: {record.getMessage()[:40]}")


@pytest.fixture
def unraisable(monkeypatch):
    """What reaches sys.unraisablehook (where CPython reports exceptions it cannot raise)."""
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    return reported


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR],
                         ids=logging.getLevelName)
def test_a_logging_handler_that_raises_changes_nothing_the_server_does(serve, unraisable, level):
    # The loop logs at every level (DEBUG: a reset; INFO: listening; WARNING: the
    # connection limit; ERROR: a failing callback). Whatever the application's handler
    # raises is reported to sys.unraisablehook, and serving goes on as without it.
    # Found it: at ERROR the failing callback's reply was reset away; at WARNING the
    # server stopped; at INFO and DEBUG start() raised the handler's exception.
    simpletcp_logger = logging.getLogger("simpletcp")
    handler = RaisingHandler(level)
    simpletcp_logger.addHandler(handler)
    previous_level = simpletcp_logger.level
    simpletcp_logger.setLevel(logging.DEBUG)
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB, still pending for another client
    big_queued = threading.Event()

    def callback(queue, data):
        if data == b"big":
            queue.put(big)
            big_queued.set()
        elif data == b"boom":
            queue.put(b"last words")
            raise ValueError("a bug in the application")
        else:
            queue.put(data)

    try:
        server = serve(callback, connection_limit=2)
        with connect(server, timeout=30) as bystander, connect(server) as resetter:
            bystander.sendall(b"big")
            assert big_queued.wait(10)
            resetter.sendall(b"x")
            assert recv_exactly(resetter, 1) == b"x"
            assert reset_at_once(server.port)  # over the limit
            reset(resetter)
            wait_for(lambda: server.connection_count == 1)
            with connect(server) as raiser:
                raiser.sendall(b"boom")
                assert recv_until_eof(raiser) == b"last words"
            assert recv_exactly(bystander, len(big)) == big
            with connect(server) as newcomer:
                newcomer.sendall(b"served?")
                assert recv_exactly(newcomer, 7) == b"served?"
        assert server.running
    finally:
        simpletcp_logger.removeHandler(handler)
        simpletcp_logger.setLevel(previous_level)
    assert unraisable, "the handler's failures were reported nowhere"
    assert all(isinstance(report.exc_value, ConnectionError) for report in unraisable)


# The application's SIGUSR1 handler raises Quit, an Exception (not a BaseException):
# it is the application's request to stop all the same. The application's logging
# handler raises SIGUSR1 on the record named by argv[2], so the signal handler runs
# inside logging code that the loop called, deterministically (a real signal lands
# there by chance).
SIGNAL_INSIDE_LOGGING_SERVER = textwrap.dedent(
    """
    import logging, os, signal, sys
    from simpletcp.tcpserver import TCPServer

    BIG = bytes(range(256)) * (16 * 1024)

    class Quit(Exception):
        pass

    def on_usr1(signum, frame):
        raise Quit()

    class SignallingHandler(logging.Handler):
        def emit(self, record):
            if sys.argv[2] in record.getMessage():
                signal.raise_signal(signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, on_usr1)
    logger = logging.getLogger("simpletcp")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(SignallingHandler())
    descriptors = len(os.listdir("/proc/self/fd"))
    server = TCPServer("localhost", 0, lambda queue, data: queue.put(BIG if data == b"big" else data),
                       backend=sys.argv[1])
    print(server.port, flush=True)
    try:
        server.run()
    except Quit:
        print("run raised Quit", flush=True)
    print("descriptors back:", len(os.listdir("/proc/self/fd")) == descriptors, flush=True)
    """
)


@pytest.mark.parametrize("record", ["listening", "reset by peer"])
def test_a_signal_handlers_exception_raised_inside_logging_stops_the_server(backend, record):
    # Found it: raised while the loop logged a reset, the application's exception was
    # taken for that connection's failure and dropped; the server went on serving.
    with child_server(SIGNAL_INSIDE_LOGGING_SERVER, backend, record) as (child, port):
        if record == "reset by peer":
            with socket.create_connection(("127.0.0.1", port), timeout=10) as bystander:
                bystander.sendall(b"big")
                first = bystander.recv(1)  # the 4 MiB reply is on its way
                resetter = socket.create_connection(("127.0.0.1", port), timeout=10)
                resetter.sendall(b"x")
                assert recv_exactly(resetter, 1) == b"x"
                reset(resetter)
                assert len(first + recv_until_eof(bystander)) == 4 * 1024 * 1024
        # read(), not communicate(): the port's readline() may have buffered the rest.
        out, err = child.stdout.read(), child.stderr.read()
    assert out.splitlines()[-2:] == ["run raised Quit", "descriptors back: True"], (out, err)
    assert "Traceback" not in err, err


def test_a_logging_handler_that_stops_the_server_stops_it_gracefully(serve):
    # A handler that reacts to a failing callback by calling stop(), in the loop's thread:
    # stop() returns at once there, and the stop is graceful.
    servers = []
    big = bytes(range(256)) * (16 * 1024)

    class StoppingHandler(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                servers[0].stop()

    def callback(queue, data):
        if data == b"boom":
            queue.put(b"last words")
            raise ValueError("the handler will stop the server")
        queue.put(big)

    simpletcp_logger = logging.getLogger("simpletcp")
    handler = StoppingHandler()
    simpletcp_logger.addHandler(handler)
    try:
        servers.append(serve(callback))
        with connect(servers[0], timeout=30) as bystander, connect(servers[0]) as raiser:
            bystander.sendall(b"big")
            first = bystander.recv(1)
            raiser.sendall(b"boom")
            assert recv_until_eof(raiser) == b"last words"
            assert first + recv_until_eof(bystander) == big
        assert servers[0].stop(timeout=10)
    finally:
        simpletcp_logger.removeHandler(handler)


# Ten servers in turn, each run() in the main thread while its clients make every
# callback fail and SIGALRM fires every 0.2 ms; the application's SIGALRM handler
# raises Quit (an Exception) at the Nth alarm, wherever the main thread is then: in a
# callback, in the loop's handling of the failure, in logging, in the wait.
ALARMED_SERVER = textwrap.dedent(
    """
    import logging, os, signal, socket, sys, threading
    from simpletcp.tcpserver import TCPServer

    # The failures are expected. A handler that writes (logging.lastResort included)
    # would swallow a Quit raised inside it: logging.Handler.handleError takes any
    # Exception of emit(), the server never sees it.
    logging.getLogger("simpletcp").propagate = False
    logging.getLogger("simpletcp").addHandler(logging.NullHandler())

    class Quit(Exception):
        pass

    def failing(queue, data):
        raise ValueError("every request fails")

    for attempt in range(10):
        alarms = [0]
        def on_alarm(signum, frame, target=20 + 7 * attempt):
            alarms[0] += 1
            if alarms[0] == target:
                raise Quit()
        signal.signal(signal.SIGALRM, on_alarm)
        descriptors = len(os.listdir("/proc/self/fd"))
        server = TCPServer("localhost", 0, failing, backend=sys.argv[1])
        done = threading.Event()
        def clients():
            while not done.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as c:
                        c.sendall(b"x")
                        c.recv(10)
                except OSError:
                    pass
        threads = [threading.Thread(target=clients) for _ in range(2)]
        for thread in threads:
            thread.start()
        guard = threading.Timer(3.0, server.stop)  # if Quit is lost
        guard.start()
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        try:
            server.run()
            outcome = "run returned"
        except Quit:
            outcome = "run raised Quit"
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        guard.cancel()
        done.set()
        for thread in threads:
            thread.join()
        back = len(os.listdir("/proc/self/fd")) == descriptors
        print(outcome, "descriptors back" if back else "DESCRIPTORS KEPT", flush=True)
    """
)


@pytest.mark.timeout(120)
def test_a_signal_handlers_exception_is_never_taken_for_a_connections_failure(backend):
    # Found it: about one run in three on main, the Quit landed in the loop's own
    # Python-level work for a connection (signal.getsignal's enum conversions while
    # telling a signal handler's exception from the callback's), was logged as
    # "closed after an error: Quit()" and dropped; run() went on serving.
    result = subprocess.run([sys.executable, "-c", ALARMED_SERVER, backend],
                            capture_output=True, text=True, timeout=100)
    assert result.stdout.splitlines() == ["run raised Quit descriptors back"] * 10, (
        result.stdout, result.stderr[-2000:])
