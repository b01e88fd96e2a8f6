"""TCPServer: the original simpleTCP API over simpletcp's compiled epoll loop.

This module owns the arguments (their defaults and checks), binds the socket and
manages threads and signals (simpletcp._signals); the serving itself happens in :mod:`simpletcp._loop` (Cython). There is no pure-Python loop to
fall back to: if the extension is missing, importing this module fails.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, Union

from simpletcp import _arguments, _callback, _listener, _signals, framing as _framing, proxyprotocol
from simpletcp._loop import BACKENDS, CloseReason, ConnectionQueue, Loop, ShutDown
from simpletcp.supervisor import Supervisor

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["TCPServer", "ConnectionQueue", "CloseReason", "ShutDown", "BACKENDS"]

#: How long stop() waits for queued replies to go out before closing connections.
#: The most bytes one callback receives: the original simpleTCP's default.
DEFAULT_RECV_BYTES = 2048
DEFAULT_GRACE_PERIOD = 5.0
#: Unsent output per connection above which the server stops reading from it.
DEFAULT_HIGH_WATER = 1024 * 1024
#: How long a connection may take to send its PROXY protocol header (proxy_protocol=True):
#: a load balancer sends it with its first bytes, so only a stray client waits this long.
DEFAULT_PROXY_HEADER_TIMEOUT = 5.0
#: ssl=: how long a TLS handshake may take (asyncio's default), and how long a
#: connection waits for the peer to close after its close_notify (asyncio's too).
DEFAULT_SSL_HANDSHAKE_TIMEOUT = 60.0
DEFAULT_SSL_SHUTDOWN_TIMEOUT = 30.0

logger = logging.getLogger("simpletcp")


class TCPServer:
    """A TCP server that calls ``read_callback`` with each chunk of bytes it receives.

    ``TCPServer(mode, port, read_callback)`` binds and listens at once;
    ``run()`` serves until ``stop()`` or Ctrl-C.

    - ``mode``: ``"localhost"`` (127.0.0.1), ``"public"`` (0.0.0.0), or any IPv4/IPv6
      address or host name to bind.
    - ``port``: 0-65535; 0 picks a free port (read it back from ``server.port``).
    - ``read_callback(queue, data)`` or ``read_callback(ip, queue, data)``: ``data`` is
      the bytes received; bytes put into ``queue`` are sent back to that peer, in order.
    - ``maximum_connections``: the listen backlog (default ``socket.SOMAXCONN``); it
      does not limit how many connections are served at once.
    - ``recv_bytes``: the most bytes one callback receives (default 2048).
    - ``backend``: ``"auto"`` (epoll on Linux), ``"epoll"`` or ``"poll"``.
    - ``grace_period``: the most seconds ``stop()`` waits for queued replies to be sent
      and for workers still holding a connection's queue to reply.
    - ``high_water`` / ``low_water``: bytes of unsent output per connection above which
      the server stops reading from it (and put() from other threads waits), and below
      which it resumes (default: a quarter of ``high_water``).
    - ``connection_limit``: the most connections served at once; beyond it new ones
      are closed at once (and logged). Default: no limit.
    - ``idle_timeout``: seconds after which a connection on which no byte moved either
      way is closed. Default: never.
    - ``framing``: a framer of :mod:`simpletcp.framing` (``Lines()``, ...): the callback
      then gets one whole message per call. Default: None, the bytes as they arrive.

    A callback that returns a bytes-like object has it sent as its reply (as if it
    had put() it last); returning None sends nothing more.
    - ``on_connect(queue)`` or ``on_connect(ip, queue)``: called when a connection
      opens, before any read_callback for it; what it puts is sent first.
    - ``on_disconnect(queue)`` or ``on_disconnect(ip, queue)``: called once when a
      connection that had on_connect closed; ``queue.close_reason`` says why.
    - ``ssl``: a server-side ``ssl.SSLContext`` (with its certificate loaded): every
      connection is TLS; the callback sees plaintext, and ``queue.tls`` what the
      handshake agreed on (read-only). ``ssl_handshake_timeout`` (default 60 s, from
      accept or the end of the PROXY header) bounds the handshake,
      ``ssl_shutdown_timeout`` (default 30 s) the wait for the peer's close after ours.
    """

    def __init__(
        self,
        mode: Optional[str] = None,
        port: Optional[int] = None,
        read_callback: Optional[Callable[..., Any]] = None,
        maximum_connections: Optional[int] = None,
        recv_bytes: int = DEFAULT_RECV_BYTES,
        *,
        backend: str = "auto",
        grace_period: float = DEFAULT_GRACE_PERIOD,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: Optional[int] = None,
        connection_limit: Optional[int] = None,
        idle_timeout: Optional[float] = None,
        workers: int = 1,
        reuse_port: bool = False,
        sock: Optional[socket.socket] = None,
        unix_permissions: Optional[int] = None,
        proxy_protocol: bool = False,
        proxy_header_timeout: float = DEFAULT_PROXY_HEADER_TIMEOUT,
        framing: Optional[_framing.Framing] = None,
        on_connect: Optional[Callable[..., Any]] = None,
        on_disconnect: Optional[Callable[..., Any]] = None,
        ssl: Optional[_ssl.SSLContext] = None,
        ssl_handshake_timeout: float = DEFAULT_SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = DEFAULT_SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        if read_callback is None:
            raise TypeError("read_callback is required: callback(queue, data) or "
                            "callback(ip, queue, data)")
        path = None if sock is not None else _listener.unix_path(mode)
        if sock is not None:
            if mode is not None or port is not None:
                raise ValueError("give mode and port, or sock, not both (sock is already "
                                 "bound)")
        elif path is not None:
            port = _listener.check_unix_port(port, allow_none=True)
        else:
            _arguments.check_mode(mode)
            if port is None:
                raise TypeError("port is required with a TCP mode (0 picks a free one)")
            port = _arguments.check_int(port, "port", 0, 65535)
        takes_ip = _callback.takes_ip(read_callback)
        _callback.check_runs_when_called(read_callback)
        on_connect_takes_ip = on_disconnect_takes_ip = False
        if on_connect is not None:
            on_connect_takes_ip = _callback.takes_ip(on_connect, "on_connect")
            _callback.check_runs_when_called(on_connect, "on_connect")
        if on_disconnect is not None:
            on_disconnect_takes_ip = _callback.takes_ip(on_disconnect, "on_disconnect")
            _callback.check_runs_when_called(on_disconnect, "on_disconnect")
        if maximum_connections is None:
            maximum_connections = socket.SOMAXCONN
        maximum_connections = _arguments.check_int(
            maximum_connections, "maximum_connections", 1, _arguments.MAX_C_INT)
        recv_bytes = _arguments.check_int(recv_bytes, "recv_bytes", 1, _arguments.MAX_RECV_BYTES)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        backend = str.__str__(backend)  # a str subclass's own __eq__ has no say
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, "
                             f"got {_arguments.shown(backend)}")
        grace_period = _arguments.check_seconds(grace_period, "grace_period", allow_zero=True,
                                                allow_none=False)
        high_water = _arguments.check_int(high_water, "high_water", 1, _arguments.MAX_BYTES)
        if low_water is None:
            low_water = high_water // 4
        low_water = _arguments.check_int(low_water, "low_water", 0, high_water)
        if connection_limit is not None:
            connection_limit = _arguments.check_int(connection_limit, "connection_limit", 1,
                                                    _arguments.MAX_C_INT)
        idle_timeout = _arguments.check_seconds(idle_timeout, "idle_timeout", allow_zero=False,
                                                allow_none=True)
        workers = _arguments.check_int(workers, "workers", 1, _arguments.MAX_WORKERS)
        reuse_port = _arguments.check_bool(reuse_port, "reuse_port")
        if reuse_port and (sock is not None or path is not None):
            raise ValueError("reuse_port applies to a TCP port this server binds, not to "
                             "sock= or a 'unix:' mode")
        if unix_permissions is not None:
            unix_permissions = _arguments.check_int(unix_permissions, "unix_permissions", 0,
                                                    0o777)
            if path is None:
                raise ValueError("unix_permissions applies to a 'unix:' mode only")
        proxy_protocol = _arguments.check_bool(proxy_protocol, "proxy_protocol")
        proxy_header_timeout = _arguments.check_seconds(
            proxy_header_timeout, "proxy_header_timeout", allow_zero=False, allow_none=False)
        framing = _framing.check_framing(framing)
        ssl = _arguments.check_ssl_context(ssl)
        ssl_handshake_timeout = _arguments.check_seconds(
            ssl_handshake_timeout, "ssl_handshake_timeout", allow_zero=False, allow_none=False)
        ssl_shutdown_timeout = _arguments.check_seconds(
            ssl_shutdown_timeout, "ssl_shutdown_timeout", allow_zero=False, allow_none=False)

        self._unix_socket: Optional[Tuple[str, os.stat_result]] = None  # to remove on stop
        if sock is not None:
            listener = _listener.adopt(sock)
        elif path is not None:
            listener, identity = _listener.bind_unix(path, maximum_connections, unix_permissions)
            # Removed on stop by its absolute path: the application may chdir meanwhile.
            self._unix_socket = (os.path.abspath(path), identity)
        else:
            assert port is not None  # checked above
            listener = _listener.bind_tcp(mode, port, maximum_connections, reuse_port)
        self._loop: Optional[Loop] = None
        self._supervisor: Optional[Supervisor] = None
        # In a worker process, the worker's own server (a holder, not this object in
        # serve_worker's closure: that would be a reference cycle).
        in_worker: List[TCPServer] = []
        self._in_worker = in_worker
        try:
            if workers == 1:
                self._loop = Loop(
                    listener, read_callback, takes_ip, recv_bytes, backend, grace_period,
                    high_water, low_water, connection_limit or 0, idle_timeout or 0.0,
                    proxyprotocol.parse_header if proxy_protocol else None,
                    proxy_header_timeout, framing, on_connect, on_connect_takes_ip,
                    on_disconnect, on_disconnect_takes_ip, ssl, ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
            else:
                worker_keywords = dict(
                    backend=backend, grace_period=grace_period, high_water=high_water,
                    low_water=low_water, connection_limit=connection_limit,
                    idle_timeout=idle_timeout, proxy_protocol=proxy_protocol,
                    proxy_header_timeout=proxy_header_timeout, framing=framing,
                    on_connect=on_connect, on_disconnect=on_disconnect, ssl=ssl,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout)

                def serve_worker() -> None:
                    # In the forked worker: this object (the worker's copy) answers for
                    # the worker's own server (connections(), broadcast() from callbacks).
                    worker = TCPServer(None, None, read_callback, maximum_connections,
                                       recv_bytes, sock=listener,
                                       **worker_keywords)  # type: ignore[arg-type]
                    in_worker.append(worker)
                    worker.run()

                self._supervisor = Supervisor(listener, workers, serve_worker, grace_period)
        except BaseException:
            listener.close()
            self._remove_unix_socket()
            raise
        self._listener = listener
        bound = listener.getsockname()
        if listener.family == socket.AF_UNIX:
            # A Unix socket has a path and no port (an abstract or unnamed one: "").
            self._ip: str = bound if isinstance(bound, str) else os.fsdecode(bound)
            self._port: int = 0
        else:
            self._ip = bound[0]
            self._port = bound[1]
        self._backend_name = backend if backend != "auto" else BACKENDS[0]
        self.mode = mode
        self.read_callback = read_callback
        self.maximum_connections = maximum_connections
        self.recv_bytes = recv_bytes
        self.grace_period = grace_period
        self.high_water = high_water
        self.low_water = low_water
        self.connection_limit = connection_limit
        self.idle_timeout = idle_timeout
        self.workers = workers
        self.proxy_protocol = proxy_protocol
        self.proxy_header_timeout = proxy_header_timeout
        self.framing = framing
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        # Guards _started and _stopped. Re-entrant: a signal handler that calls stop()
        # runs in the main thread, possibly while that thread is inside _claim() or stop().
        self._state = threading.RLock()
        self._started = False  # run() or start() has claimed the server
        self._stopped = False  # stop() has been called: final
        self._serving = threading.Event()
        self._finished = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._loop_thread_id: Optional[int] = None
        # The thread inside run() or start() (until start() returns): a stop() of a signal
        # handler that interrupts it must not wait for a loop that this thread is to run.
        self._claimed_by: Optional[int] = None
        self._start_failure: Optional[BaseException] = None

    # ---- properties ----------------------------------------------------------------

    @property
    def ip(self) -> str:
        """The address the server is bound to."""
        return self._ip

    @property
    def port(self) -> int:
        """The port the server is bound to (the real one when created with port 0)."""
        return self._port

    @property
    def backend(self) -> str:
        """The poller in use: ``"epoll"`` or ``"poll"``."""
        if self._loop is None:
            return self._backend_name  # each worker's
        return self._loop.backend

    @property
    def connection_count(self) -> int:
        """How many connections are open now (in this process: with workers, each
        worker counts its own, and this raises RuntimeError)."""
        return self._in_process_loop("connection_count").connection_count

    def connections(self) -> List[ConnectionQueue]:
        """The queues of the open connections, oldest first: a snapshot (a list of its
        own), safe to take from any thread and from a callback.

        A connection is listed from when it opens (on_connect sees itself listed)
        until it is closed (on_disconnect does not), those whose close has begun
        included (``queue.close_reason`` is not None).
        With workers: in a worker (its callbacks), that worker's connections; in the
        supervisor, RuntimeError. Holding the list holds the queues: while stopping,
        the server waits for held queues as for workers about to reply.
        """
        return self._own_loop("connections()").open_queues()

    def broadcast(self, data: Union[bytes, bytearray, memoryview],
                  exclude: Optional[ConnectionQueue] = None
                  ) -> List[ConnectionQueue]:
        """Put bytes-like ``data`` to every open connection (those connections() lists)
        but ``exclude`` (a queue, or None), from any thread or callback; never waits.

        A connection whose unsent output is at or above ``high_water`` (its client is
        not reading) is left out, so that one stalled client neither blocks the others
        nor grows without bound: its queue is in the list returned (shut it down, or
        try it again later). The data is copied once, whatever the number of
        connections. With workers: the calling worker's connections only.
        """
        return self._own_loop("broadcast()").broadcast(data, exclude)

    @property
    def worker_pids(self) -> List[int]:
        """The process ids of the worker processes alive now ([] with workers=1)."""
        return [] if self._supervisor is None else self._supervisor.worker_pids

    @property
    def running(self) -> bool:
        """True while the loop (with workers: the supervisor) is serving."""
        return self._serving.is_set() and not self._finished.is_set()

    def _own_loop(self, what: str) -> Loop:
        """The loop serving this process's connections: this server's, or in a worker
        process, the worker's."""
        if self._in_worker:
            return self._in_worker[0]._in_process_loop(what)
        return self._in_process_loop(what)

    def _in_process_loop(self, what: str) -> Loop:
        if self._loop is None:
            raise RuntimeError(f"{what} is per worker process: this server has "
                               f"{self.workers} workers")
        return self._loop

    def _where(self) -> str:
        """Where the server listens, for log lines: host:port, [v6]:port or unix:path."""
        if self._listener.family == socket.AF_UNIX:
            return f"unix:{self._ip}"
        host = f"[{self._ip}]" if ":" in self._ip else self._ip
        return f"{host}:{self._port}"

    # ---- serving -------------------------------------------------------------------

    def run(self) -> None:
        """Serve in this thread until stop(), Ctrl-C or (in the main thread) SIGTERM.

        On return every connection, the listening socket and every other descriptor
        the server holds are closed. A server runs once: create a new one to serve
        again. After stop() (even one racing this call) it returns at once.

        With workers, it starts them and supervises them until then; it must be called
        from the main thread (see simpletcp.supervisor).
        """
        if self._supervisor is not None and (threading.current_thread()
                                             is not threading.main_thread()):
            raise RuntimeError("a server with workers must run() in the main thread (its "
                               "supervisor handles SIGCHLD, SIGINT and SIGTERM)")
        if self._claim():
            if self._supervisor is not None:
                self._supervise(self._supervisor)
            else:
                self._serve()

    serve_forever = run

    def start(self) -> "TCPServer":
        """Serve in a background thread; returns once the loop is serving.

        After stop() (even one racing this call) it returns at once, without serving.
        With workers, RuntimeError: forking from a process with several threads is
        unsafe, and the supervisor handles signals, which only the main thread can.
        """
        if self._supervisor is not None:
            raise RuntimeError("a server with workers serves from run() in the main thread, "
                               "not start()")
        if not self._claim():
            return self
        thread = threading.Thread(
            target=self._serve_in_thread, name=f"simpletcp {self._where()}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            # No thread ("can't start new thread"): nothing will serve, or release the
            # port and descriptors, or set _finished for stop() to wait on.
            self._claimed_by = None
            self._never_serve()
            raise
        self._thread = thread
        self._serving.wait()  # set once serving, or when serving could not begin
        self._claimed_by = None  # from now on, stop() in this thread waits as in any other
        if self._start_failure is not None:
            thread.join()
            raise self._start_failure
        return self

    def _claim(self) -> bool:
        """Take the server for run()/start(): False if stop() came first."""
        with self._state:
            if self._started:
                raise RuntimeError("this TCPServer has already been run; create a new one")
            # Before the check of _stopped: a stop() interrupting us from here on leaves
            # the release to us (below) or to the loop, which starts already stopping.
            self._claimed_by = threading.get_ident()
            if self._stopped:
                self._never_serve()
                return False
            self._started = True
            return True

    def _never_serve(self) -> None:
        """Release the port and every other descriptor of a server that will not run."""
        if self._loop is not None:
            self._loop.close()
        self._listener.close()  # with workers, the supervisor's (it will not run either)
        self._remove_unix_socket()
        self._finished.set()

    def _serve(self) -> None:
        loop = self._in_process_loop("_serve")
        self._loop_thread_id = threading.get_ident()
        try:
            # Logged through the loop, which keeps a failing logging handler out of serving.
            loop.log(logging.INFO, "listening on %s (%s)", (self._where(), self.backend))
            # In the main thread, Ctrl-C and SIGTERM stop the server gracefully.
            with _signals.watched(loop) as signal_fd:
                loop.run(self._serving.set, signal_fd)
        finally:
            # run() released every descriptor; this releases them if it never began (the
            # application's signal handler raised before it did).
            loop.close()
            self._remove_unix_socket()
            self._finished.set()
            loop.log(logging.INFO, "stopped serving %s", (self._where(),))

    def _supervise(self, supervisor: Supervisor) -> None:
        self._loop_thread_id = threading.get_ident()
        logger.info("listening on %s with %d workers (%s)", self._where(), self.workers,
                    self.backend)
        self._serving.set()
        try:
            supervisor.run()
        finally:
            # The supervisor's run() closes it, unless a signal handler's exception came
            # out of its first lines, before it took it.
            self._listener.close()
            self._remove_unix_socket()
            self._finished.set()
            logger.info("stopped serving %s", self._where())

    def _serve_in_thread(self) -> None:
        # Nothing may escape a thread: threading would print it to stderr.
        loop = self._in_process_loop("start")
        try:
            self._serve()
        except BaseException as failure:
            if self._serving.is_set():
                loop.log(logging.CRITICAL, "the server loop failed", (), failure)
            else:
                self._start_failure = failure  # start() raises it in its caller
                self._serving.set()

    def _remove_unix_socket(self) -> None:
        """Remove the socket file this server bound (not one that replaced it since)."""
        unix_socket, self._unix_socket = self._unix_socket, None
        if unix_socket is not None:
            _listener.remove_unix_socket(*unix_socket)

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop serving: stop accepting, send what is queued, close everything.

        Final: a server stopped before (or while) it starts never serves. Once stop()
        has returned True the server holds no descriptor.

        A connection whose queue is still held outside the server (a worker that has
        not replied yet) is closed once the queue is let go of; ``grace_period`` bounds
        all the waiting.

        Safe from any thread, from a callback and from a signal handler. Called from a
        thread other than the loop's, it waits (up to ``timeout`` seconds) for run() to
        return, and returns whether it did; from the loop's own thread (a callback, or a
        signal handler while run() serves in the main thread) it returns at once.
        With workers, each worker stops so (they are sent SIGTERM).
        """
        timeout = _arguments.check_wait_seconds(timeout, "timeout")
        with self._state:
            self._stopped = True
            started = self._started
            # This thread runs the loop, or is in run()/start() (a signal handler, or a
            # callback): the loop cannot finish while we wait, and that call releases all.
            own_thread = threading.get_ident() in (self._loop_thread_id, self._claimed_by)
        if self._supervisor is not None:
            if started:
                self._supervisor.stop()
        else:
            self._in_process_loop("stop").request_stop()
        if own_thread:
            return self._finished.is_set()
        if not started:
            self._never_serve()  # it never will serve
            return True
        return self._finished.wait(timeout)

    shutdown = stop

    def close(self) -> None:
        """Stop if serving and release the port (stop() already does both)."""
        self.stop()

    def __enter__(self) -> "TCPServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __repr__(self) -> str:
        state = "serving" if self.running else ("stopped" if self._finished.is_set() else "ready")
        workers = f" workers={self.workers}" if self.workers > 1 else ""
        return f"<TCPServer {self._where()} {state} backend={self.backend}{workers}>"
