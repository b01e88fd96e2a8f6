"""Property-based: whatever a caller passes, only the documented errors come out.

Arbitrary values (any type, huge ints, NaN, infinities, odd strings) are thrown at every
argument of TCPServer, ClientSocket and the command line. The oracle is README.md's
argument tables, written out here independently of the code: a value inside the
documented range must be accepted; one outside must raise TypeError or ValueError naming
the argument; OSError only where the address cannot be resolved or bound.
"""
import enum
import functools
import re
import socket
import sys
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpletcp.__main__ import main
from simpletcp.clientsocket import ClientSocket
from simpletcp.framing import FixedSize, Framer, LengthPrefixed, Lines
from simpletcp.tcpserver import TCPServer
from support import echo

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

MiB = 2**20
WEEK = 7 * 24 * 3600
C_INT_MAX = 2**31 - 1


class Priority(enum.IntEnum):
    HIGH = 2


async def async_echo(queue, data):
    queue.put(data)


# Values of every kind, with the edges of the documented ranges.
EDGES = [0, 1, -1, 65535, 65536, C_INT_MAX, C_INT_MAX + 1, 64 * MiB, 64 * MiB + 1,
         sys.maxsize, sys.maxsize + 1, 2**63, 2**64, 10**400, -10**400, WEEK, WEEK + 1,
         0.0, -0.0, 1e-300, 5e-324, WEEK + 0.5, float("nan"), float("inf"), float("-inf"),
         True, False, None, Priority.HIGH]
ODD_OBJECTS = [object(), [], {}, (), 1j, Decimal("1"), Fraction(1, 2), b"5000",
               bytearray(b"1"), "", "5000", "\0", "\ud800", "localhost", "auto", "epoll"]
anything = st.one_of(
    st.sampled_from(EDGES), st.sampled_from(ODD_OBJECTS),
    st.integers(), st.floats(), st.text(max_size=300), st.binary(max_size=8),
)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_from(low, high):
    return lambda value: is_int(value) and low <= value <= high


class WholeReads(Framer):
    def frame(self, data, start):
        return len(data) - start


FRAMERS = (Lines, LengthPrefixed, FixedSize, WholeReads)
GOOD_CALLBACKS = [echo, lambda ip, queue, data: None, functools.partial(echo), print]
BAD_CALLBACKS = [None, "echo", async_echo, functools.partial(async_echo),
                 lambda: None, lambda a, b, c, d: None]


async def async_event(queue):
    pass


GOOD_EVENTS = [None, lambda queue: None, lambda ip, queue: None, functools.partial(print)]
BAD_EVENTS = ["on_connect", async_event, lambda: None, lambda a, b, c: None]
#: The arguments that take a callable, and the callables to try in each.
CALLABLES = {"read_callback": GOOD_CALLBACKS + BAD_CALLBACKS,
             "on_connect": GOOD_EVENTS + BAD_EVENTS, "on_disconnect": GOOD_EVENTS + BAD_EVENTS}

def high_water_of(arguments):
    """low_water's upper bound (if high_water is itself wrong, that is the error)."""
    high_water = arguments["high_water"]
    return high_water if int_from(1, sys.maxsize)(high_water) else sys.maxsize


