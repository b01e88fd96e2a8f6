"""Framing: the server cuts each connection's byte stream into whole messages.

TCP delivers bytes, not messages: one send may arrive in pieces, several in one piece.
Give ``TCPServer(..., framing=...)`` one of these, and the read callback is called once
per whole message, however the bytes arrived::

    from simpletcp.framing import Lines
    from simpletcp.tcpserver import TCPServer

    def shout(queue, line):
        return line.upper() + b"\\n"     # a returned bytes-like object is the reply

    TCPServer("localhost", 5000, shout, framing=Lines()).run()

- ``Lines(delimiter=b"\\n", max_length=65536, *, keep_delimiter=False)``
- ``LengthPrefixed(header_size=4, byteorder="big", includes_header=False, max_length=65536)``
- ``FixedSize(size)``
- ``Framer(max_length=65536)``: the base of a framer written in Python (RESP, say),
  which gets the buffering for free.

The framing runs in the compiled loop (src_pyx/framing.pyx); these classes only hold
and check its settings. Input a framer rejects (a message over ``max_length``, a
malformed length header, a ``FramingError`` from a custom framer) closes that
connection once what was queued for it is sent; it is logged, and no other connection
notices. A connection never buffers more than ``max_length`` (plus a header or a
delimiter) of a message not yet whole.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from simpletcp import _arguments

__all__ = ["Lines", "LengthPrefixed", "FixedSize", "Framer", "NeedMore", "FramingError",
           "DEFAULT_MAX_LENGTH"]

#: The longest message a framer accepts unless told otherwise: 64 KiB.
DEFAULT_MAX_LENGTH = 64 * 1024
#: The longest max_length: a message is one bytes object in memory, and a 4 GiB one is
#: already far past what a server should buffer per connection.
MAX_LENGTH = 4 * 1024 * 1024 * 1024
#: The longest delimiter.
MAX_DELIMITER_BYTES = 256
HEADER_SIZES = (1, 2, 4, 8)
BYTEORDERS = ("big", "little")


class FramingError(ValueError):
    """Raised by a custom framer's ``frame()``: the input is malformed. The connection
    is closed (close reason FRAMING_ERROR) once what was queued for it is sent, and the
    message is logged (WARNING) with the peer; any other exception from ``frame()`` does
    the same, logged as an ERROR with its traceback (a bug in the framer)."""


class NeedMore:
    """Returned by a custom framer's ``frame()``: no whole message yet, and none before
    at least ``count`` more bytes have arrived; the framer is not asked again until
    they have."""

    __slots__ = ("_count",)

    def __init__(self, count: int) -> None:
        self._count = _arguments.check_int(count, "count", 1, MAX_LENGTH)

    @property
    def count(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"NeedMore({self._count})"


def _check_max_length(max_length: object) -> int:
    return _arguments.check_int(max_length, "max_length", 1, MAX_LENGTH)


class Lines:
    """Messages that end with ``delimiter`` (``b"\\n"``, ``b"\\r\\n"``, any bytes).

    The callback gets each line without its delimiter (``keep_delimiter=True``: with
    it, as asyncio's ``readline()`` returns it); an empty line is ``b""``. A line
    longer than ``max_length`` bytes (the delimiter not counted) is rejected as soon as
    it is known to be: its connection is closed once what was queued for it is sent.
    Only ``delimiter`` itself ends a line: with ``b"\\r\\n"``, a bare ``b"\\n"`` is part of
    the line.
    """

    __slots__ = ("_delimiter", "_max_length", "_keep_delimiter")

    def __init__(self, delimiter: Union[bytes, bytearray, memoryview] = b"\n",
                 max_length: int = DEFAULT_MAX_LENGTH, *,
                 keep_delimiter: bool = False) -> None:
        if isinstance(delimiter, str):
            raise TypeError("delimiter must be bytes, not str: say b'\\n' (or "
                            f"{delimiter!r}.encode())")
        try:
            delimiter = bytes(memoryview(delimiter))
        except TypeError:
            raise TypeError(f"delimiter must be bytes, got {type(delimiter).__name__}") from None
        if not 1 <= len(delimiter) <= MAX_DELIMITER_BYTES:
            raise ValueError(f"delimiter must be 1 to {MAX_DELIMITER_BYTES} bytes long, "
                             f"got {len(delimiter)}")
        self._delimiter = delimiter
        self._max_length = _check_max_length(max_length)
        self._keep_delimiter = _arguments.check_bool(keep_delimiter, "keep_delimiter")

    @property
    def delimiter(self) -> bytes:
        return self._delimiter

    @property
    def max_length(self) -> int:
        """The longest line, delimiter not counted."""
        return self._max_length

    @property
    def keep_delimiter(self) -> bool:
        return self._keep_delimiter

    def __repr__(self) -> str:
        keep = ", keep_delimiter=True" if self._keep_delimiter else ""
        return f"Lines({self._delimiter!r}, max_length={self._max_length}{keep})"


class LengthPrefixed:
    """Messages that begin with their length: an unsigned ``header_size``-byte integer
    (1, 2, 4 or 8), ``byteorder`` ``"big"`` (network order) or ``"little"``. With
    ``includes_header`` the length counts the header too. The callback gets the message
    without its header. A length over ``max_length`` (or, with ``includes_header``,
    shorter than the header) is rejected as soon as its header is read, before any of
    the message is buffered.
    """

    __slots__ = ("_header_size", "_byteorder", "_includes_header", "_max_length")

    def __init__(self, header_size: int = 4, byteorder: str = "big",
                 includes_header: bool = False,
                 max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if isinstance(header_size, bool) or not isinstance(header_size, int):
            raise TypeError(f"header_size must be an int, got {type(header_size).__name__}")
        if header_size not in HEADER_SIZES:
            raise ValueError(f"header_size must be 1, 2, 4 or 8, got "
                             f"{_arguments.shown(header_size)}")
        if not isinstance(byteorder, str):
            raise TypeError(f"byteorder must be a str, got {type(byteorder).__name__}")
        if byteorder not in BYTEORDERS:
            raise ValueError(f"byteorder must be 'big' or 'little', got "
                             f"{_arguments.shown(byteorder)}")
        self._header_size = int(header_size)
        self._byteorder = str(byteorder)
        self._includes_header = _arguments.check_bool(includes_header, "includes_header")
        self._max_length = _check_max_length(max_length)

    @property
    def header_size(self) -> int:
        return self._header_size

    @property
    def byteorder(self) -> str:
        return self._byteorder

    @property
    def includes_header(self) -> bool:
        return self._includes_header

    @property
    def max_length(self) -> int:
        """The longest message, header not counted."""
        return self._max_length

    def __repr__(self) -> str:
        return (f"LengthPrefixed(header_size={self._header_size}, "
                f"byteorder={self._byteorder!r}, includes_header={self._includes_header}, "
                f"max_length={self._max_length})")


class FixedSize:
    """Messages of exactly ``size`` bytes each."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        self._size = _arguments.check_int(size, "size", 1, MAX_LENGTH)

    @property
    def size(self) -> int:
        return self._size

    @property
    def max_length(self) -> int:
        """The same as ``size``: what a connection buffers at most."""
        return self._size

    def __repr__(self) -> str:
        return f"FixedSize({self._size})"


class Framer:
    """The base of a framer written in Python: subclass it and define ``frame()``.

    The loop keeps each connection's input that is not a whole message yet (at most
    ``max_length`` bytes: more is rejected) and calls ``frame(data, start)`` with all
    of it as ``bytes``, the next message beginning at ``data[start]`` (an offset, so
    that a read of many messages is not copied once per message: search with
    ``data.find(b"\\r\\n", start)``). ``frame`` says what is there:

    - ``None``: no whole message yet; asked again when more bytes arrive.
    - ``NeedMore(count)``: no whole message before at least ``count`` more bytes arrive
      (not asked again until then).
    - an int ``length``: the next message is ``data[start:start + length]``; the
      callback gets it. It may be longer than what is there yet (a header that says
      how long the message is): the loop gathers the rest, without asking again.
    - ``(length, message)``: the next ``length`` bytes are one message, and the
      callback gets ``message``, any object (the request ``frame`` parsed, say).

    It is called again at once for the next message. Raise ``FramingError`` for
    malformed input: the connection is closed (once what was queued for it is sent)
    and the message logged with the peer. A framer is shared by every connection of
    the server and called in the loop's thread: keep per-connection state out of it.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self._max_length = _check_max_length(max_length)

    @property
    def max_length(self) -> int:
        """The longest message, and the most a connection buffers of one."""
        return self._max_length

    def frame(self, data: bytes, start: int) -> Union[None, int, NeedMore, Tuple[int, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must define frame(data, start)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_length={self._max_length})"


#: What TCPServer's ``framing`` takes (besides None).
Framing = Union[Lines, LengthPrefixed, FixedSize, Framer]


def check_framing(framing: object) -> Optional[Framing]:
    """TCPServer's ``framing`` argument: None, or a framer of this module."""
    if framing is None or isinstance(framing, (Lines, LengthPrefixed, FixedSize)):
        return framing
    if isinstance(framing, Framer):
        name = type(framing).__name__
        if getattr(type(framing), "frame", None) is Framer.frame:
            raise TypeError(f"framing: {name} must define frame(data, start)")
        if not isinstance(getattr(framing, "_max_length", None), int):
            raise TypeError(f"framing: {name}.__init__ must call Framer.__init__(self, "
                            "max_length)")
        if not callable(getattr(framing, "frame", None)):
            raise TypeError(f"framing: {name}.frame must be a method")
        return framing
    if isinstance(framing, type) and issubclass(framing, (Lines, LengthPrefixed, FixedSize,
                                                          Framer)):
        raise TypeError(f"framing must be a framer, not the class {framing.__name__}: "
                        f"say {framing.__name__}(...)")
    raise TypeError("framing must be None or a framer of simpletcp.framing (Lines, "
                    "LengthPrefixed, FixedSize, or an instance of a Framer subclass), got "
                    f"{type(framing).__name__}")
