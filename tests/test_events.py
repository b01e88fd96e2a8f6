"""Connection events: on_connect, on_disconnect and queue.close_reason, over real sockets
on every backend; per-connection state on the queue, and when it is let go of."""
import gc
import itertools
import logging
import queue as queue_module
import signal
import socket
import threading
import time
import weakref

import pytest

import simpletcp
from simpletcp import CloseReason
from simpletcp.tcpserver import ConnectionQueue, TCPServer
from support import (HandOff, TIMEOUT, child_server, connect, echo, proxy_v1, read_line,
                     recv_exactly, recv_until_eof, refused, reset, reset_at_once, wait_for)

pytestmark = pytest.mark.timeout(60)


class Events:
    """on_connect, read_callback and on_disconnect that record what they see, in order:
    (event, connection number, detail); the server's thread writes, the test reads.

    Each connection's number is state kept on its queue. Not the queue itself: a
    record holding queues would hold them as a worker does, and stop() would wait
    for them (README, "Per-connection state")."""

    def __init__(self, banner=b"", reply=True):
        self.seen = []
        self.banner = banner
        self.reply = reply
        self.numbers = itertools.count()

    def on_connect(self, queue):
        queue.number = next(self.numbers)
        self.seen.append(("connect", queue.number, queue.close_reason))
        if self.banner:
            queue.put(self.banner)

    def read(self, queue, data):
        self.seen.append(("read", queue.number, data))
        if data == b"quit":
            queue.shutdown()
        elif data == b"raise":
            raise RuntimeError("the callback failed on purpose")
        elif self.reply:
            queue.put(data)

    def on_disconnect(self, queue):
        self.seen.append(("disconnect", queue.number, queue.close_reason))

    def serve(self, serve, **keywords):
        return serve(self.read, on_connect=self.on_connect, on_disconnect=self.on_disconnect,
                     **keywords)

    def of(self, kind):
        return [entry for entry in list(self.seen) if entry[0] == kind]

    def reasons(self):
        return [reason for _, _, reason in self.of("disconnect")]

    def wait_for_disconnects(self, count):
        wait_for(lambda: len(self.of("disconnect")) >= count)
        return self.reasons()


def close_at_eof(clients):
    """Each client reads until the server's EOF, then closes, as a well-behaved one does."""
    for client in clients:
        with client:
            recv_until_eof(client)


def test_the_server_speaks_first(serve):
    events = Events(banner=b"220 simpletcp ready\r\n")
    server = events.serve(serve)
    with connect(server) as client:
        assert recv_exactly(client, 21) == b"220 simpletcp ready\r\n"  # before a byte is sent
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"


def test_a_banner_returned_by_on_connect_is_sent_first(serve, caplog):
    # As a read callback's returned bytes are its reply, on_connect's are its banner.
    server = serve(echo, on_connect=lambda queue: b"* welcome\n")
    with connect(server) as client:
        assert recv_exactly(client, 10) == b"* welcome\n"
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
    # A str cannot be sent: that connection closes, and the log names on_connect.
    server = serve(echo, on_connect=lambda queue: "* welcome\n")
    with connect(server) as client:
        assert client.recv(100) == b""
    assert "on_connect returned a str" in caplog.text


def test_a_banner_comes_before_the_reply_to_a_request_sent_at_once(serve):
    # The request is in the kernel before the server accepts: on_connect still runs
    # first, and its banner goes out before the reply.
    events = Events(banner=b"hello\n")
    server = events.serve(serve)
    with connect(server) as client:
        client.sendall(b"request")
        assert recv_exactly(client, 13) == b"hello\nrequest"


