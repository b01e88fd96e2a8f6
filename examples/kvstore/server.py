"""A small Redis-compatible key-value store (RESP2), served by simpletcp.

Usage: python server.py [PORT]    (then: redis-cli -p PORT set greeting hello)

Speaks enough of RESP2 for redis-cli, redis-benchmark (-t ping,set,get,incr) and redis-py
(Redis(protocol=2)): PING, ECHO, SET (NX/XX), GET, INCR, DECR, INCRBY, DECRBY, DEL,
EXISTS, DBSIZE, FLUSHDB/FLUSHALL, SELECT 0, MULTI/EXEC/DISCARD, QUIT, and the handshakes
those clients send (HELLO 2, CLIENT SETNAME/SETINFO, CONFIG GET). Both request forms:
RESP arrays and inline commands (``PING`` typed into nc). Pipelined requests are
answered in order. An unknown command gets ``-ERR unknown command``; a malformed
request, or one larger than MAX_REQUEST_BYTES, gets ``-ERR Protocol error`` and the
connection is closed, so no client can make the server buffer more than that.

What simpletcp does for it: ``RespFramer`` (a ``simpletcp.framing.Framer``) says where
each request ends and parses it; the server keeps each connection's unfinished bytes
and calls ``on_request`` once per whole request, with the parsed arguments. What
``on_request`` returns is the reply. A connection's open MULTI is an attribute of its
queue, which lives exactly as long as the connection.
"""
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from simpletcp.framing import Framer, NeedMore
from simpletcp.tcpserver import ConnectionQueue, TCPServer

#: The largest request (all its arguments, with their RESP framing) a client may send.
MAX_REQUEST_BYTES = 1024 * 1024
#: An inline command's line, or a RESP header line ("*3", "$5"), longer than this is an abuse.
MAX_INLINE_BYTES = 64 * 1024
#: The fewest bytes an argument takes: b"$0\r\n\r\n".
MIN_ARGUMENT_BYTES = 6


class ProtocolError(Exception):
    """The client broke RESP: it is answered, then disconnected."""


def parse_request(buffer: bytes, start: int) -> Tuple[Optional[List[bytes]], int]:
    """One request at ``buffer[start:]``: (arguments, end) when it is whole; (None,
    the fewest bytes ``buffer`` must hold for it to be) when more must arrive;
    ProtocolError if it is malformed. An empty inline line is ([], end).

    The fewest, counting every argument not yet here as an empty one: the request is
    parsed again (from its start) only once that much has arrived, so a request of
    many small arguments sent in many small pieces is parsed a few times, not once
    per piece (its cost would grow with the square of its size)."""
    if buffer[start] != 0x2A:  # not "*": an inline command, one line of words
        end = buffer.find(b"\n", start)
        if end < 0:
            if len(buffer) - start > MAX_INLINE_BYTES:
                raise ProtocolError("too big inline request")
            return None, len(buffer) + 1
        return bytes(buffer[start:end]).split(), end + 1
    count, position = header_number(buffer, start, "multibulk length")
    if count is None:
        return None, position
    if count < 0:
        raise ProtocolError("invalid multibulk length")
    arguments = []
    for index in range(count):
        # The fewest bytes the arguments after this one take.
        after = (count - index - 1) * MIN_ARGUMENT_BYTES
        if position >= len(buffer):
            return incomplete(start, position + MIN_ARGUMENT_BYTES + after)
        if buffer[position] != 0x24:  # "$"
            raise ProtocolError(f"expected '$', got '{chr(buffer[position])}'")
        length, data_start = header_number(buffer, position, "bulk length")
        if length is None:
            return incomplete(start, max(data_start, position + MIN_ARGUMENT_BYTES) + after)
        if not 0 <= length <= MAX_REQUEST_BYTES:
            raise ProtocolError("invalid bulk length")
        data_end = data_start + length
        if data_end + 2 - start > MAX_REQUEST_BYTES:
            raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        if len(buffer) < data_end + 2:
            return incomplete(start, data_end + 2 + after)
        if buffer[data_end:data_end + 2] != b"\r\n":
            raise ProtocolError("bulk string not followed by CRLF")
        arguments.append(bytes(buffer[data_start:data_end]))
        position = data_end + 2
    return arguments, position


def incomplete(start: int, end: int) -> Tuple[None, int]:
    """(None, end) for a request from ``start`` that cannot be whole before ``end``;
    ProtocolError if that is already more than a request may be."""
    if end - start > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    return None, end


