# Loop: the poll, accept, timer and stop loop (serverloop.pyx).

cdef enum:
    # Connections accepted per readiness of the listening socket before others are served.
    ACCEPT_BATCH = 128
    # After accept() fails for want of descriptors or memory (or for a reason it should
    # not): how long accepting pauses if no descriptor is freed sooner.
    ACCEPT_RETRY_MS = 100
    # How often connections waiting for a worker's reply while stopping are looked at: at
    # first and after one was let go of; while none is, the interval doubles up to the
    # longest (a look is a turn of the loop, over every descriptor on poll).
    WORKER_CHECK_MS = 10
    WORKER_CHECK_LONGEST_MS = 320
    # After send()/recv() said ENOBUFS/ENOMEM: how long the connection's I/O waits before
    # it is tried again (not at once: the kernel's shortage would turn into a busy loop).
    IO_RETRY_MS = 20
    # After a MemoryError in the loop's own bookkeeping: how long it pauses before going on.
    MEMORY_RETRY_MS = 10
    # The longest one wait of the poller lasts when a deadline is set: its timeout is a C
    # int of milliseconds, which a deadline more than 24.8 days away would overflow (into
    # a negative number: wait forever). Waking up once a day to look again costs nothing.
    LONGEST_WAIT_MS = 86400000


@cython.final
cdef class Loop:
    cdef Poller poller
    cdef object listener          # the listening socket.socket, closed when stopping
    cdef int listen_fd
    cdef int wake_fd
    cdef int signal_fd            # read end of signal.set_wakeup_fd's pipe, or -1
    cdef object callback
    cdef bint callback_takes_ip
    cdef ReadBuffer read_buffer   # where every connection's recv() lands
    cdef double grace_period
    cdef Py_ssize_t high_water       # per connection, bytes of unsent output
    cdef Py_ssize_t low_water
    cdef Py_ssize_t connection_limit # 0: no limit
    cdef object drain_condition      # put()s from other threads wait on it

    cdef PyObject **connections   # owned references, indexed by descriptor
    cdef Py_ssize_t connections_capacity
    cdef readonly Py_ssize_t connection_count

    cdef list scheduled_connections  # with work from outside an I/O event (schedule())
    cdef list awaiting_workers    # while stopping: connections waiting for a worker's reply
    cdef double worker_check_interval  # how long until the next WORKER_CHECK
    cdef list backed_off_connections  # whose I/O waits out ENOBUFS/ENOMEM
    cdef unsigned long thread_ident

    cdef readonly bint running
    cdef bint finished
    cdef bint sleeping            # blocked in the poller with the GIL released
    cdef bint wake_pending        # an eventfd write is on its way
    cdef readonly bint stop_requested
    cdef bint abort_requested     # a second Ctrl-C/SIGTERM: close everything without waiting
    cdef str stop_asked_by        # the signal's name, for the loop to log (its handler cannot)
    cdef str abort_asked_by
    cdef bint stopping
    cdef object stop_cause        # an exception of the application's that stopped the loop
    cdef bint accepting           # the listening socket is registered
    cdef LogThrottle accept_error_log
    cdef LogThrottle limit_log    # "connection limit reached"
    cdef LogThrottle coroutine_log  # "read_callback returned a coroutine"
    cdef LogThrottle reply_log    # "read_callback returned <a str, or else not bytes-like>"
    cdef LogThrottle connection_error_log  # unexpected errors of single connections
    cdef LogThrottle memory_log   # the loop's own bookkeeping out of memory
    cdef LogThrottle proxy_log    # "no valid PROXY header"
    cdef object proxy_header_parser  # proxy_protocol: proxyprotocol.parse_header; else None
    cdef Events events            # on_connect, on_disconnect, the open connections (events.pyx)
    cdef MessageFramer framer     # framing=: cuts input into messages (framing.pyx); else None
    cdef TLSServer tls            # ssl=: the SSLContext and TLS timeouts (tls.pyx); else None

    cdef Timers timers            # every timed thing (timers.pyx)
    cdef double now               # monotonic time, read once per turn of the loop

    # the loop
    cdef int check_initialized(self) except -1
    cdef int serve_until_closed(self) except -1
    cdef int serve(self) except -1
    cdef int handle_ready(self, int count) except -1
    cdef int handle(self, Connection connection, int events) except -1
    cdef int connection_failed(self, Connection connection, object error) except -1
    # accepting
    cdef int accept_connections(self) except -1
    cdef int adopt(self, int fd, sockaddr_storage *address) except -1
    cdef int reject_proxy_header(self, Connection connection, str why) except -1
    cdef int reserve_slot(self, int fd) except -1
    cdef void remove(self, Connection connection, int fd)
    cdef void pause_accepting(self, int error)
    cdef void resume_accepting(self)
    # work from outside an I/O event
    cdef int schedule(self, Connection connection) except -1
    cdef int serve_scheduled(self) except -1
    cdef void wake(self)
    cdef void drain_wakeups(self)
    # timers
    cdef int run_expired_timers(self) except -1
    cdef int await_worker(self, Connection connection) except -1
    cdef int check_awaiting_workers(self) except -1
    cdef int back_off(self, Connection connection) except -1
    cdef int retry_backed_off(self) except -1
    # stopping
    cdef int stop_for(self, BaseException cause) except -1
    cdef int begin_stop(self) except -1
    cdef int log_stop_request(self) except -1
    cdef int log_abort_request(self) except -1
    cdef void teardown_connections(self, CloseReason reason)
    cdef void teardown(self)
    cdef void release_descriptors(self)
    # signals
    cdef int drain_signals(self) except -1
    cdef int run_signal_handlers(self) except -1
    # logging
    cpdef int log(self, int level, str message, tuple args=*, object exc_info=*) except -1
    cdef int logging_failed(self, BaseException failure) except -1
    cdef int log_connection_error(self, str described, str what) except -1
