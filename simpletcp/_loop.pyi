"""Type stub for simpletcp._loop, the compiled loop (src_pyx/loop.pyx).

It lists everything the module has (python -m mypy.stubtest simpletcp checks that),
internal classes included: they exist at runtime, but cannot be created from Python
(their __init__ always raises TypeError; the loop makes them with Cls.__new__).
"""
import enum
import queue
import socket
import ssl
import sys
from typing import (Any, Callable, Dict, List, Literal, NoReturn, Optional, SupportsIndex, Tuple,
                    Union, final, overload)

from typing_extensions import disjoint_base

_BytesLike = Union[bytes, bytearray, memoryview]

BACKENDS: Tuple[str, ...]

if sys.version_info >= (3, 13):
    from queue import ShutDown as ShutDown
else:
    class ShutDown(Exception):
        """put() was called on a connection queue after shutdown()."""

def raised_by_signal_handler(exc: BaseException) -> bool: ...

class CloseReason(enum.IntEnum):
    """Why a connection closed, or is closing: queue.close_reason."""

    PEER_CLOSED = 1
    QUEUE_SHUTDOWN = 2
    CALLBACK_FAILED = 3
    SERVER_STOPPING = 4
    IDLE_TIMEOUT = 5
    REPLY_CUT = 6
    PEER_RESET = 7
    IO_ERROR = 8
    HUNG_UP = 9
    LOOP_ERROR = 10
    GRACE_EXPIRED = 11
    SERVER_ABORTED = 12
    PROXY_HEADER_REJECTED = 13
    FRAMING_ERROR = 14
    TLS_ERROR = 15

@final
class Connection:
    """Internal: one accepted socket. Only the loop makes them."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class ActivityList:
    """Internal: connections ordered by last activity."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

class ConnectionQueue(queue.Queue[_BytesLike]):
    """The queue a callback is given: what is put into it is sent to that peer."""

    # Only the server makes them: anything but a live Connection is a TypeError.
    def __init__(self, connection: Connection) -> None: ...
    def put(self, item: _BytesLike, block: bool = True, timeout: Optional[float] = None) -> None: ...
    def put_nowait(self, item: _BytesLike) -> None: ...
    def shutdown(self, immediate: bool = False) -> None: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def peer(self) -> Tuple[str, int]: ...
    @property
    def close_reason(self) -> Optional[CloseReason]: ...
    # Per-connection state: the application sets any attribute (queue.nickname = ...).
    # For type checkers only: at run time these are object's own (the instance dict is
    # queue.Queue's); tests/stubtest_allowlist.txt says so to stubtest.
    def __getattr__(self, name: str) -> Any: ...
    def __setattr__(self, name: str, value: Any) -> None: ...
    @property
    def tls(self) -> Optional[TLSInfo]: ...
    # The server consumes the queue: these raise NotImplementedError.
    def get(self, *args: object, **kwargs: object) -> NoReturn: ...
    def get_nowait(self, *args: object, **kwargs: object) -> NoReturn: ...
    def task_done(self, *args: object, **kwargs: object) -> NoReturn: ...
    def join(self, *args: object, **kwargs: object) -> NoReturn: ...
    def _consumed_by_server(self, *args: object, **kwargs: object) -> NoReturn: ...
    # Raises TypeError: a queue cannot be copied or pickled.
    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn: ...

@final
class Events:
    """Internal: on_connect, on_disconnect and the open connections."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class Timers:
    """Internal: every timed thing the loop waits for."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class TLSServer:
    """Internal: the loop's TLS settings."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class TLSInfo:
    """queue.tls: what a connection's TLS handshake agreed on, read-only (any thread)."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...
    def version(self) -> str: ...
    def cipher(self) -> Tuple[str, str, int]: ...
    def selected_alpn_protocol(self) -> Optional[str]: ...
    def compression(self) -> Optional[str]: ...
    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> Optional[Dict[str, Any]]: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> Optional[bytes]: ...
    @overload
    def getpeercert(self, binary_form: bool) -> Union[Dict[str, Any], bytes, None]: ...
    def get_channel_binding(self, cb_type: str = "tls-unique") -> Optional[bytes]: ...
    @property
    def server_hostname(self) -> Optional[str]: ...
    @property
    def session_reused(self) -> bool: ...

