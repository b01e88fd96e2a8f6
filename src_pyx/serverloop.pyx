# Loop: waits on the poller, accepts, hands each ready connection its events, runs
# what is due, and stops. What happens on a connection is Connection's (connection.pyx).
#
# Connections are found by descriptor in a C array (no dict on the hot path). Work
# that arrives from outside an I/O event (a put from another thread, or from a
# callback into another connection's queue, a shutdown(), stop()) is listed in
# `scheduled_connections` and done before the loop next waits; if the loop is asleep
# in the poller it is woken through an eventfd.

def raised_by_signal_handler(exc):
    """Whether ``exc`` came out of one of the application's Python signal handlers.

    Python runs a handler in the main thread wherever that thread is, a callback
    included; the handler's frame is then in the exception's traceback. The handlers
    are read from the C module: signal.getsignal() runs Python code (enum conversions)
    in which a pending signal's handler would run, and raise, inside this very check.
    Under memory pressure, with no room to tell: False.
    """
    try:
        codes = set()
        for signum in _csignal.valid_signals():
            handler = None
            try:
                handler = _csignal.getsignal(signum)
            except (OSError, ValueError):
                pass
            code = getattr(handler, "__code__", None) or getattr(
                getattr(handler, "__func__", None), "__code__", None)
            if code is not None:
                codes.add(code)
        traceback = exc.__traceback__
        while traceback is not None:
            if traceback.tb_frame.f_code in codes:
                return True
            traceback = traceback.tb_next
    except MemoryError:
        pass
    return False