# README.md's TCPServer table, as predicates on (value, all the arguments).
SERVER_DOCUMENTED = {
    "port": lambda v, _: int_from(0, 65535)(v),
    "read_callback": lambda v, _: any(v is good for good in GOOD_CALLBACKS),
    "maximum_connections": lambda v, _: v is None or int_from(1, C_INT_MAX)(v),
    "recv_bytes": lambda v, _: int_from(1, 64 * MiB)(v),
    "backend": lambda v, _: isinstance(v, str) and v in ("auto", "epoll", "poll"),
    "grace_period": lambda v, _: is_number(v) and 0 <= v <= WEEK,
    "high_water": lambda v, _: int_from(1, sys.maxsize)(v),
    "low_water": lambda v, a: v is None or (is_int(v) and 0 <= v <= high_water_of(a)),
    "connection_limit": lambda v, _: v is None or int_from(1, C_INT_MAX)(v),
    "idle_timeout": lambda v, _: v is None or (is_number(v) and 0 < v <= WEEK),
    "workers": lambda v, _: int_from(1, 1024)(v),
    "reuse_port": lambda v, _: isinstance(v, bool),
    "proxy_protocol": lambda v, _: isinstance(v, bool),
    "proxy_header_timeout": lambda v, _: is_number(v) and 0 < v <= WEEK,
    "on_connect": lambda v, _: any(v is good for good in GOOD_EVENTS),
    "on_disconnect": lambda v, _: any(v is good for good in GOOD_EVENTS),
    "framing": lambda v, _: v is None or isinstance(v, FRAMERS),
}
# mode: a str can still fail to resolve (OSError) or be refused by IDNA (ValueError).
GOOD_MODES = ["localhost", "public", "127.0.0.1", "::1"]
SERVER_VALID = {
    "mode": st.sampled_from(GOOD_MODES),
    "port": st.just(0),
    "read_callback": st.sampled_from(GOOD_CALLBACKS),
    "maximum_connections": st.sampled_from([None, 1, 128, C_INT_MAX]),
    "recv_bytes": st.sampled_from([1, 2048, 64 * MiB]),
    "backend": st.sampled_from(["auto", "epoll", "poll"]),
    "grace_period": st.sampled_from([0, 0.5, WEEK]),
    "high_water": st.sampled_from([1, 1 << 20, sys.maxsize]),
    "low_water": st.just(None),
    "connection_limit": st.sampled_from([None, 1, C_INT_MAX]),
    "idle_timeout": st.sampled_from([None, 1e-300, WEEK]),
    "workers": st.sampled_from([1, 2, 1024]),  # constructed, never run: nothing is forked
    "reuse_port": st.booleans(),
    "proxy_protocol": st.booleans(),
    "proxy_header_timeout": st.sampled_from([1e-300, 5, WEEK]),
    "on_connect": st.sampled_from(GOOD_EVENTS),
    "on_disconnect": st.sampled_from(GOOD_EVENTS),
    "framing": st.sampled_from([None, Lines(), Lines(b"\r\n", 1, keep_delimiter=True),
                                LengthPrefixed(8, "little", True, 2**32), FixedSize(1),
                                WholeReads()]),
}


@pytest.fixture
def no_dns(monkeypatch):
    """Names are never looked up (a random string would go to DNS): numeric hosts only."""
    real = socket.getaddrinfo

    def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


def undocumented(arguments):
    """The arguments whose value is outside README.md's range."""
    return {name for name, documented in SERVER_DOCUMENTED.items()
            if not documented(arguments[name], arguments)}


def construct_server(arguments):
    arguments = dict(arguments)
    server = TCPServer(arguments.pop("mode"), arguments.pop("port"),
                       arguments.pop("read_callback"), **arguments)
    server.stop()


@SETTINGS
@pytest.mark.parametrize("name", sorted(SERVER_VALID))
@given(data=st.data())
def test_server_each_argument(no_dns, name, data):
    arguments = {key: data.draw(strategy) for key, strategy in SERVER_VALID.items()}
    if name in CALLABLES:
        arguments[name] = data.draw(st.one_of(st.sampled_from(CALLABLES[name]), anything))
    else:
        arguments[name] = data.draw(anything)
    try:
        construct_server(arguments)
    except (TypeError, ValueError) as exc:
        assert name in str(exc), exc
        if name == "mode":
            assert arguments["mode"] not in GOOD_MODES
        else:
            assert name in undocumented(arguments), f"{arguments[name]!r} was refused: {exc}"
    except OSError:
        assert name in ("mode", "port"), name
    else:
        assert not undocumented(arguments), f"{arguments[name]!r} was accepted"
        if name == "mode":
            mode = arguments["mode"]
            assert isinstance(mode, str) and "\0" not in mode and 0 < len(mode) <= 253


@SETTINGS
@given(data=st.data())
def test_server_all_arguments_at_once(no_dns, data):
    arguments = {name: data.draw(st.one_of(valid, anything) if name not in CALLABLES
                                 else st.sampled_from(CALLABLES[name]))
                 for name, valid in SERVER_VALID.items()}
    wrong = undocumented(arguments)
    if arguments["mode"] not in GOOD_MODES:
        wrong.add("mode")
    try:
        construct_server(arguments)
    except (TypeError, ValueError) as exc:
        assert re.match(r"\w+", str(exc)).group() in wrong, (exc, wrong)
    except OSError:
        assert {"mode", "port"} & wrong or arguments["port"] != 0
    else:
        assert not wrong - {"mode"}, wrong