def header_number(buffer: bytes, start: int, what: str) -> Tuple[Optional[int], int]:
    """The number of a "*N\\r\\n" or "$N\\r\\n" header at ``start``: (N, where its data
    begins), or (None, bytes needed) if the line is not whole yet."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        if len(buffer) - start > MAX_INLINE_BYTES:
            raise ProtocolError(f"too big {what}")
        return None, len(buffer) + 1
    try:
        return int(buffer[start + 1:end]), end + 2
    except ValueError:
        raise ProtocolError(f"invalid {what}") from None


# ----------------------------------------------------------------------------- replies

def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def error(text: str) -> bytes:
    return b"-" + text.encode() + b"\r\n"


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: Optional[bytes]) -> bytes:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: List[bytes]) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(bulk(item) for item in items)


OK = simple("OK")
PONG = simple("PONG")


# ----------------------------------------------------------------------------- commands

class Store:
    """The keys and values, shared by every connection (the loop is one thread)."""

    def __init__(self) -> None:
        self.values: Dict[bytes, bytes] = {}

    def execute(self, arguments: List[bytes]) -> Tuple[bytes, bool]:
        """The reply to one command: (reply, whether to close after it)."""
        name = arguments[0].decode("latin-1").lower()
        command = COMMANDS.get(name)
        if command is None:
            words = " ".join(f"'{a.decode('latin-1')[:64]}'" for a in arguments[1:4])
            return error(f"ERR unknown command '{arguments[0].decode('latin-1')[:64]}', "
                         "with args beginning with: "
                         f"{words}"), False
        handler, arity = command
        if (arity >= 0 and len(arguments) != arity) or len(arguments) < -arity:
            return error(f"ERR wrong number of arguments for '{name}' command"), False
        if handler is None:  # QUIT
            return OK, True
        return handler(self, arguments[1:]), False

    def ping(self, arguments: List[bytes]) -> bytes:
        return bulk(arguments[0]) if arguments else PONG

    def echo(self, arguments: List[bytes]) -> bytes:
        return bulk(arguments[0])

    def set(self, arguments: List[bytes]) -> bytes:
        key, value, *options = arguments
        options = [option.upper() for option in options]
        if options not in ([], [b"NX"], [b"XX"]):
            return error("ERR syntax error")
        exists = key in self.values
        if (b"NX" in options and exists) or (b"XX" in options and not exists):
            return bulk(None)
        self.values[key] = value
        return OK

    def get(self, arguments: List[bytes]) -> bytes:
        return bulk(self.values.get(arguments[0]))

    def incrby(self, arguments: List[bytes]) -> bytes:
        key, step = arguments
        try:
            return self.add(key, int(step))
        except ValueError:
            return error("ERR value is not an integer or out of range")

    def decrby(self, arguments: List[bytes]) -> bytes:
        key, step = arguments
        try:
            return self.add(key, -int(step))
        except ValueError:
            return error("ERR value is not an integer or out of range")

    def incr(self, arguments: List[bytes]) -> bytes:
        return self.add(arguments[0], 1)

    def decr(self, arguments: List[bytes]) -> bytes:
        return self.add(arguments[0], -1)

    def add(self, key: bytes, step: int) -> bytes:
        try:
            value = int(self.values.get(key, b"0")) + step
        except ValueError:
            return error("ERR value is not an integer or out of range")
        if not -2**63 <= value < 2**63:
            return error("ERR increment or decrement would overflow")
        self.values[key] = b"%d" % value
        return integer(value)

    def delete(self, arguments: List[bytes]) -> bytes:
        return integer(sum(self.values.pop(key, None) is not None for key in arguments))

    def exists(self, arguments: List[bytes]) -> bytes:
        return integer(sum(key in self.values for key in arguments))

    def dbsize(self, arguments: List[bytes]) -> bytes:
        return integer(len(self.values))

    def flush(self, arguments: List[bytes]) -> bytes:
        self.values.clear()
        return OK

    def select(self, arguments: List[bytes]) -> bytes:
        return OK if arguments[0] == b"0" else error("ERR DB index is out of range")

    def hello(self, arguments: List[bytes]) -> bytes:
        if arguments and arguments[0] != b"2":
            return error("NOPROTO this server speaks RESP2 only: connect with protocol=2")
        # A map, in RESP2 a flat array of names and values; "proto" is an integer.
        return (b"*6\r\n" + bulk(b"server") + bulk(b"simpletcp-kvstore") + bulk(b"version")
                + bulk(b"1.0") + bulk(b"proto") + integer(2))

    def client(self, arguments: List[bytes]) -> bytes:
        if arguments[0].upper() in (b"SETNAME", b"SETINFO"):
            return OK
        return error("ERR unknown CLIENT subcommand")

    def config(self, arguments: List[bytes]) -> bytes:
        # redis-benchmark asks for "save" and "appendonly" before it starts.
        if arguments[0].upper() != b"GET" or len(arguments) != 2:
            return error("ERR only CONFIG GET is supported")
        known = {b"save": b"", b"appendonly": b"no"}
        value = known.get(arguments[1].lower())
        return array([]) if value is None else array([arguments[1].lower(), value])


#: name -> (method, arity): arity counts the name; -N means at least N. QUIT has no method.
COMMANDS: Dict[str, Tuple[Optional[Callable[[Store, List[bytes]], bytes]], int]] = {
    "ping": (Store.ping, -1), "echo": (Store.echo, 2), "set": (Store.set, -3),
    "get": (Store.get, 2), "incr": (Store.incr, 2), "decr": (Store.decr, 2),
    "incrby": (Store.incrby, 3), "decrby": (Store.decrby, 3), "del": (Store.delete, -2),
    "exists": (Store.exists, -2),
    "dbsize": (Store.dbsize, 1), "flushdb": (Store.flush, -1), "flushall": (Store.flush, -1),
    "select": (Store.select, 2), "hello": (Store.hello, -1), "client": (Store.client, -2),
    "config": (Store.config, -2), "quit": (None, 1),
}


# ----------------------------------------------------------------------------- framing

class RespFramer(Framer):
    """Where each request ends, and what it says: the server calls ``frame`` with a
    connection's unparsed bytes, and hands ``on_request`` each whole request parsed.

    Malformed input is handed on too, as a ProtocolError covering all that arrived, so
    that the client is answered (``-ERR Protocol error``) before it is disconnected, as
    Redis does; raising FramingError instead would close it without a word."""

    def __init__(self) -> None:
        # The server's own bound: never reached, as a request is refused (above) as soon
        # as its headers say it would be larger than MAX_REQUEST_BYTES.
        super().__init__(max_length=MAX_REQUEST_BYTES + MAX_INLINE_BYTES)

    def frame(self, data: bytes, start: int) -> Union[None, NeedMore, Tuple[int, object]]:
        try:
            arguments, end = parse_request(data, start)
        except ProtocolError as problem:
            return len(data) - start, problem
        if arguments is None:
            return NeedMore(end - len(data))  # no whole request before `end` bytes are here
        return end - start, arguments


# ----------------------------------------------------------------------------- the callbacks

class KeyValueServer:
    """The store's callbacks; ``keywords()`` are what TCPServer needs to serve them."""

    def __init__(self) -> None:
        self.store = Store()

    def keywords(self) -> Dict[str, Any]:
        return dict(framing=RespFramer(), on_connect=self.open_session)

    def open_session(self, queue: ConnectionQueue) -> None:
        queue.transaction = None  # the commands queued since MULTI, and their size
        queue.transaction_bytes = 0

    def on_request(self, queue: ConnectionQueue,
                   request: Union[List[bytes], ProtocolError]) -> Optional[bytes]:
        """One whole request (RespFramer): the reply."""
        if isinstance(request, ProtocolError):
            reply, close = error(f"ERR Protocol error: {request}"), True
        elif not request:
            return None  # an empty inline line, as redis ignores it
        else:
            reply, close = self.execute(queue, request)
        if close:
            queue.put(reply)
            queue.shutdown()  # what else it sent is dropped unread
            return None
        return reply

    def execute(self, queue: ConnectionQueue, arguments: List[bytes]) -> Tuple[bytes, bool]:
        """(reply, whether to close): the store's, or the transaction's (MULTI/EXEC)."""
        name = arguments[0].lower()
        if name == b"multi":
            if queue.transaction is not None:
                return error("ERR MULTI calls can not be nested"), False
            queue.transaction, queue.transaction_bytes = [], 0
            return OK, False
        if name in (b"exec", b"discard"):
            commands, queue.transaction = queue.transaction, None
            if commands is None:
                return error(f"ERR {name.decode().upper()} without MULTI"), False
            if name == b"discard":
                return OK, False
            results = [self.store.execute(command)[0] for command in commands]
            return b"*%d\r\n" % len(results) + b"".join(results), False
        if queue.transaction is not None and name != b"quit":
            queue.transaction_bytes += sum(map(len, arguments))
            if queue.transaction_bytes > MAX_REQUEST_BYTES:
                # Queued commands are held until EXEC: bounded like one request.
                queue.transaction = None
                return error(f"ERR transaction larger than {MAX_REQUEST_BYTES} bytes"), True
            queue.transaction.append(arguments)
            return simple("QUEUED"), False
        return self.store.execute(arguments)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    app = KeyValueServer()
    server = TCPServer("localhost", port, app.on_request, **app.keywords())
    print(f"key-value store listening on {server.ip}:{server.port}", flush=True)
    server.run()