cdef class Loop:
    """The compiled server loop; simpletcp.tcpserver.TCPServer is its Python face."""

    def __cinit__(self):
        self.wake_fd = -1
        self.listen_fd = -1
        self.signal_fd = -1
        self.connections = NULL

    def __init__(self, listener, callback, bint callback_takes_ip, Py_ssize_t recv_bytes,
                 str backend, double grace_period, Py_ssize_t high_water,
                 Py_ssize_t low_water, Py_ssize_t connection_limit, double idle_timeout,
                 proxy_header_parser, double proxy_header_timeout, framing=None,
                 on_connect=None, bint on_connect_takes_ip=False, on_disconnect=None,
                 bint on_disconnect_takes_ip=False, ssl_context=None,
                 double ssl_handshake_timeout=60.0, double ssl_shutdown_timeout=30.0):
        # TCPServer owns the arguments: their defaults and checks are there. What is
        # checked here is what memory safety needs (a socket to take a descriptor from,
        # a read buffer of at least one byte).
        if self.listener is not None:
            # A second __init__ would swap the buffer, poller and socket under a loop
            # that may be serving.
            raise RuntimeError("this Loop is already initialized")
        if not isinstance(listener, _Socket):
            raise TypeError(f"listener must be a listening socket.socket, got "
                            f"{type(listener).__name__}")
        if recv_bytes <= 0:
            raise ValueError(f"recv_bytes must be a positive int, got {recv_bytes}")
        self.high_water = high_water
        self.low_water = low_water
        self.connection_limit = connection_limit
        self.drain_condition = threading.Condition()
        # The socket's own descriptor, non-blocking: accept() on a blocking listener
        # would wait with the GIL held, freezing every thread. The C methods, so that a
        # subclass's fileno()/setblocking() cannot name another descriptor or skip it.
        _CSocket.setblocking(listener, False)
        self.listener = listener
        self.listen_fd = _CSocket.fileno(listener)
        self.callback = callback
        self.callback_takes_ip = callback_takes_ip
        self.grace_period = grace_period
        self.scheduled_connections = []
        self.awaiting_workers = []
        self.backed_off_connections = []
        self.timers = Timers.__new__(Timers)
        self.timers.idle_timeout = idle_timeout
        self.timers.proxy_header_timeout = proxy_header_timeout
        self.proxy_header_parser = proxy_header_parser
        self.proxy_log = LogThrottle.__new__(LogThrottle)
        self.accept_error_log = LogThrottle.__new__(LogThrottle)
        self.limit_log = LogThrottle.__new__(LogThrottle)
        self.connection_error_log = LogThrottle.__new__(LogThrottle)
        self.coroutine_log = LogThrottle.__new__(LogThrottle)
        self.reply_log = LogThrottle.__new__(LogThrottle)
        self.memory_log = LogThrottle.__new__(LogThrottle)
        self.events = Events.__new__(Events)
        self.events.on_connect = on_connect
        self.events.on_connect_takes_ip = on_connect_takes_ip
        self.events.on_disconnect = on_disconnect
        self.events.on_disconnect_takes_ip = on_disconnect_takes_ip
        self.events.open_connections = {}
        self.events.unannounced = []
        self.read_buffer = ReadBuffer.__new__(ReadBuffer)
        self.read_buffer.allocate(recv_bytes)
        self.framer = compile_framing(framing)
        self.read_buffer.keeps_large = self.framer is not None
        if ssl_context is not None:
            if _SSLContext is None or not isinstance(ssl_context, _SSLContext):
                raise TypeError(f"ssl_context must be an ssl.SSLContext, got "
                                f"{type(ssl_context).__name__}")
            self.tls = TLSServer.__new__(TLSServer)
            self.tls.context = ssl_context
            self.tls.shutdown_timeout = ssl_shutdown_timeout
            self.tls.attach(self.read_buffer)
            self.timers.tls_handshake_timeout = ssl_handshake_timeout
            self.timers.linger_quiet_seconds = min(LINGER_QUIET_MS / 1000.0,
                                                   ssl_shutdown_timeout)
        # Last: a poller means a whole loop (check_initialized).
        self.poller = make_poller(backend)
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise_errno("eventfd")

    def __dealloc__(self):
        cdef Py_ssize_t fd
        # Its lists' links are references between connections.
        self.timers = None
        if self.connections != NULL:
            for fd in range(self.connections_capacity):
                if self.connections[fd] != NULL:
                    Py_DECREF(<object>self.connections[fd])
            free(self.connections)
        if self.wake_fd >= 0:
            close(self.wake_fd)
        if self.poller is not None:
            self.poller.close()

    @property
    def backend(self):
        """The poller in use: "epoll" or "poll"."""
        self.check_initialized()
        return self.poller.name

    cdef int check_initialized(self) except -1:
        # Loop.__new__(Loop), or an __init__ that raised before making the poller (after
        # the read buffer): nothing to serve with. (An __init__ that failed later left an
        # eventfd of -1, which the poller refuses with an OSError.)
        if self.poller is None:
            raise RuntimeError("this Loop was not initialized (Loop.__init__ did not "
                               "complete)")
        return 0

    # ---- the Python-visible API -----------------------------------------------------

    def run(self, ready=None, int signal_fd=-1):
        """Serve until request_stop() or request_abort(); every descriptor the loop
        holds is closed on return.

        ``ready`` is called once the loop is about to wait for the first time.
        ``signal_fd`` is the read end of signal.set_wakeup_fd's pipe, when the caller
        (TCPServer, through simpletcp._signals) has signals wake the loop: the loop
        drains it and runs the Python signal handlers. An exception raised by one of
        the application's signal handlers stops the loop gracefully, and is raised
        again here once everything is closed.
        """
        self.check_initialized()
        if self.running or self.finished:
            raise RuntimeError("this loop has already run; a server serves once")
        self.running = True
        self.thread_ident = PyThread_get_thread_ident()
        self.now = monotonic()
        try:
            self.poller.register(self.wake_fd, READABLE)
            self.poller.register(self.listen_fd, READABLE)
            self.accepting = True
            if signal_fd >= 0:
                self.poller.register(signal_fd, READABLE)
                self.signal_fd = signal_fd
            if ready is not None:
                ready()
            self.serve_until_closed()
        finally:
            self.teardown()
            self.signal_fd = -1  # the caller closes it
        if self.stop_cause is not None:
            cause, self.stop_cause = self.stop_cause, None
            raise cause

    def request_stop(self, str signal_name=None):
        """Ask the loop to stop gracefully: safe from any thread, a callback or a signal
        handler. ``signal_name``: the stop signal that asks, which the loop logs as it
        begins to stop; a signal handler must not log itself (it may run inside a write
        to the log's stream, which refuses to be re-entered)."""
        if signal_name is not None and self.stop_asked_by is None:
            self.stop_asked_by = signal_name
        self.stop_requested = True
        self.wake()

    def request_abort(self, str signal_name=None):
        """Ask the loop to close every connection now, without waiting (a second stop
        signal): safe from any thread, a callback or a signal handler. ``signal_name``
        as for request_stop()."""
        if signal_name is not None and self.abort_asked_by is None:
            self.abort_asked_by = signal_name
        self.abort_requested = True
        self.wake()

    def open_queues(self):
        """The queues of the open connections (from OPEN until CLOSED), oldest first:
        a snapshot, safe to take from any thread."""
        self.check_initialized()
        return self.events.open_queues()

    def broadcast(self, data, exclude=None):
        """Put bytes-like `data` to every open connection but `exclude` (a queue, or
        None), from any thread, never waiting; return the queues left out because their
        unsent output is at or above high_water."""
        self.check_initialized()
        return self.events.broadcast(data, exclude)

    def close(self):
        """Release every descriptor of a loop that is not running (it never will)."""
        if self.running:
            raise RuntimeError("the loop is running: request_stop() it")
        self.finished = True
        self.release_descriptors()

    # ---- the loop -------------------------------------------------------------------

    cdef int serve_until_closed(self) except -1:
        """serve(), carrying on past what may escape it: a MemoryError of the loop's own
        bookkeeping (each connection's are handled where they happen), or an exception
        that Python code the loop called let out (an application's signal handler runs
        wherever the main thread is)."""
        while True:
            try:
                self.serve()
                return 0
            except MemoryError:
                if self.memory_log.report_due():
                    self.log(logging.ERROR, "out of memory in the server loop; going on%s",
                             (since_last(self.memory_log.skipped, "times"),))
                with nogil:
                    usleep(MEMORY_RETRY_MS * 1000)
            except BaseException as cause:
                self.stop_for(cause)
            if self.stopping and self.timers.expired(GRACE_PERIOD, monotonic()):
                self.teardown_connections(GRACE_EXPIRED)
                return 0

    cdef int serve(self) except -1:
        """Run until stopping and every connection is closed, or the grace period ends."""
        cdef int n, timeout
        cdef double deadline
        cdef Poller poller = self.poller
        while True:
            if self.abort_requested:
                self.log_stop_request()
                self.log_abort_request()
                self.teardown_connections(SERVER_ABORTED)
                return 0
            if self.stop_requested and not self.stopping:
                self.log_stop_request()
                self.begin_stop()
            if self.scheduled_connections:
                self.serve_scheduled()
                # Serving may have let other threads run (TLS releases the GIL in
                # OpenSSL, a logging handler may block): a stop() or put() of theirs
                # found the loop not `sleeping` and did not wake it. Look again.
                continue
            if self.events.unannounced:
                # on_disconnect, outside the loop's own work; what it did (stop(), puts
                # to other connections, their shutdown()) is served from the top.
                self.events.announce_closed()
                continue
            if self.stopping and self.connection_count == 0:
                return 0
            timeout = -1
            deadline = self.timers.next_deadline()
            if deadline:
                self.now = monotonic()
                if deadline <= self.now:
                    self.run_expired_timers()
                    continue
                timeout = <int>(min(deadline - self.now, LONGEST_WAIT_MS / 1000.0) * 1000) + 1
            # Nothing between the check of `scheduled` above and the wait may run Python
            # code: a put() from another thread slipping in there would find the loop not
            # yet `sleeping`, skip the wake-up, and wait unserved.
            self.sleeping = True
            n = poller.wait(timeout)
            self.sleeping = False
            self.now = monotonic()
            if n < 0:
                self.run_signal_handlers()
                continue
            self.handle_ready(n)

    cdef int handle_ready(self, int count) except -1:
        """The I/O of the `count` descriptors the poller found ready: handle() for each,
        with one try block per turn rather than one per event (the hot path)."""
        cdef Poller poller = self.poller
        cdef Connection connection = None
        cdef int i = 0, fd, events
        while i < count:
            try:
                while i < count:
                    fd = poller.ready_fd[i]
                    events = poller.ready_events[i]
                    i += 1
                    if fd < self.connections_capacity and self.connections[fd] != NULL:
                        connection = <Connection>self.connections[fd]
                        connection.on_events(events)
                        connection = None
                    elif fd == self.listen_fd:
                        self.accept_connections()
                    elif fd == self.wake_fd:
                        self.drain_wakeups()
                    elif fd == self.signal_fd:
                        self.drain_signals()
            except BaseException as error:
                if connection is None:
                    raise  # the loop's own work, not one connection's
                self.connection_failed(connection, error)
                connection = None
        return 0

    cdef int handle(self, Connection connection, int events) except -1:
        """One connection's work for `events` (Connection.on_events). An error in it
        (the poller's bookkeeping, a MemoryError) closes that connection only: any
        exception, as for a callback (Connection.call_callback), since Python code the
        loop calls for it may raise anything (a TLS context's msg_callback, run inside
        OpenSSL's calls, a SystemExit); connection_failed tells the application's signal
        handlers' apart, which stop the server."""
        try:
            connection.on_events(events)
        except BaseException as error:
            self.connection_failed(connection, error)
        return 0

    cdef int connection_failed(self, Connection connection, object error) except -1:
        cdef int fd = connection.fd
        if raised_by_signal_handler(error):
            # The application's signal handler ran inside Python code the loop called
            # for this connection (logging, a lock, a __del__) and raised: the
            # application's request, not this connection's failure. The connection goes
            # on; what the interrupted turn left undone, its next event does.
            return self.stop_for(error)
        connection.abort(LOOP_ERROR)  # before saying so, which may fail in turn (out of memory)
        try:
            self.log_connection_error(f"fd {fd}", f"closed after an error: {error!r}")
        except MemoryError:
            pass
        return 0

    # ---- accepting ------------------------------------------------------------------

    cdef int accept_connections(self) except -1:
        cdef sockaddr_storage address
        cdef socklen_t address_len
        cdef int fd, error
        cdef int accepts_left = ACCEPT_BATCH
        while accepts_left:
            accepts_left -= 1
            address_len = sizeof(address)
            fd = accept4(self.listen_fd, <sockaddr *>&address, &address_len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                error = errno
                if would_block(error):
                    return 0
                if (error == EINTR or error == ECONNABORTED or error == ECONNRESET
                        or error == EPROTO or error == EPERM):
                    continue  # a signal, or one connection that died in the backlog
                # EMFILE/ENFILE/ENOBUFS/ENOMEM, or anything unexpected: the listener
                # stays readable, so retrying at once would spin.
                self.pause_accepting(error)
                return 0
            if self.connection_limit and self.connection_count >= self.connection_limit:
                # A refused connection has been sent nothing, so there is nothing to
                # protect: reset it at once (the clear signal, whether or not it already
                # sent a request), rather than hold a descriptor for it.
                reset_and_close(fd)
                if self.limit_log.report_due():
                    self.log(logging.WARNING, "connection limit (%d) reached: closing new "
                             "connections at once until one ends%s",
                             (self.connection_limit,
                              since_last(self.limit_log.skipped, "connections closed")))
                continue
            self.adopt(fd, &address)
        return 0

    cdef int adopt(self, int fd, sockaddr_storage *address) except -1:
        cdef int one = 1
        cdef Connection connection = None
        cdef object failure = None
        if address.ss_family == AF_INET or address.ss_family == AF_INET6:
            # Replies are often written in pieces; Nagle would hold the last one back
            # until the peer's delayed ACK (~40 ms).
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        # No return inside the except clause: Cython's return path there assumes the
        # exception has a traceback, which it lacks when making one ran out of memory.
        try:
            connection = Connection.__new__(Connection)
            connection.remember_peer(address, self.callback_takes_ip)
            if self.tls is not None:
                connection.tls = self.tls.wrap()  # its SSLObject (OpenSSL may be short of memory)
            self.reserve_slot(fd)
            self.poller.register(fd, READABLE)
        except Exception as error:
            failure = error
        if failure is not None:
            # Out of memory, or the poller refused it: this connection cannot be served.
            reset_and_close(fd)
            if self.connection_error_log.report_due():
                self.log(logging.WARNING, "could not take a new connection: %r", (failure,))
            return 0
        # In the table before its life begins: on_connect (in begin_life) may close it.
        Py_INCREF(connection)
        self.connections[fd] = <PyObject *>connection
        self.connection_count += 1
        try:
            connection.begin_life(self, fd)
        except Exception as error:
            failure = error
        if failure is not None:
            # Not returned from inside the except clause: with no memory left for the
            # exception's traceback, Cython's cleanup of that clause crashed.
            return self.connection_failed(connection, failure)
        if self.events.on_connect is not None:
            self.handle(connection, WRITABLE)  # what on_connect put, or its close
        return 0

    cdef int reject_proxy_header(self, Connection connection, str why) except -1:
        """A connection that should start with a PROXY header did not (malformed, too
        long, too late): reset it (nothing was owed to it) and say so, at most once per
        10 s with a count (a scanner would otherwise flood the log)."""
        if self.proxy_log.report_due():
            self.log(logging.WARNING, "closing connection %s: %s%s",
                     (connection.describe(), why,
                      since_last(self.proxy_log.skipped, "more rejected")))
        connection.abort(PROXY_HEADER_REJECTED)
        return 0

    cdef int reserve_slot(self, int fd) except -1:
        cdef Py_ssize_t new_capacity, i
        cdef PyObject **grown
        if fd < self.connections_capacity:
            return 0
        new_capacity = max(1024, self.connections_capacity * 2, fd + 1)
        grown = <PyObject **>realloc(self.connections, new_capacity * sizeof(PyObject *))
        if grown == NULL:
            raise MemoryError()
        for i in range(self.connections_capacity, new_capacity):
            grown[i] = NULL
        self.connections = grown
        self.connections_capacity = new_capacity
        return 0

    cdef void remove(self, Connection connection, int fd):
        """Take a connection that is closing out of the loop (Connection.close calls it):
        its slot, its registration and its descriptor `fd`; then let go of it."""
        cdef PyObject *owned = self.connections[fd]
        # The C-level state first: the Python calls below may run a signal handler
        # that raises, and what is done by then must be whole.
        self.connections[fd] = NULL
        self.connection_count -= 1
        self.poller.unregister(fd)
        close(fd)
        try:
            if connection.waiters:
                connection.wake_waiters()  # blocked put()s return; what they put is dropped
            self.events.closed(connection)  # its on_disconnect is due
            # The queue points back at the connection; letting go of it here breaks the
            # cycle, so closed connections are freed at once rather than by the cyclic GC.
            connection.queue = None
            if self.timers.running(ACCEPT_RETRY) and not self.stopping:
                self.resume_accepting()  # a descriptor was just freed
        finally:
            Py_DECREF(<object>owned)

    cdef void pause_accepting(self, int error):
        # The listening socket stays readable while the backlog is full, so it must
        # leave the poller or the loop would spin at 100% CPU.
        if self.accept_error_log.report_due():
            self.log(logging.ERROR, "accept() failed: %s; not accepting new connections until "
                     "a descriptor is free or %g s have passed%s",
                     (strerror(error).decode(), ACCEPT_RETRY_MS / 1000.0,
                      since_last(self.accept_error_log.skipped, "failures")))
        if self.accepting:
            self.poller.unregister(self.listen_fd)
            self.accepting = False
        self.timers.start(ACCEPT_RETRY, monotonic() + ACCEPT_RETRY_MS / 1000.0)

    cdef void resume_accepting(self):
        cdef int error = 0
        self.timers.cancel(ACCEPT_RETRY)
        if not self.accepting and not self.stopping:
            try:
                self.poller.register(self.listen_fd, READABLE)
            except OSError as failure:
                error = failure.errno or ENOMEM
            except MemoryError:
                error = ENOMEM
            if error:
                self.pause_accepting(error)
            else:
                self.accepting = True

    # ---- work from outside an I/O event ---------------------------------------------

    cdef int schedule(self, Connection connection) except -1:
        if not connection.scheduled:
            connection.scheduled = True
            self.scheduled_connections.append(connection)
        self.wake()
        return 0

    cdef int serve_scheduled(self) except -1:
        cdef list batch
        cdef Connection connection
        while self.scheduled_connections:
            batch = self.scheduled_connections
            self.scheduled_connections = []
            for connection in batch:
                connection.scheduled = False
                self.handle(connection, WRITABLE)
        return 0

    cdef void wake(self):
        # Only a loop asleep in the poller needs the eventfd; one that is running
        # checks `scheduled` and `stop_requested` before it next waits.
        cdef uint64_t one = 1
        if self.sleeping and not self.wake_pending and self.wake_fd >= 0:
            self.wake_pending = True
            write(self.wake_fd, &one, sizeof(one))

    cdef void drain_wakeups(self):
        cdef uint64_t count = 0  # read into, never looked at
        read(self.wake_fd, &count, sizeof(count))
        self.wake_pending = False

    # ---- timers (what run_expired_timers runs) --------------------------------------

    cdef int run_expired_timers(self) except -1:
        """Whatever timed thing is due at self.now (Timers): grace period, workers'
        replies, accept retry, I/O retry, idle and lingering connections."""
        cdef Timers timers = self.timers
        cdef Py_ssize_t expired = 0
        cdef Connection connection
        if timers.expired(GRACE_PERIOD, self.now):
            self.log(logging.WARNING, "grace period over: closing %d connections with unsent "
                     "output or a queue still held", (self.connection_count,))
            self.teardown_connections(GRACE_EXPIRED)
            return 0
        if timers.expired(WORKER_CHECK, self.now):
            self.check_awaiting_workers()
        if timers.expired(ACCEPT_RETRY, self.now):
            self.resume_accepting()
        if timers.expired(IO_RETRY, self.now):
            self.retry_backed_off()
        while timers.idle_expired(self.now):
            # A reference of our own for the call: closing it takes it out of the list
            # and the slot table, which would free it while its method runs.
            connection = timers.idle.oldest
            connection.on_idle_timeout()
            expired += 1
        if expired:
            self.log(logging.INFO, "closed %d connections idle for more than %g s",
                     (expired, timers.idle_timeout))
        while timers.proxy_header_late(self.now):
            self.reject_proxy_header(timers.awaiting_proxy_header.oldest,
                                     f"no PROXY header within {timers.proxy_header_timeout:g} s")
        while timers.tls_handshake_late(self.now):
            connection = timers.awaiting_tls_handshake.oldest
            connection.tls.reject_late_handshake(connection)
        while timers.linger_quiet(self.now):
            connection = timers.lingering.oldest
            try:
                connection.on_linger_quiet()
            except Exception as error:
                self.connection_failed(connection, error)
        return 0

    cdef int await_worker(self, Connection connection) except -1:
        """While stopping, keep a connection open as long as code outside holds its queue.

        A callback may hand the queue to a worker and return; if the server is asked to
        stop before the worker replies, closing at once would lose the reply. The
        connection waits for the queue to be let go of; the stop's grace period bounds
        the wait (the GRACE_PERIOD timer closes whatever is left then).
        """
        if not self.awaiting_workers:
            # Nothing signals that a worker let go of a queue: look now and then.
            self.worker_check_interval = WORKER_CHECK_MS / 1000.0
            self.timers.start(WORKER_CHECK, self.now + self.worker_check_interval)
        self.awaiting_workers.append(connection)
        return 0

    cdef int check_awaiting_workers(self) except -1:
        cdef list waiting = []
        cdef Connection connection
        for connection in self.awaiting_workers:
            if connection.state == AWAITING_WORKER and not connection.owed():
                self.handle(connection, WRITABLE)  # closes or lingers once let go of
            if connection.state == AWAITING_WORKER:
                waiting.append(connection)  # a late reply is going out, or may yet come
        if len(waiting) < len(self.awaiting_workers):
            self.worker_check_interval = WORKER_CHECK_MS / 1000.0
        else:
            self.worker_check_interval = min(2 * self.worker_check_interval,
                                             WORKER_CHECK_LONGEST_MS / 1000.0)
        self.awaiting_workers = waiting
        if waiting:
            self.timers.start(WORKER_CHECK, self.now + self.worker_check_interval)
        else:
            self.timers.cancel(WORKER_CHECK)
        return 0

    cdef int back_off(self, Connection connection) except -1:
        """The kernel said ENOBUFS/ENOMEM to this connection's I/O: try again shortly."""
        if not connection.backing_off:
            connection.backing_off = True
            self.backed_off_connections.append(connection)
            if not self.timers.running(IO_RETRY):
                self.timers.start(IO_RETRY, monotonic() + IO_RETRY_MS / 1000.0)
        return 0

    cdef int retry_backed_off(self) except -1:
        cdef list batch = self.backed_off_connections
        cdef Connection connection
        self.backed_off_connections = []
        self.timers.cancel(IO_RETRY)
        for connection in batch:
            connection.backing_off = False
            if connection.fd >= 0:
                self.handle(connection, READABLE)  # reads if it should, then sends
        return 0

    # ---- stopping -------------------------------------------------------------------

    cdef int stop_for(self, BaseException cause) except -1:
        """The application raised ``cause`` from a signal handler: stop gracefully, then
        let run() raise it."""
        if self.stop_cause is None:
            self.stop_cause = cause
            self.log(logging.INFO, "a signal handler raised %r: stopping", (cause,))
        self.request_stop()
        return 0

    cdef int begin_stop(self) except -1:
        """Stop accepting and reading; each connection closes once its output is sent."""
        cdef Py_ssize_t fd
        cdef Connection connection
        self.stopping = True
        self.timers.start(GRACE_PERIOD, monotonic() + self.grace_period)
        self.timers.cancel(ACCEPT_RETRY)
        if self.accepting:
            self.poller.unregister(self.listen_fd)
            self.accepting = False
        self.listener.close()  # new clients are refused rather than left in the backlog
        for fd in range(self.connections_capacity):
            if self.connections[fd] != NULL:
                connection = <Connection>self.connections[fd]
                connection.begin_close(SERVER_STOPPING)
                self.handle(connection, WRITABLE)
        return 0

    cdef int log_stop_request(self) except -1:
        if self.stop_asked_by is not None:
            self.log(logging.INFO, "%s: stopping", (self.stop_asked_by,))
            self.stop_asked_by = None
        return 0

    cdef int log_abort_request(self) except -1:
        if self.abort_asked_by is not None:
            self.log(logging.WARNING, "%s again: closing %d connections without waiting",
                     (self.abort_asked_by, self.connection_count))
            self.abort_asked_by = None
        return 0

    cdef void teardown_connections(self, CloseReason reason):
        """Close every connection now: those with output unsent are reset, so that
        their peers cannot take what they got for whole replies."""
        cdef Py_ssize_t fd
        cdef Connection connection
        for fd in range(self.connections_capacity):
            if self.connections[fd] != NULL:
                connection = <Connection>self.connections[fd]
                if connection.owed():
                    connection.abort(reason)
                else:
                    connection.close(reason)

    cdef void teardown(self):
        self.teardown_connections(SERVER_ABORTED)
        self.events.announce_closed()  # every on_disconnect before run() returns
        self.scheduled_connections = []
        self.awaiting_workers = []
        self.backed_off_connections = []
        self.running = False
        self.finished = True
        self.release_descriptors()

    cdef void release_descriptors(self):
        """Close the listener, the poller and the eventfd: a finished loop holds none."""
        cdef int fd = self.wake_fd
        try:
            self.listener.close()
        except Exception:
            pass
        if self.poller is not None:  # None in a Loop whose __init__ never got that far
            self.poller.close()
        if fd >= 0:
            self.wake_fd = -1  # wake() checks it: no write to a number reused since
            close(fd)

    # ---- signals (simpletcp._signals installs the handlers; the loop runs them) -------

    cdef int drain_signals(self) except -1:
        cdef char sink[64]
        while read(self.signal_fd, sink, sizeof(sink)) > 0:
            pass
        return self.run_signal_handlers()

    cdef int run_signal_handlers(self) except -1:
        try:
            PyErr_CheckSignals()  # runs the Python handlers
        except BaseException as cause:
            self.stop_for(cause)
        return 0

    # ---- logging --------------------------------------------------------------------

    cpdef int log(self, int level, str message, tuple args=(), object exc_info=None) except -1:
        """Log on the "simpletcp" logger, whatever the application's handlers do.

        Handlers are the application's code, run in whichever thread logs: what one
        raises (a log shipper whose network is down) must not change what the server
        does, such as reset the reply of the connection being reported, or stop the
        server. It goes to sys.unraisablehook, as the logging module's own handlers
        report their failures (unless logging.raiseExceptions is off). An exception of
        the application's signal handler, run inside the handler, is the application's
        request: in the serving loop it stops the server (stop_for); elsewhere it is
        raised to the caller.
        """
        cdef object failure = None
        try:
            logger.log(level, message, *args, exc_info=exc_info)
        except MemoryError:
            pass  # out of memory to say so
        except BaseException as error:
            failure = error
        if failure is not None:
            self.logging_failed(failure)
        return 0

    cdef int logging_failed(self, BaseException failure) except -1:
        if not raised_by_signal_handler(failure):
            if logging.raiseExceptions:
                PyErr_SetObject(type(failure), failure)
                PyErr_WriteUnraisable(logger)
            return 0
        if self.running and PyThread_get_thread_ident() == self.thread_ident:
            return self.stop_for(failure)
        raise failure

    cdef int log_connection_error(self, str described, str what) except -1:
        if self.connection_error_log.report_due():
            self.log(logging.WARNING, "connection %s: %s%s",
                     (described, what,
                      since_last(self.connection_error_log.skipped, "connection errors")))
        return 0
