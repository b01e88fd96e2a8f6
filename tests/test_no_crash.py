"""Nothing reachable from Python crashes the interpreter.

Each public class, and each class the compiled module exposes as ``simpletcp._loop.X``,
is abused in a child process: wrong arguments, ``__init__`` bypassed with ``__new__``,
its slots emptied or replaced, every attribute poked, use after close and after stop.
Every attempt must end in a Python exception (or quietly do nothing harmful); a child
killed by a signal (a segfault) fails the test and names the last attempt.
"""
import inspect
import subprocess
import sys
import textwrap

import pytest

import simpletcp._loop as loop_module

pytestmark = pytest.mark.timeout(120)

# The child's tools. attempt() prints its label before trying, so a crash leaves the
# culprit as the last line; an outcome other than the expected one exits 1.
HARNESS = '''
import copy, gc, pickle, socket, sys, threading, time, weakref
import simpletcp._loop as m
from simpletcp.clientsocket import ClientSocket
from simpletcp.tcpserver import ConnectionQueue, TCPServer

mismatches = []

def attempt(label, action, expected):
    print("trying", label, flush=True)
    try:
        action()
        outcome = "ok"
    except Exception as exc:
        outcome = type(exc).__name__
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if outcome not in allowed:
        mismatches.append(f"{label}: {outcome}, expected {expected}")

ANY_EXCEPTION_OR_OK = "any"

def poke_everything(label, obj, skip=()):
    """Get every attribute of obj and call each callable with no, one and junk args."""
    for name in dir(obj):
        if name in skip:
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        if callable(value):
            for args in ((), (None,), (b"x",), (-1,), (None, None)):
                print("trying", f"{label}.{name}{args}", flush=True)
                try:
                    value(*args)
                except Exception:
                    pass
    for operation in (repr, str, hash, copy.copy, pickle.dumps, weakref.ref):
        print("trying", f"{operation.__name__}({label})", flush=True)
        try:
            operation(obj)
        except Exception:
            pass

def echo_server_with_a_queue(**keywords):
    """A started server and the queue of one connection to it (its client still open)."""
    queues = []
    arrived = threading.Event()
    def keep(queue, data):
        queues.append(queue)
        queue.put(data)
        arrived.set()
    server = TCPServer("localhost", 0, keep, **keywords).start()
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client.sendall(b"hello")
    assert arrived.wait(10)
    return server, client, queues[0]

def finish():
    gc.collect()
    if mismatches:
        print("MISMATCHES", *mismatches, sep="\\n", flush=True)
        sys.exit(1)
    print("ALL AS EXPECTED", flush=True)
'''

# For every internal class: it cannot be made from Python, and one made anyway with
# __new__ has nothing a caller could use to reach its (unset) insides.
INTERNAL = '''
cls = m.{name}
attempt("{name}()", lambda: cls(), "TypeError")
attempt("{name}(None)", lambda: cls(None), "TypeError")
attempt("{name}(1, x=2)", lambda: cls(1, x=2), "TypeError")
# Final classes refuse to be subclassed; the others' subclasses inherit the refusal.
attempt("a subclass of {name}", lambda: type("Subclass", (cls,), {{}})(), "TypeError")
bypassed = cls.__new__(cls)
attempt("{name}.__new__ then __init__", lambda: bypassed.__init__(), "TypeError")
poke_everything("{name}.__new__({name})", bypassed)
attempt("ConnectionQueue(a {name})", lambda: ConnectionQueue(bypassed), "TypeError")
del bypassed
finish()
'''