@pytest.mark.parametrize("ending, reason", [
    ("close", CloseReason.PEER_CLOSED),
    ("half-close", CloseReason.PEER_CLOSED),
    ("reset", CloseReason.PEER_RESET),
    ("quit", CloseReason.QUEUE_SHUTDOWN),
    ("raise", CloseReason.CALLBACK_FAILED),
])
def test_on_disconnect_says_why_the_connection_ended(serve, ending, reason, caplog):
    caplog.set_level(logging.CRITICAL, logger="simpletcp")  # the raise is logged
    events = Events()
    server = events.serve(serve)
    client = connect(server)
    client.sendall(b"hello")
    assert recv_exactly(client, 5) == b"hello"
    if ending == "close":
        client.close()
    elif ending == "half-close":
        client.shutdown(socket.SHUT_WR)
    elif ending == "reset":
        reset(client)
    else:
        client.sendall(ending.encode())
        assert recv_until_eof(client) == b""  # the server closed its side
        client.close()
    assert events.wait_for_disconnects(1) == [reason]
    client.close()


def test_the_idle_timeout_is_a_reason(serve):
    events = Events()
    server = events.serve(serve, idle_timeout=0.2)
    with connect(server) as client:
        assert recv_until_eof(client) == b""  # closed by the server, nothing sent
    assert events.wait_for_disconnects(1) == [CloseReason.IDLE_TIMEOUT]


def test_close_reason_is_none_while_open_and_set_once_closing(serve):
    seen = []

    def read(queue, data):
        seen.append(queue.close_reason)
        queue.shutdown()
        seen.append(queue.close_reason)

    events = Events()
    server = serve(read, on_connect=events.on_connect, on_disconnect=events.on_disconnect)
    with connect(server) as client:
        client.sendall(b"x")
        assert recv_until_eof(client) == b""
    assert events.wait_for_disconnects(1) == [CloseReason.QUEUE_SHUTDOWN]
    assert seen == [None, CloseReason.QUEUE_SHUTDOWN]
    assert events.of("connect")[0][2] is None


def test_stop_calls_on_disconnect_for_every_open_connection_before_it_returns(serve):
    events = Events()
    server = events.serve(serve)
    clients = [connect(server) for _ in range(5)]
    wait_for(lambda: len(events.of("connect")) == 5)
    closer = threading.Thread(target=close_at_eof, args=(clients,))
    closer.start()  # the clients read the server's EOF and close too (lingering close)
    assert server.stop(timeout=TIMEOUT)
    assert events.reasons() == [CloseReason.SERVER_STOPPING] * 5  # already, not eventually
    closer.join(TIMEOUT)


def test_connections_still_open_when_the_grace_period_ends_are_announced(serve):
    # A worker holds the queue (the connection waits for its reply) past grace_period:
    # the loop closes it at the end, and on_disconnect still runs before stop() returns.
    events = Events()
    hand_off = HandOff()
    server = serve(hand_off, on_connect=events.on_connect, on_disconnect=events.on_disconnect,
                   grace_period=0.3)
    with connect(server) as client:
        client.sendall(b"work")
        queue = hand_off.first_queue()
        assert server.stop(timeout=TIMEOUT)
        assert events.reasons() == [CloseReason.GRACE_EXPIRED]
        assert queue.close_reason is CloseReason.GRACE_EXPIRED
        assert recv_until_eof(client) == b""


def test_each_connection_gets_one_of_each_event_in_order(serve, caplog):
    # on_connect before its first read callback, on_disconnect after its last one,
    # exactly once each, whatever ends the connection.
    caplog.set_level(logging.CRITICAL, logger="simpletcp")
    events = Events()
    server = events.serve(serve)
    endings = ["close", "reset", "quit", "raise", "half-close"] * 8
    for number, ending in enumerate(endings):
        client = connect(server)
        for request in range(3):
            message = b"%d.%d " % (number, request)
            client.sendall(message)
            assert recv_exactly(client, len(message)) == message
        if ending == "reset":
            reset(client)
            continue
        if ending == "close":
            client.close()
            continue
        if ending == "half-close":
            client.shutdown(socket.SHUT_WR)
        elif ending in ("quit", "raise"):
            client.sendall(ending.encode())
        recv_until_eof(client)
        client.close()
    events.wait_for_disconnects(len(endings))
    by_queue = {}
    for kind, queue, _ in list(events.seen):
        by_queue.setdefault(queue, []).append(kind)
    assert len(by_queue) == len(endings)  # one queue per connection
    for kinds in by_queue.values():
        assert kinds[0] == "connect" and kinds[-1] == "disconnect"
        assert kinds.count("connect") == kinds.count("disconnect") == 1
        assert kinds[1:-1] == ["read"] * (len(kinds) - 2) and len(kinds) >= 5
    assert server.connection_count == 0
    assert server.connections() == []


