"""Two simpletcp instances behind a real HAProxy, as in production: the PROXY protocol
(v1 and v2) gives the callback the client's address, HAProxy's health check sees an
instance stop, and an instance stopped gracefully mid-traffic (a rolling deploy) loses
no reply on the connections it had accepted."""
import socket
import subprocess
import threading
import time

import pytest

from haproxy_support import HAProxy, haproxy_binary
from simpletcp.tcpserver import TCPServer
from support import (EXAMPLES, TIMEOUT, assert_each_reply_names_its_client, recv_exactly,
                     two_proxied_who_am_i_servers)

pytestmark = pytest.mark.timeout(120)


def test_the_example_configuration_is_one_haproxy_takes():
    """examples/haproxy/haproxy.cfg, which the README points to, as HAProxy checks it."""
    result = subprocess.run([haproxy_binary(), "-c", "-f",
                             str(EXAMPLES / "haproxy" / "haproxy.cfg")],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_the_callback_sees_the_clients_address_through_haproxy(backend, option):
    with two_proxied_who_am_i_servers(backend) as (s1, s2, seen), \
            HAProxy([("s1", s1.port, option), ("s2", s2.port, option)]) as haproxy:
        assert_each_reply_names_its_client(haproxy.port, 6)
        assert len(seen["s1"]) == len(seen["s2"]) == 3  # round robin: both served


def test_haproxy_marks_a_stopped_instance_down_and_sends_to_the_other(backend):
    with two_proxied_who_am_i_servers(backend) as (s1, s2, seen), \
            HAProxy([("s1", s1.port, "send-proxy-v2"), ("s2", s2.port, "send-proxy-v2")]) \
            as haproxy:
        assert s2.stop(timeout=TIMEOUT)
        haproxy.wait_for_status({"s1": "UP", "s2": "DOWN"})
        assert_each_reply_names_its_client(haproxy.port, 4)


class NumberedReplies:
    """A callback for 12-byte requests b"REQ%08d\\n", each answered b"REP%08d\\n" by a
    worker thread 20 ms later (so that replies are still owed when a stop comes). It
    records the number of every request it read, and when."""

    def __init__(self):
        self.read = []  # (time, number)
        self.pending = {}  # queue -> bytes of a request not whole yet

    def __call__(self, queue, data):
        buffered = self.pending.pop(queue, b"") + data
        while len(buffered) >= 12:
            request, buffered = buffered[:12], buffered[12:]
            number = int(request[3:11])
            self.read.append((time.monotonic(), number))
            threading.Timer(0.02, queue.put, (b"REP%08d\n" % number,)).start()
        if buffered:
            self.pending[queue] = buffered


def test_an_instance_stopped_mid_traffic_loses_no_reply_it_owed(backend):
    numbers = iter(range(10**8))
    numbers_lock = threading.Lock()
    answered = set()
    unanswered = []  # sent, and the connection closed before a reply: never read
    done = threading.Event()
    failures = []

    def client(port):
        try:
            while not done.is_set():
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                    while not done.is_set():
                        with numbers_lock:
                            number = next(numbers)
                        sock.sendall(b"REQ%08d\n" % number)
                        try:
                            reply = recv_exactly(sock, 12)
                        except (EOFError, ConnectionResetError):
                            unanswered.append(number)
                            break  # the instance closed it: reconnect, as clients do
                        assert reply == b"REP%08d\n" % number
                        answered.add(number)
        except BaseException as exc:
            failures.append(exc)

    first, second = NumberedReplies(), NumberedReplies()
    with TCPServer("localhost", 0, first, proxy_protocol=True, backend=backend).start() as s1, \
            TCPServer("localhost", 0, second, proxy_protocol=True,
                      backend=backend).start() as s2, \
            HAProxy([("s1", s1.port, "send-proxy-v2"), ("s2", s2.port, "send-proxy-v2")]) \
            as haproxy:
        clients = [threading.Thread(target=client, args=(haproxy.port,)) for _ in range(6)]
        for thread in clients:
            thread.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while len(first.read) < 50 and time.monotonic() < deadline and not failures:
                time.sleep(0.01)
            stop_began = time.monotonic()
            assert s1.stop(timeout=TIMEOUT)  # graceful: what it read, it answers
            haproxy.wait_for_status({"s1": "DOWN", "s2": "UP"})
            after = len(answered)
            while len(answered) < after + 50 and time.monotonic() < deadline and not failures:
                time.sleep(0.01)
        finally:
            done.set()
            for thread in clients:
                thread.join(TIMEOUT)
    assert not failures, failures
    read_by_first = {number for _, number in first.read}
    assert len(read_by_first) >= 50
    # Every request the stopping instance read got its reply to the client.
    assert read_by_first <= answered, sorted(read_by_first - answered)[:10]
    assert not read_by_first & set(unanswered)
    # Traffic went on through the other instance.
    assert any(when > stop_began for when, _ in second.read)