PROGRAMS = {
    "ConnectionQueue": '''
# The issue's reproducer.
attempt("ConnectionQueue(None).put", lambda: ConnectionQueue(None).put(b"x"), "TypeError")
for junk in (None, 0, "fd", object(), m.Connection.__new__(m.Connection)):
    attempt(f"ConnectionQueue({junk!r})", lambda: ConnectionQueue(junk), "TypeError")

unbound = ConnectionQueue.__new__(ConnectionQueue)
for method in ("put", "put_nowait"):
    attempt(f"unbound.{method}", lambda: getattr(unbound, method)(b"x"), "TypeError")
for method in ("shutdown", "qsize", "empty", "full"):
    attempt(f"unbound.{method}", lambda: getattr(unbound, method)(), "TypeError")
for name in ("pending_bytes", "peer", "close_reason"):
    attempt(f"unbound.{name}", lambda: getattr(unbound, name), "TypeError")
attempt("unbound.get", lambda: unbound.get(), "NotImplementedError")
poke_everything("unbound", unbound)

server, client, live = echo_server_with_a_queue()
attempt("copy a live queue", lambda: copy.copy(live), "TypeError")
attempt("deepcopy a live queue", lambda: copy.deepcopy(live), "TypeError")
real_connection = live._connection
for replacement in (None, 42, live, m.Connection.__new__(m.Connection), real_connection):
    hijacked = ConnectionQueue.__new__(ConnectionQueue)
    object.__setattr__(hijacked, "_connection", replacement)
    expected = "ok" if replacement is real_connection else "TypeError"
    attempt(f"queue bound to {replacement!r}: put", lambda: hijacked.put(b"x"), expected)
    attempt(f"queue bound to {replacement!r}: peer", lambda: hijacked.peer, expected)
del hijacked._connection
attempt("queue with its slot deleted: put", lambda: hijacked.put(b"x"), "TypeError")
attempt("broadcast excluding it", lambda: server.broadcast(b"x", exclude=hijacked), "TypeError")
for junk in ("text", None, 42, object(), [b"x"]):
    attempt(f"broadcast({junk!r})", lambda: server.broadcast(junk), "TypeError")
    attempt(f"broadcast(exclude={junk!r})", lambda: server.broadcast(b"x", exclude=junk),
            "ok" if junk is None else "TypeError")
attempt("re-__init__ a live queue with None", lambda: live.__init__(None), "TypeError")
attempt("put(str)", lambda: live.put("text"), "TypeError")
attempt("put(None)", lambda: live.put(None), "TypeError")
released = memoryview(b"gone")
released.release()
attempt("put(released memoryview)", lambda: live.put(released), "ValueError")
attempt("put(timeout=-1)", lambda: live.put(b"x", timeout=-1), "ValueError")
attempt("put(timeout='soon')", lambda: live.put(b"x", timeout="soon"), "TypeError")
attempt("pickle a live queue", lambda: pickle.dumps(live), "TypeError")

# Use after close: the client goes away, then the server stops.
client.close()
time.sleep(0.05)
attempt("put after the peer closed", lambda: live.put(b"late"), ("ok", "ShutDown"))
assert server.stop(timeout=10)
for method in ("put", "put_nowait"):
    attempt(f"{method} after stop", lambda: getattr(live, method)(b"late"), ("ok", "ShutDown"))
attempt("shutdown after stop", lambda: live.shutdown(immediate=True), "ok")
attempt("put after shutdown", lambda: live.put(b"x"), "ShutDown")
attempt("peer after stop", lambda: live.peer, "ok")
poke_everything("queue after stop", live)
del server
gc.collect()
attempt("put once the server is gone", lambda: live.put(b"x"), "ShutDown")
finish()
''',
    "Loop": '''
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
# backend, grace_period, high_water, low_water, connection_limit, idle_timeout: TCPServer
# owns their defaults and checks; the internal Loop takes them all.
OPTIONS = ("auto", 1.0, 1 << 20, 1 << 18, 0, 0.0, None, 5.0)
attempt("Loop()", lambda: m.Loop(), "TypeError")
attempt("Loop(None, ...)", lambda: m.Loop(None, echo, False, 10, *OPTIONS), "TypeError")
attempt("Loop(recv_bytes=0)", lambda: m.Loop(listener, echo, False, 0, *OPTIONS), "ValueError")
attempt("Loop(recv_bytes=2**63)", lambda: m.Loop(listener, echo, False, 2**63, *OPTIONS),
        "OverflowError")
attempt("Loop(backend=1)", lambda: m.Loop(listener, echo, False, 10, 1, *OPTIONS[1:]),
        "TypeError")
attempt("Loop(backend='kqueue')",
        lambda: m.Loop(listener, echo, False, 10, "kqueue", *OPTIONS[1:]), "ValueError")
attempt("Loop(low_water > high_water)",
        lambda: m.Loop(listener, echo, False, 10, "auto", 1.0, 10, 20, 0, 0.0, None, 5.0), "ok")

bare = m.Loop.__new__(m.Loop)
attempt("bare loop: run", lambda: bare.run(), "RuntimeError")
attempt("bare loop: backend", lambda: bare.backend, "RuntimeError")
attempt("bare loop: request_stop", lambda: bare.request_stop(), "ok")
attempt("bare loop: close", lambda: bare.close(), "ok")
poke_everything("bare loop", bare)

failed = m.Loop.__new__(m.Loop)
attempt("failed __init__", lambda: failed.__init__(listener, echo, False, -5, *OPTIONS),
        "ValueError")
attempt("run after a failed __init__", lambda: failed.run(), "RuntimeError")
attempt("backend after a failed __init__", lambda: failed.backend, "RuntimeError")

closed = socket.socket()
closed.close()
attempt("run on a closed listener", lambda: m.Loop(closed, echo, False, 10, *OPTIONS).run(),
        "OSError")

loop = m.Loop(listener, echo, False, 10, *OPTIONS)
attempt("__init__ again", lambda: loop.__init__(listener, echo, False, 10, *OPTIONS),
        "RuntimeError")
thread = threading.Thread(target=loop.run)
thread.start()
while not loop.running:
    time.sleep(0.01)
attempt("run while running", lambda: loop.run(), "RuntimeError")
loop.request_stop()
thread.join(10)
attempt("run after stop", lambda: loop.run(), "RuntimeError")
attempt("backend after stop", lambda: loop.backend, "ok")
poke_everything("loop after stop", loop)
finish()
''',
    "TCPServer": '''
attempt("TCPServer()", lambda: TCPServer(), "TypeError")
attempt("TCPServer(None, None, None)", lambda: TCPServer(None, None, None), "TypeError")
attempt("async callback", lambda: TCPServer("localhost", 0, _async_echo), "TypeError")
bare = TCPServer.__new__(TCPServer)
for name in ("run", "start", "stop", "close"):
    attempt(f"bare server: {name}", lambda: getattr(bare, name)(), "AttributeError")
poke_everything("bare server", bare, skip=("run", "serve_forever"))

server = TCPServer("localhost", 0, echo).start()
attempt("start twice", lambda: server.start(), "RuntimeError")
attempt("stop", lambda: server.stop(timeout=10), "ok")
attempt("stop again", lambda: server.stop(timeout=10), "ok")
attempt("run after stop", lambda: server.run(), "RuntimeError")
attempt("the loop's run after stop", lambda: server._loop.run(), "RuntimeError")
poke_everything("server after stop", server)

never_run = TCPServer("localhost", 0, echo)
never_run.stop()
attempt("start after a stop that came first", lambda: never_run.start(), "ok")
attempt("run after a stop that came first", lambda: never_run.run(), "ok")
finish()
''',
    "ClientSocket": '''
attempt("ClientSocket()", lambda: ClientSocket(), "TypeError")
attempt("ClientSocket(None, None)", lambda: ClientSocket(None, None), "TypeError")
bare = ClientSocket.__new__(ClientSocket)
poke_everything("bare client", bare)
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
client = ClientSocket("localhost", port, timeout=5)
attempt("send to nobody", lambda: client.send(b"x"), "ConnectionRefusedError")
attempt("close twice", lambda: (client.close(), client.close()), "ok")
poke_everything("closed client", client)
finish()
''',
}
PROGRAMS["proxy header parser in the loop"] = '''
# The loop calls the parser it was given with each connection's first bytes: a parser
# that returns or raises anything must cost that connection (or stop the loop), never
# the interpreter.
class Junk:
    def __init__(self, length, source, family="TCP4"):
        self.length, self.source, self.family = length, source, family

def raising(kind):
    def parser(data):
        raise kind("parser")
    return parser

parsers = {
    "returns 42": lambda data: 42,
    "negative length": lambda data: Junk(-5, None),
    "huge length": lambda data: Junk(10**30, None),
    "length past the data": lambda data: Junk(len(data) + 100, None),
    "port too large": lambda data: Junk(len(data), ("1.2.3.4", 10**9)),
    "host not a str": lambda data: Junk(len(data), (None, 1)),
    "source not a tuple": lambda data: Junk(len(data), 7),
    "family not a str": lambda data: Junk(0, ("h", 1), family=None),
    "raises ValueError": raising(ValueError),
    "raises TypeError": raising(TypeError),
    "raises MemoryError": raising(MemoryError),
    "raises SystemExit": raising(SystemExit),
    "not callable": 1,  # TCPServer owns the checks; the loop must survive what it is given
}
echo = lambda ip, queue, data: queue.put(data)
for label, parser in parsers.items():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    loop = m.Loop(listener, echo, True, 64, "auto", 0.5, 1 << 20, 1 << 18, 0, 0.0, parser, 1.0)
    failures = []
    def serve():
        try:
            loop.run()
        except BaseException as exc:
            failures.append(exc)
    thread = threading.Thread(target=serve)
    thread.start()
    while not loop.running and thread.is_alive():
        time.sleep(0.01)
    print("trying", label, flush=True)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\\r\\nhello")
            client.recv(100)
    except OSError:
        pass
    loop.request_stop()
    thread.join(10)
    assert not thread.is_alive(), label
finish()
'''
PROGRAMS["parse_header"] = '''
from simpletcp.proxyprotocol import ProxyHeader, parse_header
for junk in (None, 1, -1, "PROXY UNKNOWN\\r\\n", object(), [1, 2], bytearray(b"PROXY "),
             memoryview(b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n!"), b"\\xff" * 100000):
    attempt(f"parse_header({junk!r:.40})", lambda: parse_header(junk),
            ("ok", "TypeError", "ProxyHeaderError"))
attempt("ProxyHeader()", lambda: ProxyHeader(), "TypeError")
poke_everything("a ProxyHeader", ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 15))
finish()
'''
PROGRAMS["Supervisor"] = '''
from simpletcp.supervisor import Supervisor
attempt("Supervisor()", lambda: Supervisor(), "TypeError")
bare = Supervisor.__new__(Supervisor)
# Not the methods that fork: a child of this harness would go on poking.
FORKING = ("run", "_start", "_become_worker")
poke_everything("bare supervisor", bare, skip=FORKING)
attempt("bare supervisor: run", lambda: bare.run(), "AttributeError")

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
def failing_worker():
    raise RuntimeError("this worker cannot serve")
supervisor = Supervisor(listener, 2, failing_worker, 0.5)
in_a_thread = []
thread = threading.Thread(target=lambda: in_a_thread.append(
    attempt("run from a thread", supervisor.run, "RuntimeError")))
thread.start()
thread.join(10)
# Workers that die at once are restarted with a back-off until stop(): run() returns.
threading.Timer(1.0, supervisor.stop).start()
attempt("run with failing workers, then stop", supervisor.run, "ok")
attempt("stop after run", supervisor.stop, "ok")
attempt("run again", supervisor.run, "RuntimeError")
poke_everything("finished supervisor", supervisor, skip=FORKING)
finish()
'''