def test_the_ip_form_works_for_both_events(serve):
    seen = []
    server = serve(echo, on_connect=lambda ip, queue: seen.append(("connect", ip)),
                   on_disconnect=lambda ip, queue: seen.append(("disconnect", ip)))
    with connect(server) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    wait_for(lambda: len(seen) == 2)
    assert seen == [("connect", "127.0.0.1"), ("disconnect", "127.0.0.1")]


def test_behind_a_proxy_on_connect_comes_after_the_header_with_the_clients_ip(serve):
    seen = []

    def read(ip, queue, data):
        seen.append(("read", ip, data))
        queue.put(data)

    server = serve(read, proxy_protocol=True,
                   on_connect=lambda ip, queue: (seen.append(("connect", ip, queue.peer)),
                                                 queue.put(b"hi ")),
                   on_disconnect=lambda ip, queue: seen.append(("disconnect", ip)))
    with connect(server) as client:
        # The header and the first request in one segment.
        client.sendall(proxy_v1(("203.0.113.7", 40000)) + b"first")
        assert recv_exactly(client, 8) == b"hi first"
    wait_for(lambda: len(seen) == 3)
    assert seen == [("connect", "203.0.113.7", ("203.0.113.7", 40000)),
                    ("read", "203.0.113.7", b"first"), ("disconnect", "203.0.113.7")]


def test_connections_that_never_open_get_no_events(serve, caplog):
    # A bad PROXY header, and a connection refused at connection_limit: no event for
    # either (nothing of them reaches the application).
    caplog.set_level(logging.CRITICAL, logger="simpletcp")
    events = Events()
    server = events.serve(serve, proxy_protocol=True, connection_limit=1)
    assert reset_at_once(server.port, b"GET / HTTP/1.0\r\n\r\n")  # not a PROXY header
    wait_for(lambda: server.connection_count == 0)
    with connect(server) as first:
        first.sendall(proxy_v1(("192.0.2.1", 1234)) + b"x")
        assert recv_exactly(first, 1) == b"x"
        assert reset_at_once(server.port)  # over the limit
        assert len(events.of("connect")) == 1
    assert events.wait_for_disconnects(1) == [CloseReason.PEER_CLOSED]
    assert len(events.of("connect")) == 1


def test_on_connect_that_raises_closes_its_connection_and_on_disconnect_follows(serve, caplog):
    caplog.set_level(logging.ERROR, logger="simpletcp")
    seen = []

    def on_connect(queue):
        queue.put(b"sent before the failure")
        raise ValueError("no room for you")

    server = serve(lambda queue, data: seen.append(("read", data)), on_connect=on_connect,
                   on_disconnect=lambda queue: seen.append(("disconnect", queue.close_reason)))
    with connect(server) as client:
        client.sendall(b"never read")
        assert recv_until_eof(client) == b"sent before the failure"
    wait_for(lambda: len(seen) == 1)
    assert seen == [("disconnect", CloseReason.CALLBACK_FAILED)]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 1 and messages[0].startswith("on_connect raised ValueError")
    assert caplog.records[-1].exc_info[0] is ValueError  # with its traceback
    with connect(server) as other:  # and the server goes on
        assert recv_until_eof(other) == b"sent before the failure"


def test_on_disconnect_that_raises_is_logged_and_the_server_goes_on(serve, caplog):
    caplog.set_level(logging.ERROR, logger="simpletcp")
    calls = []

    def on_disconnect(queue):
        calls.append(queue)
        raise KeyError("cleanup failed")

    server = serve(echo, on_disconnect=on_disconnect)
    for _ in range(3):
        with connect(server) as client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        wait_for(lambda: server.connection_count == 0)
    wait_for(lambda: len(calls) == 3)
    # Logged after on_disconnect raised, in the loop's thread: a moment after the call.
    wait_for(lambda: len([r for r in caplog.records if r.levelno == logging.ERROR]) >= 3)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 3
    assert all(m.startswith("on_disconnect raised KeyError for connection 127.0.0.1:")
               for m in messages)


