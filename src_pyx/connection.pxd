# Connection: one accepted socket, its output buffer, its state and why it closed
# (connection.pyx, which also holds ConnectionQueue).

cdef enum:
    # Reads that drop a closing connection's input per readiness event, at most
    # (discard_input; read_for_callback reads once per event, see there).
    READS_PER_EVENT = 16
    # The most bytes one recv() drops (MSG_TRUNC: the kernel discards them, no copy).
    DISCARD_CHUNK = 262144

    # Bounds of the lingering close; README.md and RELIABILITY.md describe them.
    # A lingering connection is closed once the peer has sent nothing for this long and
    # has acknowledged every byte sent to it (and the FIN): it has what it was sent and
    # is not talking; or has acknowledged nothing more for this long: it is not reading. Also how quiet a connection must have been for a close to skip
    # lingering altogether (an idle keep-alive connection when the server stops).
    LINGER_QUIET_MS = 2000
    # The longest a connection lingers, however the peer behaves (a peer that does not
    # read what was sent, or trickles input to keep the connection).
    LINGER_MAX_MS = 30000
    # The most input dropped after a close began; past it the server stops reading (and
    # a lingering connection closes): a peer that keeps streaming is not owed more CPU.
    LINGER_MAX_BYTES = 16777216


cdef enum ConnectionState:
    AWAITING_PROXY_HEADER  # proxy_protocol: reading the PROXY header; nothing reaches the
                     # callback and nothing is owed (read_proxy_header); then OPEN
                     # (or AWAITING_TLS_HANDSHAKE with ssl=)
    AWAITING_TLS_HANDSHAKE  # ssl=: the TLS handshake is under way; nothing reaches the
                     # callback (TLSConnection.handshake); then OPEN
    OPEN             # the callback gets what arrives; its replies are sent
    DRAINING         # closing: what is queued is being sent; input is dropped
    AWAITING_WORKER  # stopping, all sent, but user code still holds the queue (Loop.check_awaiting_workers)
    LINGERING        # all sent and the write side shut: input dropped until the peer closes
                     # (past LINGER_MAX_BYTES, not read: until the peer has acknowledged all)
    CLOSED


# Mirrored, member for member, by simpletcp.CloseReason (events.pyx): add a reason there too.
cdef enum CloseReason:
    NOT_CLOSING
    PEER_CLOSED      # the peer's EOF (or half-close)
    QUEUE_SHUTDOWN   # queue.shutdown()
    CALLBACK_FAILED  # the callback raised, or returned a coroutine or a str
    SERVER_STOPPING  # stop(), Ctrl-C, SIGTERM
    IDLE_TIMEOUT     # nothing moved for idle_timeout (reset if output was stuck)
    REPLY_CUT        # shutdown(immediate=True) dropped a put partly sent: reset, not FIN
    PEER_RESET       # the peer reset or vanished (ECONNRESET, EPIPE, ETIMEDOUT, ENOTCONN)
    IO_ERROR         # recv()/send() failed otherwise
    HUNG_UP          # the poller reported an error or hang-up once nothing was left to read
    LOOP_ERROR       # the loop's own work on it failed (the poller's bookkeeping, memory)
    GRACE_EXPIRED    # stopping, and the grace period ended first
    SERVER_ABORTED   # a second Ctrl-C/SIGTERM, or the loop ended: no waiting
    PROXY_HEADER_REJECTED  # proxy_protocol: no valid PROXY header in time (reset)
    FRAMING_ERROR    # framing=: a message over max_length, a malformed length header,
                     # a custom framer that failed
    TLS_ERROR        # ssl=: the handshake failed or timed out, or a TLS error (logged)


