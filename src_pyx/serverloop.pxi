# Loop: accepts, reads, calls the user's callback, and sends what it queued.
#
# Connections are found by descriptor in a C array (no dict on the hot path). Work
# that arrives from outside an I/O event (a put from another thread, or from a
# callback into another connection's queue, a shutdown(), stop()) is listed in
# `scheduled` and done before the loop next waits; if the loop is asleep in the
# poller it is woken through an eventfd.

# Connections accepted per readiness of the listening socket before others are served.
DEF ACCEPT_BATCH = 128
# After EMFILE/ENFILE: how long accepting pauses if no descriptor is freed sooner.
DEF ACCEPT_RETRY_SECONDS = 0.1
# How often lingering connections (Loop.linger) are looked at.
DEF LINGER_CHECK_INTERVAL = 0.01


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
    cdef list lingering           # while stopping: connections waiting for a worker's reply
    cdef double next_linger_check
    cdef Connection dispatching   # whose callback is running now, if any
    cdef unsigned long thread_ident

    cdef readonly bint running
    cdef bint finished
    cdef bint sleeping            # blocked in the poller with the GIL released
    cdef bint wake_pending        # an eventfd write is on its way
    cdef bint stop_requested
    cdef bint stopping
    cdef double stop_deadline
    cdef bint accepting           # the listening socket is registered
    cdef double accept_resume_at  # 0, or when to retry after EMFILE/ENFILE
    cdef LogThrottle accept_error_log
    cdef LogThrottle limit_log    # "connection limit reached"
    cdef LogThrottle coroutine_log  # "read_callback returned a coroutine"

    # With an idle timeout: open connections, least recently active first, so the
    # next to expire is always at the head (moving one to the tail is O(1)).
    cdef Connection idle_oldest
    cdef Connection idle_newest
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
                 Py_ssize_t connection_limit=0, double idle_timeout=0):
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
        self.lingering = []
        self.accept_error_log = LogThrottle.__new__(LogThrottle)
        self.limit_log = LogThrottle.__new__(LogThrottle)
        self.coroutine_log = LogThrottle.__new__(LogThrottle)
        self.read_buffer = <char *>malloc(recv_bytes)
        if self.read_buffer == NULL:
            raise MemoryError()
        self.poller = make_poller(backend)
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise_errno("eventfd")

    def __dealloc__(self):
        cdef Py_ssize_t fd
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
        # Loop.__new__(Loop), or an __init__ that raised: no poller, buffer or eventfd
        # (made last) to serve with.
        if self.wake_fd < 0:
            raise RuntimeError("this Loop was not initialized (Loop.__init__ did not "
                               "complete)")
        return 0

    # ---- the Python-visible API -----------------------------------------------------

    def run(self, ready=None):
        """Serve until request_stop() or Ctrl-C; everything is closed on return.

        ``ready`` is called once the loop is about to wait for the first time.
        """
        self.check_initialized()
        if self.running or self.finished:
            raise RuntimeError("this loop has already run; a server serves once")
        self.running = True
        self.thread_ident = PyThread_get_thread_ident()
        try:
            self.poller.register(self.wake_fd, READABLE)
            self.poller.register(self.listen_fd, READABLE)
            self.accepting = True
            if threading.current_thread() is threading.main_thread():
                self.watch_signals()
            if ready is not None:
                ready()
            try:
                self.serve()
            except KeyboardInterrupt:
                logger.info("interrupted: stopping")
            if not self.stopping:
                self.begin_stop()
            try:
                self.serve()
            except KeyboardInterrupt:
                logger.warning("interrupted again: closing %d connections without waiting",
                               self.connection_count)
        finally:
            self.teardown()
            if self.restore_signals is not None:
                self.unwatch_signals()

    def request_stop(self):
        """Ask the loop to stop: safe from any thread, a callback or a signal handler."""
        self.stop_requested = True
        self.wake()

    # ---- signals --------------------------------------------------------------------

    cdef int watch_signals(self) except -1:
        """Have signals wake the loop, and SIGTERM stop it as Ctrl-C does.

        Python's C-level handler only sets a flag. A signal that lands after the loop
        last ran PyErr_CheckSignals() but before it blocks in the poller would wait
        unseen until the next I/O; signal.set_wakeup_fd turns it into I/O. SIGTERM's
        default would kill the process with replies still queued; a handler the
        application installed itself is left alone.
        """
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signal_fd = read_fd
        self.signal_write_fd = write_fd
        previous_fd = _signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous_sigterm = None
        if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
            previous_sigterm = _signal.signal(_signal.SIGTERM, self._on_sigterm)
        self.restore_signals = (previous_fd, previous_sigterm)
        self.poller.register(read_fd, READABLE)
        return 0

    def _on_sigterm(self, signum, frame):
        logger.info("SIGTERM: stopping")
        self.request_stop()

    cdef void unwatch_signals(self):
        previous_fd, previous_sigterm = self.restore_signals
        self.restore_signals = None
        _signal.set_wakeup_fd(previous_fd)
        if previous_sigterm is not None:
            _signal.signal(_signal.SIGTERM, previous_sigterm)
        close(self.signal_fd)
        close(self.signal_write_fd)
        self.signal_fd = self.signal_write_fd = -1

    cdef int drain_signals(self) except -1:
        cdef char sink[64]
        while read(self.signal_fd, sink, sizeof(sink)) > 0:
            pass
        PyErr_CheckSignals()  # runs the Python handlers; Ctrl-C raises here
        return 0

    # ---- the loop -------------------------------------------------------------------

    cdef int serve(self) except -1:
        """Run until stopping and every connection is closed, or the grace period ends."""
        cdef int n, i, fd, events, timeout
        cdef double deadline
        cdef Connection connection
        cdef Poller poller = self.poller
        while True:
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
            if self.idle_oldest is not None:
                deadline = earliest(deadline, self.idle_oldest.last_active + self.idle_timeout)
            if self.lingering:
                deadline = earliest(deadline, self.next_linger_check)
            timeout = -1
            if deadline:
                self.now = monotonic()
                if deadline <= self.now:
                    self.on_deadline()
                    continue
                timeout = <int>((deadline - self.now) * 1000) + 1
            # Nothing between the check of `scheduled` above and the wait may run Python
            # code: a put() from another thread slipping in there would find the loop not
            # yet `sleeping`, skip the wake-up, and wait unserved.
            self.sleeping = True
            n = poller.wait(timeout)
            self.sleeping = False
            if self.idle_timeout:
                self.now = monotonic()
            if n < 0:
                PyErr_CheckSignals()  # runs Python signal handlers; Ctrl-C raises here
                continue
            for i in range(n):
                fd = poller.ready_fd[i]
                events = poller.ready_events[i]
                if fd < self.connections_capacity and self.connections[fd] != NULL:
                    connection = <Connection>self.connections[fd]
                    if events & READABLE:
                        connection.on_readable()
                    if events & WRITABLE:
                        connection.service()
                elif fd == self.listen_fd:
                    self.accept_connections()
                elif fd == self.wake_fd:
                    self.drain_wakeups()
                elif fd == self.signal_fd:
                    self.drain_signals()

    cdef int on_deadline(self) except -1:
        """Whatever timed thing is due at self.now: grace period, lingering, accept retry,
        idle."""
        cdef Py_ssize_t expired = 0
        if self.stopping and self.stop_deadline <= self.now:
            logger.warning("grace period over: closing %d connections with unsent output "
                           "or a queue still held",
                           self.connection_count)
            self.teardown_connections()
            return 0
        if self.lingering and self.next_linger_check <= self.now:
            self.check_lingering()
        if self.accept_resume_at and self.accept_resume_at <= self.now:
            self.resume_accepting()
        while (self.idle_oldest is not None
               and self.idle_oldest.last_active + self.idle_timeout <= self.now):
            self.idle_oldest.close()
            expired += 1
        if expired:
            logger.info("closed %d connections idle for more than %g s", expired,
                        self.idle_timeout)
        return 0

    cdef void touch(self, Connection connection):
        """Mark activity now: the connection moves to the young end of the idle list."""
        connection.last_active = self.now
        if connection is not self.idle_newest:
            self.idle_unlink(connection)
            self.idle_append(connection)

    cdef void idle_append(self, Connection connection):
        connection.older = self.idle_newest
        connection.newer = None
        if self.idle_newest is not None:
            self.idle_newest.newer = connection
        else:
            self.idle_oldest = connection
        self.idle_newest = connection

    cdef void idle_unlink(self, Connection connection):
        if connection.older is not None:
            connection.older.newer = connection.newer
        elif self.idle_oldest is connection:
            self.idle_oldest = connection.newer
        if connection.newer is not None:
            connection.newer.older = connection.older
        elif self.idle_newest is connection:
            self.idle_newest = connection.older
        connection.older = connection.newer = None

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
        """Call the user's callback; an exception closes only this connection."""
        cdef object result
        self.dispatching = connection
        try:
            if self.callback_takes_ip:
                result = self.callback(connection.peer_ip, connection.get_queue(), data)
            else:
                result = self.callback(connection.get_queue(), data)
            if result is not None and isinstance(result, _Coroutine):
                self.discard_coroutine(connection, result)
        except Exception:
            logger.exception("read_callback raised; closing connection %s once its "
                             "queued output is sent", connection.describe())
            connection.close_after_failed_callback()
        finally:
            self.dispatching = None
        return 0

    cdef int discard_coroutine(self, Connection connection, object coroutine) except -1:
        """The callback returned a coroutine (it wraps an async def): nothing will ever
        run it. TCPServer rejects async callbacks it can see; this catches the rest."""
        coroutine.close()  # never started: closing it runs none of its code, and Python
                           # does not warn that it was never awaited
        cdef Py_ssize_t skipped = self.coroutine_log.due()
        if skipped >= 0:
            logger.error("read_callback returned a coroutine, which nothing awaits: the "
                         "callback is called synchronously, so its async code never runs; "
                         "closing connection %s once its queued output is sent%s",
                         connection.describe(), since_last(skipped, "coroutines discarded"))
        connection.close_after_failed_callback()
        return 0

    cdef int linger(self, Connection connection) except -1:
        """While stopping, keep a connection open as long as code outside holds its queue.

        A callback may hand the queue to a worker and return; if the server is asked to
        stop before the worker replies, closing at once would lose the reply. The
        connection waits for the queue to be let go of; the stop's grace period bounds
        the wait (on_deadline closes whatever is left then).
        """
        if not connection.lingering:
            if not self.lingering:
                # Nothing signals that a worker let go of a queue: look every few ms.
                self.next_linger_check = monotonic() + LINGER_CHECK_INTERVAL
            connection.lingering = True
            self.lingering.append(connection)
        return 0

    cdef int check_lingering(self) except -1:
        cdef list waiting = []
        cdef Connection connection
        for connection in self.lingering:
            if connection.fd >= 0 and (connection.out.pending or connection.queue_held()):
                waiting.append(connection)  # a late reply is going out, or may yet come
                continue
            connection.close()
            connection.lingering = False
        self.lingering = waiting
        self.next_linger_check = self.now + LINGER_CHECK_INTERVAL
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
                connection.service()
        return 0

    cdef void wake(self):
        # Only a loop asleep in the poller needs the eventfd; one that is running
        # checks `scheduled` and `stop_requested` before it next waits.
        cdef uint64_t one = 1
        if self.sleeping and not self.wake_pending:
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
                if error == EINTR or error == ECONNABORTED or error == EPROTO or error == EPERM:
                    continue
                if error == EMFILE or error == ENFILE or error == ENOBUFS or error == ENOMEM:
                    self.pause_accepting(error)
                    return 0
                logger.error("accept() failed: %s", strerror(error).decode())
                return 0
            if self.connection_limit and self.connection_count >= self.connection_limit:
                close(fd)
                skipped = self.limit_log.due()
                if skipped >= 0:
                    logger.warning("connection limit (%d) reached: closing new connections "
                                   "at once until one ends%s", self.connection_limit,
                                   since_last(skipped, "connections closed"))
                continue
            self.adopt(fd, &address)
        return 0

    cdef int adopt(self, int fd, sockaddr_storage *address) except -1:
        cdef int one = 1
        cdef Connection connection
        if address.ss_family == AF_INET or address.ss_family == AF_INET6:
            # Replies are often written in pieces; Nagle would hold the last one back
            # until the peer's delayed ACK (~40 ms).
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        try:
            self.reserve_slot(fd)
            self.poller.register(fd, READABLE)
        except BaseException:
            close(fd)
            raise
        connection = Connection.__new__(Connection)
        connection.fd = fd
        connection.loop = self
        connection.reading = True
        connection.interest = READABLE
        connection.remember_peer(address, self.callback_takes_ip)
        if self.idle_timeout:
            connection.last_active = self.now = monotonic()
            self.idle_append(connection)
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
        self.poller.unregister(fd)
        close(fd)
        self.connections[fd] = NULL
        self.connection_count -= 1
        if self.idle_timeout:
            self.idle_unlink(connection)
        if connection.waiters:
            self.notify_drained()  # blocked put()s return; what they put is dropped
        # The queue points back at the connection; letting go of it here breaks the
        # cycle, so closed connections are freed at once rather than by the cyclic GC.
        connection.queue = None
        if self.accept_resume_at and not self.stopping:
            self.resume_accepting()  # a descriptor was just freed
        Py_DECREF(<object>owned)

    cdef void pause_accepting(self, int error):
        # The listening socket stays readable while the backlog is full, so it must
        # leave the poller or the loop would spin at 100% CPU.
        cdef Py_ssize_t skipped = self.accept_error_log.due()
        if skipped >= 0:
            logger.error("accept() failed: %s; not accepting new connections until a "
                         "descriptor is free%s", strerror(error).decode(),
                         since_last(skipped, "failures"))
        if self.accepting:
            self.poller.unregister(self.listen_fd)
            self.accepting = False
        self.accept_resume_at = monotonic() + ACCEPT_RETRY_SECONDS

    cdef void resume_accepting(self):
        self.accept_resume_at = 0
        if not self.accepting and not self.stopping:
            self.poller.register(self.listen_fd, READABLE)
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
                connection.reading = False
                connection.closing = True
                connection.service()
        return 0

    cdef void teardown_connections(self):
        cdef Py_ssize_t fd
        cdef Connection connection
        for fd in range(self.connections_capacity):
            if self.connections[fd] != NULL:
                connection = <Connection>self.connections[fd]
                connection.close()

    cdef void teardown(self):
        self.teardown_connections()
        self.scheduled = []
        self.lingering = []
        self.running = False
        self.finished = True
        try:
            self.listener.close()
        except Exception:
            pass
        self.poller.close()