def test_events_may_act_on_other_connections_and_stop_the_server(serve):
    # A chat's join and leave: on_connect and on_disconnect broadcast to the others;
    # the last one to leave stops the server, from inside on_disconnect.
    server = None

    def on_connect(queue):
        server.broadcast(b"+%d\n" % queue.peer[1], exclude=queue)

    def on_disconnect(queue):
        server.broadcast(b"-%d\n" % queue.peer[1])
        if queue.peer[1] == last_port[0]:
            server.stop()

    last_port = [None]
    server = serve(echo, on_connect=on_connect, on_disconnect=on_disconnect)
    first = connect(server)
    second = connect(server)
    second_port = second.getsockname()[1]
    assert first.recv(100) == b"+%d\n" % second_port
    last_port[0] = first.getsockname()[1]
    second.close()
    assert first.recv(100) == b"-%d\n" % second_port
    first.close()
    wait_for(lambda: not server.running)


def test_state_on_the_queue_lives_as_long_as_the_connection(serve):
    class Session:
        pass

    sessions, queues = [], []

    def on_connect(queue):
        queue.session = Session()
        queue.buffer = bytearray()
        sessions.append(weakref.ref(queue.session))
        queues.append(weakref.ref(queue))

    def read(queue, data):
        queue.buffer += data
        if queue.buffer.endswith(b"\n"):
            queue.put(bytes(queue.buffer))
            queue.buffer.clear()

    still_there = []
    server = serve(read, on_connect=on_connect,
                   on_disconnect=lambda queue: still_there.append(
                       isinstance(queue.session, Session)))
    with connect(server) as client:
        for piece in (b"hel", b"lo", b"\n"):
            client.sendall(piece)
        assert recv_exactly(client, 6) == b"hello\n"
        assert sessions[0]() is not None
    wait_for(lambda: still_there == [True])  # on_disconnect still sees it ...
    gc.disable()  # ... and then it is freed by reference counting alone, not a GC pass
    try:
        wait_for(lambda: queues[0]() is None and sessions[0]() is None)
    finally:
        gc.enable()


def assert_stop_is_prompt_with_idle_clients(server):
    """20 clients, each answered once, then idle: stop() (the grace period far longer
    than TIMEOUT) finishes within TIMEOUT, so nothing made it wait for a worker."""
    clients = [connect(server) for _ in range(20)]
    for client in clients:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    closer = threading.Thread(target=close_at_eof, args=(clients,))
    closer.start()
    assert server.stop(timeout=TIMEOUT)
    closer.join(TIMEOUT)


def test_state_on_queues_does_not_make_stop_wait(serve):
    # Unlike queues kept in a registry of the application's (held: stop() waits for
    # them as for workers about to reply, up to grace_period), state kept on the queue
    # holds nothing: idle clients let stop() finish at once (well within grace_period).
    def on_connect(queue):
        queue.name = "guest"
        queue.history = [b"a line"] * 10

    assert_stop_is_prompt_with_idle_clients(serve(echo, on_connect=on_connect,
                                                  grace_period=600))


class Session:
    """State that refers back to its connection, as one naturally writes it."""

    def __init__(self, queue, app):
        self.queue = queue
        self.app = app
        self.say = lambda data: queue.put(data)

        def reply(data, to=queue):
            to.put(data)
        self.reply = reply


@pytest.mark.parametrize("state", ["session", "bound method", "closure", "cycle of lists"])
def test_state_that_refers_back_to_its_queue_does_not_make_stop_wait(serve, state):
    # The queue's own state holding the queue raises its reference count as a worker
    # would; only references from outside that state make stop() wait.
    app = {"name": "shared by every connection"}

    def on_connect(queue):
        if state == "session":
            queue.session = Session(queue, app)
        elif state == "bound method":
            queue.reply = queue.put
        elif state == "closure":
            queue.shout = lambda data: queue.put(data.upper())
        else:
            first = [queue]
            queue.ring = [first, [first, queue]]
            first.append(queue.ring)

    assert_stop_is_prompt_with_idle_clients(serve(echo, on_connect=on_connect,
                                                  grace_period=600))