@cython.final
cdef class Connection:
    cdef int fd
    # Where the connection came from, as accept() said: every connection has it
    # (queue.peer, log lines) at no cost in memory, as these three fill what would be
    # alignment padding beside fd and beside waiters. An IPv6 host does not fit in
    # peer_ipv4 and is kept as text in peer_ip.
    cdef sa_family_t peer_family  # AF_INET, AF_INET6, AF_UNIX (a PROXY header's), or 0
    cdef unsigned short peer_port # network byte order
    cdef Loop loop
    cdef OutputBuffer output  # what the peer is still owed
    cdef object queue         # the ConnectionQueue handed to the callback, made lazily
    cdef object peer_ip       # the peer's host as str, made at accept only when the
                              # callback takes ip or the host is IPv6; see peer_host()
    cdef int interest         # READABLE/WRITABLE as registered with the poller now
    cdef ConnectionState state     # changed only by become()
    cdef CloseReason close_reason  # why the close began, then why it closed (close())
    cdef bint input_open      # input is still read (for the callback, or to be dropped)
    cdef bint paused          # OPEN, output above the high-water mark: not reading for now
    cdef bint in_callback     # its callback is running: its replies are sent when it returns
    cdef bint shut_by_user    # queue.shutdown() was called: further puts raise
    cdef bint scheduled       # in the loop's list of connections with work from outside
    cdef bint backing_off     # send()/recv() said ENOBUFS/ENOMEM: no I/O until the loop retries
    cdef int waiters          # threads blocked in put() until the output drains
    cdef in_addr peer_ipv4    # AF_INET peers' address (see peer_family)
    cdef Py_ssize_t discarded # input bytes dropped since the close began
    cdef double last_active   # loop.now when bytes last moved either way
    cdef double awaiting_since  # when it began AWAITING_PROXY_HEADER or _TLS_HANDSHAKE
    cdef double linger_started
    cdef int linger_unacknowledged  # unacknowledged() when lingering last looked (on_linger_quiet)
    cdef ActivityList listed_in  # the loop's idle or lingering list, if in one
    cdef Connection older     # neighbours in that list, least recently active first
    cdef Connection newer
    cdef bytes proxy_header_pending  # AWAITING_PROXY_HEADER: the header's bytes so far
    cdef PartialMessage *partial  # framing=: the start of a message no read finished yet
    cdef TLSConnection tls    # ssl=: its encryption (tls.pyx); None for a plain connection

    # The peer and the queue
    cdef int remember_peer(self, sockaddr_storage *address, bint as_text) except -1
    cdef int begin_life(self, Loop loop, int fd) except -1
    cdef int remember_proxied_peer(self, object header) except -1
    cdef str peer_host(self)
    cdef tuple peer_address(self)
    cdef str describe(self)
    cdef object get_queue(self)
    cdef bint queue_held(self)
    # Output, from any thread
    cdef int put(self, object item) except -1
    cdef int shutdown(self, bint immediate) except -1
    cdef bint must_wait(self)
    cdef int wait_for_drain(self, bint block, object timeout) except -1
    cdef void wake_waiters(self)
    # Events, in the loop's thread
    cdef inline int on_events(self, int events) except -1
    cdef inline int on_readable(self) except -1
    cdef inline int read_for_callback(self) except -1
    cdef int read_into_partial(self, Py_ssize_t room) except -1
    cdef inline ssize_t receive(self, char *into, Py_ssize_t room) except -1
    cdef int read_proxy_header(self) except -1
    cdef inline int hand_out(self, Py_ssize_t n) except -1
    cdef int hand_out_slices(self, Py_ssize_t n) except -1
    cdef int call_callback(self, object data) except -1
    cdef int take_reply(self, object result, str callback=*) except -1
    cdef int callback_failed(self, BaseException error, str callback=*) except -1
    cdef int discard_coroutine(self, object coroutine, str callback=*) except -1
    cdef int discard_input(self) except -1
    cdef int on_hangup(self) except -1
    cdef int on_io_error(self, int error, str operation) except -1
    cdef int on_idle_timeout(self) except -1
    cdef int on_linger_quiet(self) except -1
    cdef inline void mark_active(self, double now) noexcept
    # Sending and settling
    cdef int send_and_settle(self) except -1
    cdef inline int flush(self) except -1
    cdef inline int send_all(self, OutputBuffer *buffer) except -1
    cdef inline Py_ssize_t owed(self) noexcept
    cdef inline bint above_high_water(self) noexcept
    cdef inline void apply_backpressure(self)
    cdef inline int update_interest(self) except -1
    # Life (the diagram at the top of connection.pyx)
    cdef int become(self, ConnectionState state) except -1
    cdef void begin_close(self, CloseReason reason)
    cdef int finish_close(self) except -1
    cdef int start_lingering(self) except -1
    cdef inline bint saw_eof(self) noexcept
    cdef int unacknowledged(self)
    cdef inline double linger_limit(self) noexcept
    cdef void close(self, CloseReason reason)
    cdef void abort(self, CloseReason reason)
