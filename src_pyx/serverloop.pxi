# Loop: accepts, reads, calls the user's callback, and sends what it queued.
#
# Connections are found by descriptor in a C array (no dict on the hot path). Work
# that arrives from outside an I/O event (a put from another thread, or from a
# callback into another connection's queue, a shutdown(), stop()) is listed in
# `scheduled` and done before the loop next waits; if the loop is asleep in the
# poller it is woken through an eventfd.

# Connections accepted per readiness of the listening socket before others are served.
DEF ACCEPT_BATCH = 128
# After accept() fails for want of descriptors or memory (or for a reason it should
# not): how long accepting pauses if no descriptor is freed sooner.
DEF ACCEPT_RETRY_SECONDS = 0.1
# How often connections waiting for a worker's reply while stopping are looked at: at
# first and after one was let go of; while none is, the interval doubles up to the
# longest (a look is a turn of the loop, over every descriptor on poll).
DEF WORKER_CHECK_INTERVAL = 0.01
DEF WORKER_CHECK_LONGEST = 0.32
# After send()/recv() said ENOBUFS/ENOMEM: how long the connection's I/O waits before
# it is tried again (not at once: the kernel's shortage would turn into a busy loop).
DEF IO_RETRY_SECONDS = 0.02
# After a MemoryError in the loop's own bookkeeping: how long it pauses before going on.
DEF MEMORY_RETRY_SECONDS = 0.01
# The longest one wait of the poller lasts when a deadline is set: its timeout is a C int
# of milliseconds, which a deadline more than 24.8 days away would overflow (into a
# negative number: wait forever). Waking up once a day to look again costs nothing.
DEF LONGEST_WAIT_SECONDS = 86400.0


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


cdef str format_peer_ip(sockaddr_storage *addr):
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef const char *ok = NULL
    if addr.ss_family == AF_INET:
        ok = inet_ntop(AF_INET, &(<sockaddr_in *>addr).sin_addr, text, sizeof(text))
    elif addr.ss_family == AF_INET6:
        ok = inet_ntop(AF_INET6, &(<sockaddr_in6 *>addr).sin6_addr, text, sizeof(text))
    if ok == NULL:
        return ""
    return (<bytes>text).decode("ascii")