# What a worker is handed, from the connection's queue, and how it replies with it.
HOLDERS = {
    "the session": (lambda queue: queue.session, lambda held: held.say),
    "the queue": (lambda queue: queue, lambda held: held.put),
    # Parts of the state that a worker can hold on their own: the tuple of a
    # function's closure cells or of its defaults, and the session's __dict__ (which
    # Python 3.13 shares with the session's inline attributes).
    "the closure of say": (lambda queue: queue.session.say.__closure__,
                           lambda held: held[0].cell_contents.put),
    "the defaults of reply": (lambda queue: queue.session.reply.__defaults__,
                              lambda held: held[0].put),
    "vars(session)": (lambda queue: vars(queue.session), lambda held: held["queue"].put),
}


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_a_worker_holding_state_that_reaches_the_queue_is_waited_for(serve, holder):
    # The other side: a worker thread that holds the session (or the queue, or a part
    # of the session that reaches it) may reply after stop() began, and that reply is
    # sent before the connection closes.
    app = {}
    handed = queue_module.SimpleQueue()
    hand, reply_with = HOLDERS[holder]

    def on_connect(queue):
        queue.session = Session(queue, app)

    def read(queue, data):
        handed.put(hand(queue))

    server = serve(read, on_connect=on_connect, grace_period=30)
    with connect(server) as client:
        client.sendall(b"work")
        held = handed.get(timeout=TIMEOUT)
        stopping = threading.Thread(target=server.stop, kwargs={"timeout": TIMEOUT})
        stopping.start()
        time.sleep(0.5)  # stop() has begun, and waits for the worker
        reply_with(held)(b"late reply")
        del held
        assert recv_exactly(client, 10) == b"late reply"
        stopping.join(TIMEOUT)
        assert not stopping.is_alive()


def test_close_reason_is_importable_and_mirrors_the_loop():
    assert simpletcp.CloseReason is CloseReason
    from simpletcp.tcpserver import CloseReason as from_tcpserver
    assert from_tcpserver is CloseReason
    assert CloseReason.PEER_CLOSED == 1  # an IntEnum, in the C enum's order
    assert [reason.name for reason in CloseReason] == [
        "PEER_CLOSED", "QUEUE_SHUTDOWN", "CALLBACK_FAILED", "SERVER_STOPPING",
        "IDLE_TIMEOUT", "REPLY_CUT", "PEER_RESET", "IO_ERROR", "HUNG_UP", "LOOP_ERROR",
        "GRACE_EXPIRED", "SERVER_ABORTED", "PROXY_HEADER_REJECTED",
        "FRAMING_ERROR", "TLS_ERROR"]
    import pickle
    assert pickle.loads(pickle.dumps(CloseReason.IDLE_TIMEOUT)) is CloseReason.IDLE_TIMEOUT


def bad_arity(a, b, c):
    pass


async def async_event(queue):
    pass


def generator_event(queue):
    yield


@pytest.mark.parametrize("argument", ["on_connect", "on_disconnect"])
@pytest.mark.parametrize("value, error", [
    ("not callable", "must be callable as {0}\\(queue\\) or {0}\\(ip, queue\\), got str"),
    (bad_arity, "{0} cannot be called as {0}\\(queue\\) or {0}\\(ip, queue\\)"),
    (async_event, "{0} is an async function"),
    (generator_event, "{0} is a generator function"),
    (lambda queue, *, kind: None, "{0} has a required keyword-only parameter 'kind'"),
])
def test_bad_events_are_refused_by_the_constructor_naming_the_argument(argument, value, error):
    with pytest.raises(TypeError, match=error.format(argument)):
        TCPServer("localhost", 0, echo, **{argument: value})


