"""What serving does to the process's signal handling, and undoes (simpletcp._signals)."""
import signal
import socket
import threading

import pytest

from simpletcp.tcpserver import TCPServer
from support import echo

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