# A Loop given a blocking listener (or a socket subclass whose fileno()/setblocking()
# lie) serves it without blocking in accept(): that wait held the GIL and froze every
# thread of the process (faulthandler ends a frozen child).
PROGRAMS["Loop with a blocking listener"] = '''
import faulthandler
faulthandler.dump_traceback_later(30, exit=True)
echo = lambda queue, data: queue.put(data)

class Lying(socket.socket):
    def fileno(self):
        return 0

    def setblocking(self, flag):
        pass

for listener in (socket.socket(), Lying()):
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    loop = m.Loop(listener, echo, False, 10, "auto", 1.0, 1 << 20, 1 << 18, 0, 0.0, None, 5.0)
    thread = threading.Thread(target=loop.run)
    thread.start()
    for _ in range(2):
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(10) == b"ping"
    loop.request_stop()
    thread.join(10)
    assert not thread.is_alive()
faulthandler.cancel_dump_traceback_later()
finish()
'''

# put() of a hostile bytes-like object: what the queue keeps is exact bytes, so freeing
# it never runs the caller's code (a __del__ that re-entered shutdown() freed the chunk
# array under the loop that was freeing it), and what is sent is the object's bytes.
PROGRAMS["put of hostile bytes"] = '''
class FreedUnderTheLoop(bytes):
    def __del__(self):
        self.queue.shutdown(immediate=True)

class BytesSaysOtherwise(bytes):
    def __bytes__(self):
        return FreedUnderTheLoop(b"from __bytes__")

replies = []
def callback(queue, data):
    FreedUnderTheLoop.queue = queue
    for _ in range(3):
        queue.put(BytesSaysOtherwise(b"sent"))
    if data == b"cut":
        queue.shutdown(immediate=True)

server = TCPServer("localhost", 0, callback).start()
for request in (b"reply", b"cut"):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(100):
            received += chunk
        replies.append(received)
assert replies == [b"sent" * 3, b""], replies
assert server.stop(timeout=10)
finish()
'''
# The loop reads a framer's settings when it is made (TCPServer checked them, but they
# can be changed behind its back), and calls a custom framer's frame() with each
# connection's input: whatever those settings become, and whatever frame() returns or
# raises, it costs a Loop() an exception or a connection its life, never the interpreter.
PROGRAMS["framers in the loop"] = '''
from simpletcp.framing import FixedSize, Framer, LengthPrefixed, Lines, NeedMore

def tampered(framer, **slots):
    for name, value in slots.items():
        object.__setattr__(framer, name, value)
    return framer

def listening():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener

OPTIONS = ("auto", 1.0, 1 << 20, 1 << 18, 0, 0.0, None, 5.0)
SETTINGS = {
    "an empty delimiter": tampered(Lines(), _delimiter=b""),
    "a str delimiter": tampered(Lines(), _delimiter="x"),
    "a negative max_length": tampered(Lines(), _max_length=-1),
    "a huge max_length": tampered(Lines(), _max_length=2**70),
    "a str max_length": tampered(LengthPrefixed(), _max_length="64"),
    "header_size 3": tampered(LengthPrefixed(), _header_size=3),
    "a huge header_size": tampered(LengthPrefixed(), _header_size=2**70),
    "a str header_size": tampered(LengthPrefixed(), _header_size="4"),
    "size 0": tampered(FixedSize(1), _size=0),
    "not a framer": object(),
    "a framer class": Lines,
}
for label, framing in SETTINGS.items():
    attempt(f"Loop(framing={label})",
            lambda: m.Loop(listening(), echo, False, 64, *OPTIONS, framing=framing),
            ("TypeError", "ValueError", "OverflowError"))

def odd_need_more(count):
    return tampered(NeedMore(1), _count=count)

class Answers(Framer):
    answer = None
    def frame(self, data, start):
        answer = self.answer
        if isinstance(answer, BaseException) or (
                isinstance(answer, type) and issubclass(answer, BaseException)):
            raise answer
        return answer(data, start) if callable(answer) else answer

ANSWERS = [None, 0, -1, 1, 5, 11, 12, 10**30, -10**30, 1.5, "3", b"3", True, (1,), (1, 2, 3),
           (10**30, b"x"), (-1, b"x"), (1, None), (11, object()), (3, b"abc"), [1, b"x"],
           NeedMore(1), NeedMore(4 * 1024**3), odd_need_more(-5), odd_need_more("x"),
           odd_need_more(10**30), SystemExit, KeyboardInterrupt, MemoryError, GeneratorExit,
           ValueError("bad"), lambda data, start: len(data) - start,
           lambda data, start: (len(data) - start, data[start:])]
framer = Answers(max_length=100)
replies = lambda queue, message: message if isinstance(message, bytes) else None
server = TCPServer("localhost", 0, replies, framing=framer).start()
for answer in ANSWERS:
    framer.answer = answer
    print("trying", repr(answer)[:60], flush=True)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            for _ in range(3):
                client.sendall(b"0123456789\\n")
            client.shutdown(socket.SHUT_WR)
            while client.recv(1000):
                pass
    except OSError:
        pass
framer.frame = 1  # not callable any more: the loop kept the bound method it was given
assert server.stop(timeout=10)
finish()
'''
PROGRAMS["ShutDown"] = '''
attempt("raise ShutDown", lambda: (_ for _ in ()).throw(m.ShutDown("x")), "ShutDown")
poke_everything("ShutDown('x')", m.ShutDown("x"))
finish()
'''
# Events that do what they should not: break their queue, raise what escapes most
# code, stop the server, close at once, reach for every connection. The server goes on
# serving others, calls on_disconnect once each, and stops.
PROGRAMS["events"] = '''
import itertools
numbers = itertools.count()
disconnected = []

def on_connect(queue):
    number = next(numbers)
    queue.number = number
    server.broadcast(b"joined", exclude=queue)
    server.connections()
    if number == 1:
        raise SystemExit("from on_connect")
    if number == 2:
        queue.shutdown(immediate=True)
    if number == 3:
        object.__setattr__(queue, "_connection", None)  # its on_disconnect still comes

def on_disconnect(queue):
    disconnected.append(getattr(queue, "number", None))
    server.broadcast(b"left")
    if len(disconnected) == 2:
        raise KeyboardInterrupt("from on_disconnect")

server = TCPServer("localhost", 0, echo, on_connect=on_connect,
                   on_disconnect=on_disconnect).start()
clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
           for _ in range(6)]
for client in clients:
    client.close()
deadline = time.monotonic() + 10
while len(disconnected) < 6 and time.monotonic() < deadline:
    time.sleep(0.01)
attempt("every on_disconnect came", lambda: sorted(disconnected) == list(range(6)) or 1 / 0,
        "ok")
attempt("serving still", lambda: ClientSocket("localhost", server.port).send(b"x") == b"x"
        or 1 / 0, "ok")
attempt("stop", lambda: server.stop(timeout=10) or 1 / 0, "ok")
finish()
'''
for internal in ("Connection", "ActivityList", "Events", "Poller", "EpollPoller",
                 "PollPoller", "LogThrottle", "ReadBuffer", "Timers", "MessageFramer",
                 "LineFramer", "LengthFramer", "FixedFramer", "PythonFramer", "TLSServer",
                 "TLSConnection", "TLSInfo", "TLSSessionView"):
    PROGRAMS[internal] = INTERNAL.format(name=internal)

