"""TCPServer: the original simpleTCP API over simpletcp's compiled epoll loop.

This module owns the arguments (their defaults and checks), binds the socket and
manages threads and signals (simpletcp._signals); the serving itself happens in :mod:`simpletcp._loop` (Cython). There is no pure-Python loop to
fall back to: if the extension is missing, importing this module fails.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable, Optional

from simpletcp import _address, _arguments, _callback, _signals
from simpletcp._loop import BACKENDS, ConnectionQueue, Loop, ShutDown

__all__ = ["TCPServer", "ConnectionQueue", "ShutDown", "BACKENDS"]

#: How long stop() waits for queued replies to go out before closing connections.
DEFAULT_GRACE_PERIOD = 5.0
#: Unsent output per connection above which the server stops reading from it.
DEFAULT_HIGH_WATER = 1024 * 1024


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
    """

    def __init__(
        self,
        mode: str,
        port: int,
        read_callback: Callable[..., Any],
        maximum_connections: Optional[int] = None,
        recv_bytes: int = 2048,
        *,
        backend: str = "auto",
        grace_period: float = DEFAULT_GRACE_PERIOD,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: Optional[int] = None,
        connection_limit: Optional[int] = None,
        idle_timeout: Optional[float] = None,
    ) -> None:
        port = _arguments.check_int(port, "port", 0, 65535)
        takes_ip = _callback.takes_ip(read_callback)
        _callback.check_runs_when_called(read_callback)
        if maximum_connections is None:
            maximum_connections = socket.SOMAXCONN
        maximum_connections = _arguments.check_int(
            maximum_connections, "maximum_connections", 1, _arguments.MAX_C_INT)
        recv_bytes = _arguments.check_int(recv_bytes, "recv_bytes", 1, _arguments.MAX_RECV_BYTES)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
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

        family, sockaddr = _address.resolve(mode, port, passive=True)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Restarting a server must not wait out TIME_WAIT on its own port.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(sockaddr)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot bind {sockaddr[0]}:{sockaddr[1]} (mode {mode!r}, "
                    f"port {port}): {exc.strerror}"
                ) from exc
            listener.listen(maximum_connections)
            listener.setblocking(False)
            self._loop = Loop(
                listener, read_callback, takes_ip, recv_bytes, backend, grace_period,
                high_water, low_water, connection_limit or 0, idle_timeout or 0.0,
            )
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        bound = listener.getsockname()
        self._ip: str = bound[0]
        self._port: int = bound[1]
        self.mode = mode
        self.read_callback = read_callback
        self.maximum_connections = maximum_connections
        self.recv_bytes = recv_bytes
        self.grace_period = grace_period
        self.high_water = high_water
        self.low_water = low_water
        self.connection_limit = connection_limit
        self.idle_timeout = idle_timeout
        self._state = threading.Lock()  # guards _started and _stopped
        self._started = False  # run() or start() has claimed the server
        self._stopped = False  # stop() has been called: final
        self._serving = threading.Event()
        self._finished = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._loop_thread_id: Optional[int] = None
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
        return self._loop.backend

    @property
    def connection_count(self) -> int:
        """How many connections are open now."""
        return self._loop.connection_count

    @property
    def running(self) -> bool:
        """True while the loop is serving."""
        return self._serving.is_set() and not self._finished.is_set()

    # ---- serving -------------------------------------------------------------------

    def run(self) -> None:
        """Serve in this thread until stop(), Ctrl-C or (in the main thread) SIGTERM.

        On return every connection, the listening socket and every other descriptor
        the server holds are closed. A server runs once: create a new one to serve
        again. After stop() (even one racing this call) it returns at once.
        """
        if self._claim():
            self._serve()

    serve_forever = run

    def start(self) -> "TCPServer":
        """Serve in a background thread; returns once the loop is serving.

        After stop() (even one racing this call) it returns at once, without serving.
        """
        if not self._claim():
            return self
        thread = threading.Thread(
            target=self._serve_in_thread, name=f"simpletcp {self._ip}:{self._port}", daemon=True
        )
        self._thread = thread
        thread.start()
        self._serving.wait()  # set once serving, or when serving could not begin
        if self._start_failure is not None:
            thread.join()
            raise self._start_failure
        return self

    def _claim(self) -> bool:
        """Take the server for run()/start(): False if stop() came first."""
        with self._state:
            if self._started:
                raise RuntimeError("this TCPServer has already been run; create a new one")
            if self._stopped:
                return False
            self._started = True
            return True

    def _serve(self) -> None:
        self._loop_thread_id = threading.get_ident()
        try:
            # Logged through the loop, which keeps a failing logging handler out of serving.
            self._loop.log(logging.INFO, "listening on %s:%d (%s)",
                           (self._ip, self._port, self.backend))
            # In the main thread, Ctrl-C and SIGTERM stop the server gracefully.
            with _signals.watched(self._loop) as signal_fd:
                self._loop.run(self._serving.set, signal_fd)
        finally:
            # run() released every descriptor; this releases them if it never began (the
            # application's signal handler raised before it did).
            self._loop.close()
            self._finished.set()
            self._loop.log(logging.INFO, "stopped serving %s:%d", (self._ip, self._port))

    def _serve_in_thread(self) -> None:
        # Nothing may escape a thread: threading would print it to stderr.
        try:
            self._serve()
        except BaseException as failure:
            if self._serving.is_set():
                self._loop.log(logging.CRITICAL, "the server loop failed", (), failure)
            else:
                self._start_failure = failure  # start() raises it in its caller
                self._serving.set()

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
        """
        timeout = _arguments.check_wait_seconds(timeout, "timeout")
        with self._state:
            self._stopped = True
            started = self._started
        self._loop.request_stop()
        if not started:
            # It never will serve: release the port and every other descriptor now.
            self._loop.close()
            self._finished.set()
            return True
        if threading.get_ident() == self._loop_thread_id:
            return self._finished.is_set()
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
        return f"<TCPServer {self._ip}:{self._port} {state} backend={self.backend}>"