def test_a_returned_coroutine_from_on_connect_is_closed_and_its_connection_closed(serve, caplog):
    caplog.set_level(logging.ERROR, logger="simpletcp")
    ran = []

    async def greet(queue):
        ran.append(queue)

    seen = []
    server = serve(echo, on_connect=lambda queue: greet(queue),
                   on_disconnect=lambda queue: seen.append(queue.close_reason))
    with connect(server) as client:
        assert recv_until_eof(client) == b""
    wait_for(lambda: seen == [CloseReason.CALLBACK_FAILED])
    assert ran == []
    assert "on_connect returned a coroutine" in caplog.text


def test_the_queue_is_the_same_object_in_every_event_and_callback(serve):
    seen = []

    def read(queue, data):
        seen.append(queue)
        queue.put(data)

    server = serve(read, on_connect=seen.append, on_disconnect=seen.append)
    with connect(server) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        (queue,) = server.connections()
    wait_for(lambda: len(seen) == 3)
    assert seen == [queue] * 3 and isinstance(queue, ConnectionQueue)


# A server with two workers, in a child process (workers are forked): each worker calls
# its own on_connect, and a callback's server.connections() / server.broadcast() reach
# that worker's connections; in the supervisor they raise RuntimeError.
WORKERS_APP = """
import os, sys
from simpletcp.tcpserver import TCPServer

def on_connect(queue):
    queue.put(b"%d\\n" % os.getpid())

def read(queue, data):
    if data == b"who":
        queue.put(b"%d %d\\n" % (os.getpid(), len(server.connections())))
    elif data.startswith(b"say "):
        server.broadcast(data[4:])

server = TCPServer("localhost", 0, read, workers=2, backend=sys.argv[1],
                   on_connect=on_connect)
print(server.port, flush=True)
for method in (server.connections, lambda: server.broadcast(b"x")):
    try:
        method()
    except RuntimeError as error:
        print(error, flush=True)
server.run()
"""


def test_with_workers_each_worker_reaches_its_own_connections(backend):
    with child_server(WORKERS_APP, backend) as (child, port):
        assert "connections() is per worker process" in child.stdout.readline()
        assert "broadcast() is per worker process" in child.stdout.readline()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                   for _ in range(8)]
        try:
            pids = [int(read_line(client)) for client in clients]  # on_connect's banner
            for client, pid in zip(clients, pids):
                client.sendall(b"who")
                assert read_line(client) == b"%d %d\n" % (pid, pids.count(pid))
            clients[0].sendall(b"say hi\n")
            for client, pid in zip(clients, pids):
                if pid == pids[0]:
                    assert read_line(client) == b"hi\n"
                else:  # another worker's: nothing came before the answer to "who"
                    client.sendall(b"who")
                    assert read_line(client) == b"%d %d\n" % (pid, pids.count(pid))
        finally:
            for client in clients:
                client.close()



# A server whose only connection's queue is held (a worker that never replies), so that
# a stop waits for it; a second Ctrl-C then ends the loop at once.
ABORTED_APP = """
import sys
from simpletcp.tcpserver import TCPServer

held = []

def read(queue, data):
    held.append(queue)
    print("held", flush=True)

def on_disconnect(queue):
    print("disconnect", queue.peer[1], queue.close_reason.name, flush=True)

server = TCPServer("localhost", 0, read, backend=sys.argv[1], grace_period=60,
                   on_disconnect=on_disconnect)
print(server.port, flush=True)
server.run()
print("run returned", flush=True)
"""


def test_connections_open_when_the_loop_is_aborted_are_announced_before_run_returns(backend):
    with child_server(ABORTED_APP, backend) as (child, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"work")
            client_port = client.getsockname()[1]
            assert child.stdout.readline() == "held\n"
            child.send_signal(signal.SIGINT)  # a graceful stop: it waits for the worker
            wait_for(lambda: refused(port))
            child.send_signal(signal.SIGINT)  # the second: close everything now
            lines = child.stdout.read().splitlines()  # until the child exits
            assert child.wait(TIMEOUT) == 0
        # (Probes of refused() let in before the stop began have their own lines.)
        assert f"disconnect {client_port} SERVER_ABORTED" in lines
        assert lines[-1] == "run returned"