@cython.final
cdef class Loop:
    """The compiled server loop; simpletcp.tcpserver.TCPServer is its Python face."""

    cdef Poller poller
    cdef object listener          # the listening socket.socket, closed when stopping
    cdef int listen_fd
    cdef int wake_fd
    cdef int signal_fd            # read end of signal.set_wakeup_fd's pipe, or -1
    cdef int signal_write_fd
    cdef object callback
    cdef bint callback_takes_ip
    cdef char *read_buffer
    cdef Py_ssize_t recv_bytes
    cdef bytes spare_data         # the last data handed to a callback, to reuse if we can
    cdef double grace_period
    cdef Py_ssize_t high_water       # per connection, bytes of unsent output
    cdef Py_ssize_t low_water
    cdef Py_ssize_t connection_limit # 0: no limit
    cdef double idle_timeout         # 0: none
    cdef object drain_condition      # put()s from other threads wait on it

    cdef PyObject **connections   # owned references, indexed by descriptor
    cdef Py_ssize_t connections_capacity
    cdef readonly Py_ssize_t connection_count

    cdef list scheduled           # connections with work from outside an I/O event
    cdef list awaiting_workers    # while stopping: connections waiting for a worker's reply
    cdef double next_worker_check
    cdef double worker_check_interval
    cdef ActivityList lingering   # connections in a lingering close (Connection.start_lingering)
    cdef list backing_off         # connections whose I/O waits out ENOBUFS/ENOMEM
    cdef double retry_at          # when they are tried again; 0: none waiting
    cdef Connection dispatching   # whose callback is running now, if any
    cdef unsigned long thread_ident

    cdef readonly bint running
    cdef bint finished
    cdef bint sleeping            # blocked in the poller with the GIL released
    cdef bint wake_pending        # an eventfd write is on its way
    cdef bint stop_requested
    cdef bint abort_requested     # a second Ctrl-C/SIGTERM: close everything without waiting
    cdef bint stopping
    cdef object stop_cause        # an exception of the application's that stopped the loop
    cdef double stop_deadline
    cdef bint accepting           # the listening socket is registered
    cdef double accept_resume_at  # 0, or when to retry after EMFILE/ENFILE
    cdef LogThrottle accept_error_log
    cdef LogThrottle limit_log    # "connection limit reached"
    cdef LogThrottle coroutine_log  # "read_callback returned a coroutine"
    cdef LogThrottle connection_error_log  # unexpected errors of single connections
    cdef LogThrottle memory_log   # the loop's own bookkeeping out of memory

    cdef ActivityList idle        # with an idle timeout: connections not yet closing
    cdef object proxy_header_parser  # proxy_protocol: proxyprotocol.parse_header, else None
    cdef double proxy_header_timeout
    cdef ActivityList awaiting_proxy_header  # connections in AWAITING_PROXY_HEADER, oldest first
    cdef LogThrottle proxy_log    # "bad PROXY header"
    cdef double now               # monotonic time, read once per turn of the loop

    cdef object restore_signals   # what watch_signals() replaced, to put back

    def __cinit__(self):
        self.wake_fd = -1
        self.listen_fd = -1
        self.signal_fd = self.signal_write_fd = -1
        self.read_buffer = NULL
        self.connections = NULL

    def __init__(self, listener, callback, bint callback_takes_ip, Py_ssize_t recv_bytes,
                 str backend="auto", double grace_period=5.0,
                 Py_ssize_t high_water=1 << 20, Py_ssize_t low_water=1 << 18,
                 Py_ssize_t connection_limit=0, double idle_timeout=0,
                 proxy_header_parser=None, double proxy_header_timeout=5.0):
        if self.listener is not None:
            # A second __init__ would swap the buffer, poller and socket under a loop
            # that may be serving.
            raise RuntimeError("this Loop is already initialized")
        if not isinstance(listener, _Socket):
            raise TypeError(f"listener must be a listening socket.socket, got "
                            f"{type(listener).__name__}")
        if recv_bytes <= 0:
            raise ValueError(f"recv_bytes must be a positive int, got {recv_bytes}")
        if not 0 <= low_water <= high_water or high_water <= 0:
            raise ValueError(f"need 0 <= low_water <= high_water and high_water > 0, "
                             f"got low_water={low_water}, high_water={high_water}")
        self.high_water = high_water
        self.low_water = low_water
        self.connection_limit = connection_limit
        self.idle_timeout = idle_timeout
        self.drain_condition = threading.Condition()
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        self.listener = listener
        self.listen_fd = listener.fileno()
        self.callback = callback
        self.callback_takes_ip = callback_takes_ip
        self.recv_bytes = recv_bytes
        self.grace_period = grace_period
        self.scheduled = []
        self.awaiting_workers = []
        self.lingering = ActivityList.__new__(ActivityList)
        self.backing_off = []
        self.idle = ActivityList.__new__(ActivityList)
        if proxy_header_parser is not None and not callable(proxy_header_parser):
            raise TypeError("proxy_header_parser must be callable or None")
        if not proxy_header_timeout > 0:
            raise ValueError(f"proxy_header_timeout must be more than 0, got {proxy_header_timeout}")
        self.proxy_header_parser = proxy_header_parser
        self.proxy_header_timeout = proxy_header_timeout
        self.awaiting_proxy_header = ActivityList.__new__(ActivityList)
        self.proxy_log = LogThrottle.__new__(LogThrottle)
        self.accept_error_log = LogThrottle.__new__(LogThrottle)
        self.limit_log = LogThrottle.__new__(LogThrottle)
        self.connection_error_log = LogThrottle.__new__(LogThrottle)
        self.coroutine_log = LogThrottle.__new__(LogThrottle)
        self.memory_log = LogThrottle.__new__(LogThrottle)
        self.read_buffer = <char *>malloc(recv_bytes)
        if self.read_buffer == NULL:
            raise MemoryError()
        self.poller = make_poller(backend)
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise_errno("eventfd")

    def __dealloc__(self):
        cdef Py_ssize_t fd
        self.idle = self.lingering = self.awaiting_proxy_header = None  # their links are references between connections
        if self.connections != NULL:
            for fd in range(self.connections_capacity):
                if self.connections[fd] != NULL:
                    Py_DECREF(<object>self.connections[fd])
            free(self.connections)
        free(self.read_buffer)
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

    def run(self, ready=None):
        """Serve until request_stop(), Ctrl-C or SIGTERM; every descriptor the loop holds
        is closed on return.

        ``ready`` is called once the loop is about to wait for the first time. An
        exception raised by one of the application's signal handlers stops the loop
        gracefully, and is raised again here once everything is closed.
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
            if threading.current_thread() is threading.main_thread():
                self.watch_signals()
            if ready is not None:
                ready()
            self.serve_until_closed()
        finally:
            self.teardown()
            if self.restore_signals is not None:
                self.unwatch_signals()
        if self.stop_cause is not None:
            cause, self.stop_cause = self.stop_cause, None
            raise cause

    def request_stop(self):
        """Ask the loop to stop: safe from any thread, a callback or a signal handler."""
        self.stop_requested = True
        self.wake()

    def close(self):
        """Release every descriptor of a loop that is not running (it never will)."""
        if self.running:
            raise RuntimeError("the loop is running: request_stop() it")
        self.finished = True
        self.release_descriptors()

    cdef int stop_for(self, BaseException cause) except -1:
        """The application raised ``cause`` from a signal handler: stop gracefully, then
        let run() raise it."""
        if self.stop_cause is None:
            self.stop_cause = cause
            self.log(logging.INFO, "a signal handler raised %r: stopping", (cause,))
        self.request_stop()
        return 0

    cdef int serve_until_closed(self) except -1:
        """serve(), carrying on past what may escape it: a MemoryError of the loop's own
        bookkeeping (each connection's are handled where they happen), or an exception
        that Python code the loop called let out (an application's signal handler runs
        wherever the main thread is)."""
        cdef Py_ssize_t skipped
        while True:
            try:
                self.serve()
                return 0
            except MemoryError:
                skipped = self.memory_log.due()
                if skipped >= 0:
                    self.log(logging.ERROR, "out of memory in the server loop; going on%s",
                             (since_last(skipped, "times"),))
                with nogil:
                    usleep(<unsigned int>(MEMORY_RETRY_SECONDS * 1e6))
            except BaseException as cause:
                self.stop_for(cause)
            if self.stopping and monotonic() >= self.stop_deadline:
                self.teardown_connections()
                return 0

    # ---- signals --------------------------------------------------------------------

    cdef int watch_signals(self) except -1:
        """Have signals wake the loop, and Ctrl-C and SIGTERM stop it gracefully.

        Python's C-level handler only sets a flag. A signal that lands after the loop
        last ran PyErr_CheckSignals() but before it blocks in the poller would wait
        unseen until the next I/O; signal.set_wakeup_fd turns it into I/O.

        SIGTERM's default would kill the process with replies still queued, and
        Python's default SIGINT handler raises KeyboardInterrupt in whatever code runs,
        a callback included, cutting it short. Where the application left those
        defaults, the loop's own handler asks for a graceful stop instead (a second
        signal: stop without waiting); so a KeyboardInterrupt that comes out of a
        callback can only be the callback's own. Handlers the application installed
        itself are left alone.
        """
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signal_fd = read_fd
        self.signal_write_fd = write_fd
        previous_fd = _signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous_sigterm = previous_sigint = None
        if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
            previous_sigterm = _signal.signal(_signal.SIGTERM, self._on_stop_signal)
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
            previous_sigint = _signal.signal(_signal.SIGINT, self._on_stop_signal)
        self.restore_signals = (previous_fd, previous_sigterm, previous_sigint)
        self.poller.register(read_fd, READABLE)
        return 0

    def _on_stop_signal(self, signum, frame):
        name = _signal.Signals(signum).name
        if not self.stop_requested:
            self.log(logging.INFO, "%s: stopping", (name,))
            self.request_stop()
        else:
            self.log(logging.WARNING, "%s again: closing %d connections without waiting",
                     (name, self.connection_count))
            self.abort_requested = True
            self.wake()

    cdef void unwatch_signals(self):
        previous_fd, previous_sigterm, previous_sigint = self.restore_signals
        self.restore_signals = None
        _signal.set_wakeup_fd(previous_fd)
        # Only where the loop's handler is still in place: one the application
        # installed while the loop served is the application's to keep.
        if previous_sigterm is not None and _csignal.getsignal(_signal.SIGTERM) == self._on_stop_signal:
            _signal.signal(_signal.SIGTERM, previous_sigterm)
        if previous_sigint is not None and _csignal.getsignal(_signal.SIGINT) == self._on_stop_signal:
            _signal.signal(_signal.SIGINT, previous_sigint)
        close(self.signal_fd)
        close(self.signal_write_fd)
        self.signal_fd = self.signal_write_fd = -1

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

    # ---- the loop -------------------------------------------------------------------

    cdef int serve(self) except -1:
        """Run until stopping and every connection is closed, or the grace period ends."""
        cdef int n, timeout
        cdef double deadline
        cdef Poller poller = self.poller
        while True:
            if self.abort_requested:
                self.teardown_connections()
                return 0
            if self.stop_requested and not self.stopping:
                self.begin_stop()
            if self.scheduled:
                self.service_scheduled()
            # The earliest of the timed things the loop must wake up for, if any.
            deadline = 0
            if self.stopping:
                if self.connection_count == 0:
                    return 0
                deadline = self.stop_deadline
            elif self.accept_resume_at:
                deadline = self.accept_resume_at
            if self.idle.oldest is not None:
                deadline = earliest(deadline, self.idle.oldest.last_active + self.idle_timeout)
            if self.lingering.oldest is not None:
                deadline = earliest(deadline,
                                    self.lingering.oldest.last_active + LINGER_QUIET_SECONDS)
            if self.awaiting_proxy_header.oldest is not None:
                deadline = earliest(deadline, self.awaiting_proxy_header.oldest.last_active
                                    + self.proxy_header_timeout)
            if self.awaiting_workers:
                deadline = earliest(deadline, self.next_worker_check)
            if self.retry_at:
                deadline = earliest(deadline, self.retry_at)
            timeout = -1
            if deadline:
                self.now = monotonic()
                if deadline <= self.now:
                    self.on_deadline()
                    continue
                timeout = <int>(min(deadline - self.now, LONGEST_WAIT_SECONDS) * 1000) + 1
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

    cdef int handle(self, Connection connection, int events) except -1:
        """One connection's work for `events` (Connection.on_events). An error in it
        (the poller's bookkeeping, a MemoryError) closes that connection only."""
        try:
            connection.on_events(events)
        except Exception as error:
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
        connection.abort()  # before saying so, which may fail in turn (out of memory)
        try:
            self.log_connection_error(f"fd {fd}", f"closed after an error: {error!r}")
        except MemoryError:
            pass
        return 0

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
            except Exception as error:
                if connection is None:
                    raise  # the loop's own work, not one connection's
                self.connection_failed(connection, error)
                connection = None
        return 0

    cdef int log_connection_error(self, str described, str what) except -1:
        cdef Py_ssize_t skipped = self.connection_error_log.due()
        if skipped >= 0:
            self.log(logging.WARNING, "connection %s: %s%s",
                     (described, what, since_last(skipped, "connection errors")))
        return 0

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

    cdef int on_deadline(self) except -1:
        """Whatever timed thing is due at self.now: grace period, workers' replies,
        accept retry, I/O retry, idle and lingering connections."""
        cdef Py_ssize_t expired = 0
        cdef Connection connection
        if self.stopping and self.stop_deadline <= self.now:
            self.log(logging.WARNING, "grace period over: closing %d connections with unsent "
                     "output or a queue still held", (self.connection_count,))
            self.teardown_connections()
            return 0
        if self.awaiting_workers and self.next_worker_check <= self.now:
            self.check_awaiting_workers()
        if self.accept_resume_at and self.accept_resume_at <= self.now:
            self.resume_accepting()
        if self.retry_at and self.retry_at <= self.now:
            self.retry_backed_off()
        while (self.idle.oldest is not None
               and self.idle.oldest.last_active + self.idle_timeout <= self.now):
            self.expire_idle(self.idle.oldest)
            expired += 1
        if expired:
            self.log(logging.INFO, "closed %d connections idle for more than %g s",
                     (expired, self.idle_timeout))
        while (self.awaiting_proxy_header.oldest is not None
               and self.awaiting_proxy_header.oldest.last_active + self.proxy_header_timeout
               <= self.now):
            self.reject_proxy_header(self.awaiting_proxy_header.oldest,
                                     f"no PROXY header within {self.proxy_header_timeout:g} s")
        while (self.lingering.oldest is not None
               and self.lingering.oldest.last_active + LINGER_QUIET_SECONDS <= self.now):
            connection = self.lingering.oldest
            try:
                connection.on_linger_quiet()
            except Exception as error:
                self.connection_failed(connection, error)
        return 0

    cdef int reject_proxy_header(self, Connection connection, str why) except -1:
        """A connection that should start with a PROXY header did not (malformed, too
        long, too slow): reset it (nothing was owed to it) and say so, at most once per
        10 s (a scanner would otherwise flood the log)."""
        cdef Py_ssize_t skipped = self.proxy_log.due()
        if skipped >= 0:
            self.log(logging.WARNING, "closing connection %s: %s%s",
                     (connection.describe(), why, since_last(skipped, "more rejected")))
        connection.abort()
        return 0

    cdef int expire_idle(self, Connection connection) except -1:
        """Close a connection on which nothing moved for idle_timeout.

        With output still unsent the peer has stopped reading (slowloris): reset, so it
        cannot take the part it got for the whole reply. Otherwise the close is
        graceful (Connection.finish_close).
        """
        if connection.out.pending:
            connection.abort()
            return 0
        connection.begin_close(IDLE_TIMEOUT)
        self.handle(connection, WRITABLE)
        if connection.listed_in is self.idle:
            self.idle.unlink(connection)  # waiting for a worker while stopping: grace-bound
        return 0

    # ---- backpressure on put()s from other threads ------------------------------------

    cdef int wait_for_drain(self, Connection connection, bint block, object timeout) except -1:
        """Block the calling (non-loop) thread until `connection` drains or closes."""
        if not block:
            raise _queue.Full
        deadline = None if timeout is None else _time.monotonic() + timeout
        with self.drain_condition:
            connection.waiters += 1
            try:
                while connection.fd >= 0 and connection.out.pending > self.low_water:
                    if deadline is None:
                        self.drain_condition.wait()
                    else:
                        remaining = deadline - _time.monotonic()
                        if remaining <= 0:
                            raise _queue.Full
                        self.drain_condition.wait(remaining)
            finally:
                connection.waiters -= 1
        return 0

    cdef void notify_drained(self):
        with self.drain_condition:
            self.drain_condition.notify_all()

    cdef bytes received(self, Py_ssize_t size):
        """The `size` bytes just read into read_buffer, as a bytes object.

        A bytes object nobody else holds (the callback did not keep it and its reply
        was sent) is refilled instead of allocating anew: a 1 KiB bytes object is past
        glibc's fast caches, and its malloc/free were a quarter of the loop's
        instructions per echo. Refcount 1 means only `spare_data` refers to it, so no
        Python code can see the change. Single bytes are shared singletons, never 1.
        """
        cdef PyObject *spare = <PyObject *>self.spare_data
        cdef bytes data
        if spare != NULL and refcount_of(spare) == 1 and PyBytes_GET_SIZE(<object>spare) == size:
            memcpy(PyBytes_AS_STRING(<object>spare), self.read_buffer, size)
            (<PyBytesObject *>spare).ob_shash = -1
            return <bytes>spare
        data = PyBytes_FromStringAndSize(self.read_buffer, size)
        self.spare_data = data
        return data

    cdef int dispatch(self, Connection connection, bytes data) except -1:
        """Call the user's callback; whatever it raises closes only this connection.

        Any exception: SystemExit, KeyboardInterrupt, GeneratorExit and the like too. A
        server must not die of one request; Ctrl-C and SIGTERM reach the loop through its
        own handlers (watch_signals), not as exceptions in a callback. The exception is
        the application's signal handler's if that handler's frame is in its traceback:
        then the server stops (stop_for). A coroutine it returns is closed unrun
        (discard_coroutine).
        """
        cdef object result
        self.dispatching = connection
        try:
            if self.callback_takes_ip:
                result = self.callback(connection.peer_ip, connection.get_queue(), data)
            else:
                result = self.callback(connection.get_queue(), data)
            if result is not None and isinstance(result, _Coroutine):
                self.discard_coroutine(connection, result)
        except BaseException as error:
            # The close first: under memory pressure what follows may fail in turn, and
            # the input this callback was given is consumed whatever happens.
            connection.begin_close(CALLBACK_FAILED)
            try:
                if self.restore_signals is not None and raised_by_signal_handler(error):
                    self.stop_for(error)
                else:
                    self.log(logging.ERROR, "read_callback raised %s; closing connection %s "
                             "once its queued output is sent",
                             (type(error).__name__, connection.describe()), error)
            except MemoryError:
                pass  # out of memory to say so; the connection closes all the same
        finally:
            self.dispatching = None
        return 0

    cdef int discard_coroutine(self, Connection connection, object coroutine) except -1:
        """The callback returned a coroutine (it wraps an async def): nothing will ever
        run it. TCPServer rejects async callbacks it can see; this catches the rest."""
        connection.begin_close(CALLBACK_FAILED)
        coroutine.close()  # never started: closing it runs none of its code, and Python
                           # does not warn that it was never awaited
        cdef Py_ssize_t skipped = self.coroutine_log.due()
        if skipped >= 0:
            logger.error("read_callback returned a coroutine, which nothing awaits: the "
                         "callback is called synchronously, so its async code never runs; "
                         "closing connection %s once its queued output is sent%s",
                         connection.describe(), since_last(skipped, "coroutines discarded"))
        return 0

    cdef int await_worker(self, Connection connection) except -1:
        """While stopping, keep a connection open as long as code outside holds its queue.

        A callback may hand the queue to a worker and return; if the server is asked to
        stop before the worker replies, closing at once would lose the reply. The
        connection waits for the queue to be let go of; the stop's grace period bounds
        the wait (on_deadline closes whatever is left then).
        """
        if not self.awaiting_workers:
            # Nothing signals that a worker let go of a queue: look now and then.
            self.worker_check_interval = WORKER_CHECK_INTERVAL
            self.next_worker_check = self.now + WORKER_CHECK_INTERVAL
        self.awaiting_workers.append(connection)
        return 0

    cdef int check_awaiting_workers(self) except -1:
        cdef list waiting = []
        cdef Connection connection
        for connection in self.awaiting_workers:
            if connection.state == AWAITING_WORKER and not connection.out.pending:
                self.handle(connection, WRITABLE)  # closes or lingers once let go of
            if connection.state == AWAITING_WORKER:
                waiting.append(connection)  # a late reply is going out, or may yet come
        if len(waiting) < len(self.awaiting_workers):
            self.worker_check_interval = WORKER_CHECK_INTERVAL
        else:
            self.worker_check_interval = min(2 * self.worker_check_interval, WORKER_CHECK_LONGEST)
        self.awaiting_workers = waiting
        self.next_worker_check = self.now + self.worker_check_interval
        return 0

    cdef int back_off(self, Connection connection) except -1:
        """The kernel said ENOBUFS/ENOMEM to this connection's I/O: try again shortly."""
        if not connection.backing_off:
            connection.backing_off = True
            self.backing_off.append(connection)
            if not self.retry_at:
                self.retry_at = monotonic() + IO_RETRY_SECONDS
        return 0

    cdef int retry_backed_off(self) except -1:
        cdef list batch = self.backing_off
        cdef Connection connection
        self.backing_off = []
        self.retry_at = 0
        for connection in batch:
            connection.backing_off = False
            if connection.fd >= 0:
                self.handle(connection, READABLE)  # reads if it should, then sends
        return 0

    cdef int schedule(self, Connection connection) except -1:
        if not connection.scheduled:
            connection.scheduled = True
            self.scheduled.append(connection)
        self.wake()
        return 0

    cdef int service_scheduled(self) except -1:
        cdef list batch
        cdef Connection connection
        while self.scheduled:
            batch = self.scheduled
            self.scheduled = []
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
        cdef uint64_t count
        read(self.wake_fd, &count, sizeof(count))
        self.wake_pending = False

    # ---- accepting ------------------------------------------------------------------

    cdef int accept_connections(self) except -1:
        cdef sockaddr_storage address
        cdef socklen_t address_len
        cdef int fd, error, i
        cdef Py_ssize_t skipped
        for i in range(ACCEPT_BATCH):
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
                skipped = self.limit_log.due()
                if skipped >= 0:
                    self.log(logging.WARNING, "connection limit (%d) reached: closing new "
                             "connections at once until one ends%s",
                             (self.connection_limit, since_last(skipped, "connections closed")))
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
            self.reserve_slot(fd)
            self.poller.register(fd, READABLE)
        except Exception as error:
            failure = error
        if failure is not None:
            # Out of memory, or the poller refused it: this connection cannot be served.
            reset_and_close(fd)
            if self.connection_error_log.due() >= 0:
                self.log(logging.WARNING, "could not take a new connection: %r", (failure,))
            return 0
        connection.fd = fd
        connection.loop = self
        connection.input_open = True
        connection.interest = READABLE
        connection.last_active = self.now
        if self.proxy_header_parser is not None:
            # Its idle timeout starts once the header is read (read_proxy_header).
            connection.state = AWAITING_PROXY_HEADER
            connection.proxy_header_pending = b""
            self.awaiting_proxy_header.append(connection)
        else:
            connection.state = OPEN
            if self.idle_timeout:
                self.idle.append(connection)
        Py_INCREF(connection)
        self.connections[fd] = <PyObject *>connection
        self.connection_count += 1
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

    cdef void forget(self, Connection connection, int fd):
        """Close `fd`, which `connection` owned; called by Connection.close()."""
        cdef PyObject *owned = self.connections[fd]
        # The C-level state first: the Python calls below may run a signal handler
        # that raises, and what is done by then must be whole.
        self.connections[fd] = NULL
        self.connection_count -= 1
        self.poller.unregister(fd)
        close(fd)
        try:
            if connection.waiters:
                self.notify_drained()  # blocked put()s return; what they put is dropped
            # The queue points back at the connection; letting go of it here breaks the
            # cycle, so closed connections are freed at once rather than by the cyclic GC.
            connection.queue = None
            if self.accept_resume_at and not self.stopping:
                self.resume_accepting()  # a descriptor was just freed
        finally:
            Py_DECREF(<object>owned)

    cdef void pause_accepting(self, int error):
        # The listening socket stays readable while the backlog is full, so it must
        # leave the poller or the loop would spin at 100% CPU.
        cdef Py_ssize_t skipped = self.accept_error_log.due()
        if skipped >= 0:
            self.log(logging.ERROR, "accept() failed: %s; not accepting new connections until "
                     "a descriptor is free or %g s have passed%s",
                     (strerror(error).decode(), ACCEPT_RETRY_SECONDS, since_last(skipped, "failures")))
        if self.accepting:
            self.poller.unregister(self.listen_fd)
            self.accepting = False
        self.accept_resume_at = monotonic() + ACCEPT_RETRY_SECONDS

    cdef void resume_accepting(self):
        cdef int error = 0
        self.accept_resume_at = 0
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

    # ---- stopping -------------------------------------------------------------------

    cdef int begin_stop(self) except -1:
        """Stop accepting and reading; each connection closes once its output is sent."""
        cdef Py_ssize_t fd
        cdef Connection connection
        self.stopping = True
        self.stop_deadline = monotonic() + self.grace_period
        self.accept_resume_at = 0
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

    cdef void teardown_connections(self):
        """Close every connection now: those with output unsent are reset, so that
        their peers cannot take what they got for whole replies."""
        cdef Py_ssize_t fd
        cdef Connection connection
        for fd in range(self.connections_capacity):
            if self.connections[fd] != NULL:
                connection = <Connection>self.connections[fd]
                if connection.out.pending:
                    connection.abort()
                else:
                    connection.close()

    cdef void teardown(self):
        self.teardown_connections()
        self.scheduled = []
        self.awaiting_workers = []
        self.backing_off = []
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


cdef void reset_on_close(int fd) noexcept:
    """Have the close() of ``fd`` send RST (SO_LINGER 0) instead of FIN."""
    cdef linger reset
    reset.l_onoff = 1
    reset.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset))


cdef void reset_and_close(int fd) noexcept:
    reset_on_close(fd)
    close(fd)
