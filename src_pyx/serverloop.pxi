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
    cdef double grace_period

    cdef PyObject **connections   # owned references, indexed by descriptor
    cdef Py_ssize_t connections_capacity
    cdef readonly Py_ssize_t connection_count

    cdef list scheduled           # connections with work from outside an I/O event
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
    cdef bint accept_error_logged

    def __cinit__(self):
        self.wake_fd = -1
        self.listen_fd = -1
        self.signal_fd = self.signal_write_fd = -1
        self.read_buffer = NULL
        self.connections = NULL

    def __init__(self, listener, callback, bint callback_takes_ip, Py_ssize_t recv_bytes,
                 str backend="auto", double grace_period=5.0):
        if recv_bytes <= 0:
            raise ValueError(f"recv_bytes must be a positive int, got {recv_bytes}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        self.listener = listener
        self.listen_fd = listener.fileno()
        self.callback = callback
        self.callback_takes_ip = callback_takes_ip
        self.recv_bytes = recv_bytes
        self.grace_period = grace_period
        self.scheduled = []
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
        return self.poller.name

    # ---- the Python-visible API -----------------------------------------------------

    def run(self, ready=None):
        """Serve until request_stop() or Ctrl-C; everything is closed on return.

        ``ready`` is called once the loop is about to wait for the first time.
        """
        if self.running or self.finished:
            raise RuntimeError("this loop has already run; a server serves once")
        self.running = True
        self.thread_ident = PyThread_get_thread_ident()
        previous_wakeup_fd = None
        try:
            self.poller.register(self.wake_fd, READABLE)
            self.poller.register(self.listen_fd, READABLE)
            self.accepting = True
            if threading.current_thread() is threading.main_thread():
                previous_wakeup_fd = self.watch_signals()
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
            if previous_wakeup_fd is not None:
                self.unwatch_signals(previous_wakeup_fd)

    def request_stop(self):
        """Ask the loop to stop: safe from any thread, a callback or a signal handler."""
        self.stop_requested = True
        self.wake()

    # ---- signals --------------------------------------------------------------------

    cdef object watch_signals(self):
        """Have signals wake the loop; returns the wakeup fd to restore afterwards.

        Python's C-level handler only sets a flag. A signal that lands after the loop
        last ran PyErr_CheckSignals() but before it blocks in the poller would wait
        unseen until the next I/O; signal.set_wakeup_fd turns it into I/O.
        """
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signal_fd = read_fd
        self.signal_write_fd = write_fd
        previous = _signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.poller.register(read_fd, READABLE)
        return previous

    cdef void unwatch_signals(self, int previous):
        _signal.set_wakeup_fd(previous)
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
        cdef double remaining
        cdef Connection connection
        cdef Poller poller = self.poller
        while True:
            if self.stop_requested and not self.stopping:
                self.begin_stop()
            if self.scheduled:
                self.service_scheduled()
            timeout = -1
            if self.stopping:
                if self.connection_count == 0:
                    return 0
                remaining = self.stop_deadline - monotonic()
                if remaining <= 0:
                    logger.warning("grace period over: closing %d connections with unsent output",
                                   self.connection_count)
                    return 0
                timeout = <int>(remaining * 1000) + 1
            elif self.accept_resume_at:
                remaining = self.accept_resume_at - monotonic()
                if remaining <= 0:
                    self.resume_accepting()
                    continue
                timeout = <int>(remaining * 1000) + 1
            # Nothing between the check of `scheduled` above and the wait may run Python
            # code: a put() from another thread slipping in there would find the loop not
            # yet `sleeping`, skip the wake-up, and wait unserved.
            self.sleeping = True
            n = poller.wait(timeout)
            self.sleeping = False
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

    cdef int dispatch(self, Connection connection, bytes data) except -1:
        """Call the user's callback; an exception closes only this connection."""
        self.dispatching = connection
        try:
            if self.callback_takes_ip:
                self.callback(connection.peer_ip, connection.get_queue(), data)
            else:
                self.callback(connection.get_queue(), data)
        except Exception:
            logger.exception("read_callback raised; closing connection %s once its "
                             "queued output is sent", connection.describe())
            connection.reading = False
            connection.closing = True
        finally:
            self.dispatching = None
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
            self.accept_error_logged = False
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
        if self.callback_takes_ip:
            connection.peer_ip = format_peer_ip(address)
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
        # The queue points back at the connection; letting go of it here breaks the
        # cycle, so closed connections are freed at once rather than by the cyclic GC.
        connection.queue = None
        if self.accept_resume_at and not self.stopping:
            self.resume_accepting()  # a descriptor was just freed
        Py_DECREF(<object>owned)

    cdef void pause_accepting(self, int error):
        # The listening socket stays readable while the backlog is full, so it must
        # leave the poller or the loop would spin at 100% CPU.
        if not self.accept_error_logged:
            logger.error("accept() failed: %s; not accepting new connections until a "
                         "descriptor is free", strerror(error).decode())
            self.accept_error_logged = True
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

    cdef void teardown(self):
        cdef Py_ssize_t fd
        cdef Connection connection
        for fd in range(self.connections_capacity):
            if self.connections[fd] != NULL:
                connection = <Connection>self.connections[fd]
                connection.close()
        self.scheduled = []
        self.running = False
        self.finished = True
        try:
            self.listener.close()
        except Exception:
            pass
        self.poller.close()