@final
class TLSSessionView:
    """A TLS connection as an SSLContext's sni_callback/_msg_callback sees it."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...
    @property
    def context(self) -> ssl.SSLContext: ...
    @context.setter
    def context(self, value: ssl.SSLContext) -> None: ...
    @property
    def server_side(self) -> bool: ...
    @property
    def server_hostname(self) -> None: ...
    @property
    def session_reused(self) -> bool: ...
    def version(self) -> Optional[str]: ...
    def cipher(self) -> Optional[Tuple[str, str, int]]: ...
    def selected_alpn_protocol(self) -> Optional[str]: ...
    def compression(self) -> Optional[str]: ...
    def getpeercert(self, binary_form: bool = False) -> Union[Dict[str, Any], bytes, None]: ...
    def do_handshake(self, *args: object, **kwargs: object) -> NoReturn: ...
    def read(self, *args: object, **kwargs: object) -> NoReturn: ...
    def write(self, *args: object, **kwargs: object) -> NoReturn: ...
    def pending(self, *args: object, **kwargs: object) -> NoReturn: ...
    def unwrap(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class TLSConnection:
    """Internal: one connection's TLS session."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class ReadBuffer:
    """Internal: where every connection's recv() lands."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@disjoint_base
class MessageFramer:
    """Internal: cuts a connection's input into messages (framing=, simpletcp.framing)."""

    # Always raises TypeError, as Poller's (see there for why it is not typed NoReturn).
    def __init__(self, *args: object, **kwargs: object) -> None: ...

@final
class LineFramer(MessageFramer):
    """Internal: simpletcp.framing.Lines."""

@final
class LengthFramer(MessageFramer):
    """Internal: simpletcp.framing.LengthPrefixed."""

@final
class FixedFramer(MessageFramer):
    """Internal: simpletcp.framing.FixedSize (its size is max_length)."""

@final
class PythonFramer(MessageFramer):
    """Internal: a simpletcp.framing.Framer subclass's frame(data, start)."""

@final
class LogThrottle:
    """Internal: one log line per kind of trouble per interval."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@disjoint_base
class Poller:
    """Internal: waits for descriptors to become ready."""

    @property
    def name(self) -> str: ...
    # Always raises TypeError too. Not typed NoReturn: that makes the class a callable
    # returning Never, which @disjoint_base (stubtest's due for a C base class) refuses.
    def __init__(self, *args: object, **kwargs: object) -> None: ...

@final
class EpollPoller(Poller):
    """Internal: the epoll backend."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class PollPoller(Poller):
    """Internal: the poll backend."""

    def __init__(self, *args: object, **kwargs: object) -> NoReturn: ...

@final
class Loop:
    """The compiled server loop; simpletcp.tcpserver.TCPServer is its Python face."""

    def __init__(
        self,
        listener: socket.socket,
        callback: Callable[..., Any],
        callback_takes_ip: bool,
        recv_bytes: int,
        backend: str,
        grace_period: float,
        high_water: int,
        low_water: int,
        connection_limit: int,
        idle_timeout: float,
        proxy_header_parser: Optional[Callable[[bytes], Any]],
        proxy_header_timeout: float,
        framing: Optional[object] = None,
        on_connect: Optional[Callable[..., Any]] = None,
        on_connect_takes_ip: bool = False,
        on_disconnect: Optional[Callable[..., Any]] = None,
        on_disconnect_takes_ip: bool = False,
        ssl_context: Optional[ssl.SSLContext] = None,
        ssl_handshake_timeout: float = 60.0,
        ssl_shutdown_timeout: float = 30.0,
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def connection_count(self) -> int: ...
    @property
    def running(self) -> bool: ...
    @property
    def stop_requested(self) -> bool: ...
    def run(self, ready: Optional[Callable[[], object]] = None, signal_fd: int = -1) -> None: ...
    def request_stop(self, signal_name: Optional[str] = None) -> None: ...
    def request_abort(self, signal_name: Optional[str] = None) -> None: ...
    def open_queues(self) -> List[ConnectionQueue]: ...
    def broadcast(self, data: _BytesLike,
                  exclude: Optional[ConnectionQueue] = None) -> List[ConnectionQueue]: ...
    def close(self) -> None: ...
    def log(self, level: int, message: str, args: Tuple[Any, ...] = (),
            exc_info: Optional[BaseException] = None) -> int: ...