# The module's functions, with what a caller could pass.
PROGRAMS["functions"] = '''
for junk in (None, 0, object(), ValueError("no traceback"), KeyboardInterrupt()):
    attempt(f"raised_by_signal_handler({junk!r})",
            lambda: m.raised_by_signal_handler(junk), ("ok", "AttributeError", "TypeError"))
finish()
'''

ECHOES = '''
def echo(queue, data):
    queue.put(data)

async def _async_echo(queue, data):
    queue.put(data)
'''


def run_child(program):
    return subprocess.run(
        [sys.executable, "-c", HARNESS + ECHOES + textwrap.dedent(program)],
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )


def test_every_class_of_the_compiled_module_is_abused_here():
    compiled = {name for name, value in vars(loop_module).items()
                if inspect.isclass(value) and value.__module__ == loop_module.__name__}
    public = {"TCPServer", "ClientSocket", "Supervisor", "parse_header"}
    assert compiled | public <= set(PROGRAMS), "add the new class to PROGRAMS"
    functions = {name for name, value in vars(loop_module).items()
                 if callable(value) and not inspect.isclass(value) and not name.startswith("_")
                 and getattr(value, "__module__", None) == loop_module.__name__}
    assert functions == {"raised_by_signal_handler"}, "add the new function to PROGRAMS"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_abuse_raises_python_exceptions_never_crashes(name):
    result = run_child(PROGRAMS[name])
    if result.returncode < 0:
        last = result.stdout.strip().splitlines()[-1:]
        pytest.fail(f"{name}: the interpreter died of signal {-result.returncode} "
                    f"while {last}\n{result.stderr[-2000:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ALL AS EXPECTED" in result.stdout