# README.md's ClientSocket table.
CLIENT_DOCUMENTED = {
    "mode": lambda v: isinstance(v, str) and "\0" not in v and 0 < len(v) <= 253,
    "port": int_from(1, 65535),
    "recv_bytes": int_from(1, 64 * MiB),
    "single_use": lambda v: isinstance(v, bool),
    "timeout": lambda v: v is None or (is_number(v) and 0 < v <= WEEK),
}


@SETTINGS
@pytest.mark.parametrize("name", sorted(CLIENT_DOCUMENTED))
@given(value=anything)
def test_client_each_argument(no_dns, tcp_server, name, value):
    arguments = {"mode": "localhost", "port": tcp_server.port, "recv_bytes": 2048,
                 "single_use": True, "timeout": 10.0, name: value}
    try:
        client = ClientSocket(**arguments)
    except (TypeError, ValueError) as exc:
        assert name in str(exc), exc
        assert name == "mode" or not CLIENT_DOCUMENTED[name](value), f"{value!r}: {exc}"
        return
    except OSError:
        assert name == "single_use" and value is False  # it connects at once
        return
    assert CLIENT_DOCUMENTED[name](value), f"{value!r} was accepted"
    if name in ("mode", "port"):
        client.close()  # an arbitrary address: not worth connecting to
        return
    with client:
        try:
            reply = client.send(b"ping")
        except socket.timeout:
            assert name == "timeout" and value < 0.1
        else:
            # recv_bytes is checked before anything is sent, so send() works.
            assert reply == b"ping"[:arguments["recv_bytes"]]


# The command line: every flag, as text; TCPServer.run() returns at once.
FLAG_TEXT = st.one_of(
    st.sampled_from([str(edge) for edge in EDGES] + ["", "-", "0x10", "1_000", " 5", "1e3",
                                                     "١٢", "localhost", "poll", "debug"]),
    st.integers().map(str), st.floats().map(repr), st.text(max_size=30),
)
# Not --fd: an arbitrary number may name a descriptor of this very process.
FLAGS = ["--mode", "--port", "--recv-bytes", "--backlog", "--backend", "--grace-period",
         "--high-water", "--low-water", "--connection-limit", "--idle-timeout", "--log-level",
         "--workers", "--unix-permissions", "--proxy-header-timeout"]
TARGETS = st.one_of(
    st.sampled_from(["simpletcp.__main__:echo", "json:loads", "json:dumps.x", ":", "a:",
                     ":b", ".:x", "..x:y", "x..y:z", "no_such_module_xyz:f", "json",
                     "json:__name__", "simpletcp.__main__:TargetError"]),
    # Never a real module: every generated name starts with "no_such_".
    st.from_regex(r"\Ano_such_[a-z_.:]{0,12}\Z"),
    st.text(alphabet=".:-/ 0é\0", max_size=8),
)


@SETTINGS
@pytest.mark.parametrize("flag", FLAGS + ["MODULE:CALLABLE", "--on-connect", "--on-disconnect"])
@given(data=st.data())
def test_cli_every_flag(no_dns, monkeypatch, capsys, flag, data):
    monkeypatch.setattr(TCPServer, "run", lambda server: server.stop() and None)
    argv = ["--port=0", "--log-level=warning"]
    if flag == "MODULE:CALLABLE":
        argv.append(data.draw(TARGETS))
    elif flag in ("--on-connect", "--on-disconnect"):
        argv.append(f"{flag}={data.draw(TARGETS)}")
    else:
        argv.append(f"{flag}={data.draw(FLAG_TEXT)}")
    try:
        status = main(argv)
    except SystemExit as exit:
        assert exit.code == 2, argv  # a usage error
        err = capsys.readouterr().err
        assert "usage:" in err and "Traceback" not in err
    else:
        assert status in (0, 1), argv  # 1: the address cannot be resolved or bound
        if status == 1:
            assert flag in ("--mode", "--port"), argv
