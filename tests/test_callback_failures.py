"""No callback can take the server down: whatever it raises closes only its own
connection, after what it queued; Ctrl-C and the application's own signal handlers
stop the server gracefully instead of cutting into a callback."""
import logging
import signal
import socket
import textwrap
import threading

import pytest

from support import (backend, child_server, connect, recv_exactly, recv_until_eof,  # noqa: F401
                     refused, serve, wait_for)

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


# A server in the main thread of a child process (so that signals reach run()): "busy"
# makes the callback run Python code for a while, announcing on stdout when it started;
# "big" queues a 4 MiB reply.
SIGNALLED_SERVER = textwrap.dedent(
    """
    import signal, sys, time
    from simpletcp.tcpserver import TCPServer

    BIG = bytes(range(256)) * (16 * 1024)

    def callback(queue, data):
        if data == b"busy":
            print("busy", flush=True)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # the signal lands in here
                pass
            queue.put(b"done after the signal")
        elif data == b"big":
            queue.put(BIG)
        else:
            queue.put(data)

    if sys.argv[2] == "raising-handler":
        def handler(signum, frame):
            raise SystemExit(7)
        signal.signal(signal.SIGUSR1, handler)

    server = TCPServer("localhost", 0, callback, backend=sys.argv[1])
    print(server.port, flush=True)
    server.run()
    print("run returned", flush=True)
    """
)


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
    with child_server(SIGNALLED_SERVER, backend, "default") as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"big")
            slow.recv(1)  # and never more: the first Ctrl-C waits for this reply
            child.send_signal(signal.SIGINT)
            wait_for(lambda: refused(port))  # the first one began the stop
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=3)  # well within the 5 s grace period
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
