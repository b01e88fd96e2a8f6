# Connection: one accepted socket, its output buffer, and the queue the user sees.
#
# Every method runs with the GIL held and calls no Python code between reading and
# writing its state, so a put() from any thread is atomic against the loop without a
# lock. Only the loop thread touches the descriptor: a put from elsewhere appends to
# the buffer and hands the connection to the loop (Loop.schedule) to be sent.
#
# A connection's life (ConnectionState):
#
#   OPEN ──close begins──> DRAINING ──all sent──> LINGERING ──peer's EOF / a bound──> CLOSED
#                              │                ↑     (or CLOSED at once, see finish_close)
#     all sent, stopping, and  │                │ the queue let go of (its late reply,
#     user code holds the queue↓                │ if any, sent)
#                          AWAITING_WORKER ─────┘
#
# Any state can go to CLOSED at once: a socket error, the end of the grace period.
#
# A close begins (begin_close) at the peer's EOF, queue.shutdown(), a failing callback,
# stop() or the idle timeout; what is queued is sent first. Once the close has begun,
# whatever the peer still sends is read and dropped: left unread, it would make the
# kernel answer the final close() with RST and throw away the tail of the reply.
#
# The lingering close (as nginx's lingering_close, Apache's lingering close): when
# the server closes for any reason but the peer's EOF, it shuts its write side once
# everything is sent, so the peer reads the whole reply and then EOF, and keeps reading
# and dropping input until the peer closes too. Bounded by the LINGER_* constants below
# and, while stopping, by the grace period. After the peer's EOF a plain close is
# already graceful: nothing more can arrive.


# Reads from one connection per readiness event, at most (see read_for_callback).
DEF READS_PER_EVENT = 16
# The most bytes one recv() drops (MSG_TRUNC: the kernel discards them, no copy).
DEF DISCARD_CHUNK = 262144

# Bounds of the lingering close; README.md and RELIABILITY.md describe them.
# A lingering connection is closed once the peer has sent nothing for this long and
# has acknowledged every byte sent to it (and the FIN): it has what it was sent and
# is not talking. Also how quiet a connection must have been for a close to skip
# lingering altogether (an idle keep-alive connection when the server stops).
DEF LINGER_QUIET_SECONDS = 2.0
# The longest a connection lingers, however the peer behaves (a peer that does not
# read what was sent, or trickles input to keep the connection).
DEF LINGER_MAX_SECONDS = 30.0
# The most input dropped after a close began; past it the server stops reading (and
# a lingering connection closes): a peer that keeps streaming is not owed more CPU.
DEF LINGER_MAX_BYTES = 16777216


cdef enum ConnectionState:
    AWAITING_PROXY_HEADER  # proxy_protocol: reading the PROXY header; nothing reaches the
                     # callback, and nothing is owed (read_proxy_header); then OPEN
    OPEN             # the callback gets what arrives; its replies are sent
    DRAINING         # closing: what is queued is being sent; input is dropped
    AWAITING_WORKER  # stopping, all sent, but user code still holds the queue (Loop.check_awaiting_workers)
    LINGERING        # all sent and the write side shut: input dropped until the peer closes
                     # (past LINGER_MAX_BYTES, not read: until the peer has acknowledged all)
    CLOSED


cdef enum CloseReason:
    NOT_CLOSING
    PEER_CLOSED      # the peer's EOF (or half-close)
    QUEUE_SHUTDOWN   # queue.shutdown()
    CALLBACK_FAILED  # the callback raised
    SERVER_STOPPING  # stop(), Ctrl-C, SIGTERM
    IDLE_TIMEOUT
    REPLY_CUT        # shutdown(immediate=True) dropped a put partly sent: reset, not FIN


cdef class ActivityList


@cython.final
cdef class Connection:
    """One accepted socket: its state, its unsent output and the queue the user sees."""

    cdef int fd
    # Where the connection came from, as accept() said: every connection has it
    # (queue.peer, log lines) at no cost in memory, as these three fill what would be
    # alignment padding beside fd and beside waiters. An IPv6 host does not fit in
    # peer_ipv4 and is kept as text in peer_ip.
    cdef sa_family_t peer_family  # AF_INET, AF_INET6, AF_UNIX (a PROXY header's), or 0
    cdef unsigned short peer_port # network byte order
    cdef Loop loop
    cdef OutputBuffer out
    cdef object queue         # the ConnectionQueue handed to the callback, made lazily
    cdef object peer_ip       # the peer's host as str, made at accept only when the
                              # callback takes ip or the host is IPv6; see peer_host()
    cdef int interest         # READABLE/WRITABLE as registered with the poller now
    cdef ConnectionState state
    cdef CloseReason close_reason  # why the close began (the first reason wins, but REPLY_CUT)
    cdef bint input_open      # input is still read (for the callback, or to be dropped)
    cdef bint paused          # OPEN, output above the high-water mark: not reading for now
    cdef bint shut_by_user    # queue.shutdown() was called: further puts raise
    cdef bint scheduled       # sitting in loop.scheduled, waiting to be serviced
    cdef bint backing_off     # send()/recv() said ENOBUFS/ENOMEM: no I/O until the loop retries
    cdef int waiters          # threads blocked in put() until the output drains
    cdef in_addr peer_ipv4    # AF_INET peers' address (see peer_family)
    cdef Py_ssize_t discarded # input bytes dropped since the close began
    cdef double last_active   # loop.now when bytes last moved either way
    cdef double linger_started
    cdef ActivityList listed_in  # the loop's idle or lingering list, if in one
    cdef Connection older     # neighbours in that list, least recently active first
    cdef Connection newer
    cdef bytes proxy_header_pending  # AWAITING_PROXY_HEADER: the header's bytes so far

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        outbuf_clear(&self.out)

    cdef int remember_peer(self, sockaddr_storage *address, bint as_text) except -1:
        """Keep accept()'s `address`; as text too if `as_text` (the callback takes ip)."""
        self.peer_family = address.ss_family
        if address.ss_family == AF_INET:
            self.peer_port = (<sockaddr_in *>address).sin_port
            self.peer_ipv4 = (<sockaddr_in *>address).sin_addr
        elif address.ss_family == AF_INET6:
            self.peer_port = (<sockaddr_in6 *>address).sin6_port
            as_text = True
        if as_text:
            self.peer_ip = format_peer_ip(address)
        return 0

    cdef int remember_proxied_peer(self, object header) except -1:
        """The peer a PROXY header names (simpletcp.proxyprotocol.ProxyHeader), in place
        of the balancer's address accept() gave; none named: accept()'s stands."""
        source = header.source
        if source is None:
            return 0
        family = header.family
        self.peer_family = (AF_INET if family == "TCP4" else
                            AF_INET6 if family == "TCP6" else AF_UNIX)
        self.peer_ip = source[0]
        self.peer_port = htons(source[1])
        return 0

    cdef str peer_host(self):
        """The peer's host as text ("" if it is not an IP peer)."""
        cdef char text[INET6_ADDRSTRLEN + 1]
        if self.peer_ip is not None:
            return self.peer_ip
        if self.peer_family == AF_INET and inet_ntop(AF_INET, &self.peer_ipv4, text,
                                                      sizeof(text)) != NULL:
            return (<bytes>text).decode("ascii")
        return ""

    cdef object get_queue(self):
        if self.queue is None:
            self.queue = ConnectionQueue(self)
        return self.queue

    cdef bint queue_held(self):
        """Whether code besides this connection holds its queue: a worker that may reply.

        Only this connection references a queue nobody kept, so a count above one means
        a thread, a closure or a registry has it. The count is read right after the
        callback returned or in the loop, never while a call is passing the queue.
        """
        return self.queue is not None and refcount_of(<PyObject *>self.queue) > 1

    # ---- producing output (any thread) ------------------------------------------

    cdef int put(self, object item) except -1:
        cdef bytes chunk
        if PyBytes_CheckExact(item):
            chunk = <bytes>item
        else:
            chunk = as_chunk(item)
        if self.shut_by_user:
            raise ShutDown("put() on a connection queue after shutdown()")
        if self.state == CLOSED or self.state == LINGERING:
            # The peer is gone, or the server has shut its side: a late reply (typically
            # from a worker thread) has nowhere to go. Not an error for the caller: the
            # server may close any time.
            self.loop.log(logging.DEBUG, "dropped %d bytes put after connection %s closed",
                          (PyBytes_GET_SIZE(chunk), self.describe()))
            return 0
        if PyBytes_GET_SIZE(chunk) == 0:
            return 0
        outbuf_push(&self.out, chunk)
        if self is not self.loop.dispatching:
            # The running callback's own connection is flushed as soon as it returns;
            # anything else goes through the loop.
            self.loop.schedule(self)
        return 0

    cdef int shutdown(self, bint immediate) except -1:
        """The user's queue.shutdown(): send what is queued (or not), then close."""
        self.shut_by_user = True
        if self.state == CLOSED:
            return 0
        self.begin_close(QUEUE_SHUTDOWN)
        if immediate:
            if self.out.offset:
                # Part of a put is out and the rest is dropped: a graceful close would
                # let the peer take that part for the whole (finish_close resets).
                self.close_reason = REPLY_CUT
            outbuf_clear(&self.out)
        if self is not self.loop.dispatching:
            self.loop.schedule(self)
        return 0

    # ---- I/O (loop thread only) ---------------------------------------------------

    cdef void begin_close(self, CloseReason reason):
        """Stop serving the peer: send what is queued, then close (see finish_close)."""
        if self.state == OPEN or self.state == AWAITING_PROXY_HEADER:
            self.state = DRAINING
            self.close_reason = reason
            self.paused = False

    cdef inline void mark_active(self, double now) noexcept:
        self.last_active = now
        if self.listed_in is not None and self is not self.listed_in.newest:
            self.listed_in.move_to_newest(self)

    cdef inline int on_events(self, int events) except -1:
        """READABLE reads (and then sends), WRITABLE sends, HANGUP acts on an error or
        hang-up the poller reports."""
        if events & READABLE:
            self.on_readable()
        elif events & WRITABLE:
            self.service()
        if events & HANGUP and self.fd >= 0:
            self.on_hangup()
        return 0

    cdef inline int on_readable(self) except -1:
        if self.state == OPEN:
            self.read_for_callback()
        elif self.state == AWAITING_PROXY_HEADER:
            self.read_proxy_header()
        elif self.input_open:
            self.discard_input()
        return self.service()

    cdef inline int read_for_callback(self) except -1:
        # A read that fills the buffer means more is probably waiting: read again (each
        # chunk is still its own callback) and flush the replies once, in one sendmsg().
        # The bound keeps one streaming peer from starving the others.
        cdef Loop loop = self.loop
        cdef ssize_t n
        cdef int reads
        for reads in range(READS_PER_EVENT):
            if self.paused:
                break
            n = recv(self.fd, loop.read_buffer, loop.recv_bytes, 0)
            if n > 0:
                self.mark_active(loop.now)
                loop.dispatch(self, loop.received(n))
                if self.state != OPEN:
                    break  # the callback closed it (shutdown(), an exception)
                if n < loop.recv_bytes or self.out.pending >= loop.high_water:
                    break
            elif n == 0:
                # EOF or a half-close: the peer has said all it will, but may still be
                # reading, so what is queued goes out before the socket is closed.
                self.input_open = False
                self.begin_close(PEER_CLOSED)
                break
            elif would_block(errno):
                break
            elif errno != EINTR:
                return self.on_io_error(errno, "recv")
        return 0

    cdef int read_proxy_header(self) except -1:
        """Read the PROXY protocol header (proxy_protocol=True): the peer becomes the
        client it names, and what follows the header goes to the callback. A malformed
        header closes the connection (logged): nothing of it reaches the callback. The
        loop's header timeout (Loop.expire_proxy_header) bounds how long this lasts."""
        cdef Loop loop = self.loop
        cdef ssize_t n = recv(self.fd, loop.read_buffer, loop.recv_bytes, 0)
        if n == 0:
            self.close()  # gone before saying whom for: nothing is owed
            return 0
        if n < 0:
            if would_block(errno) or errno == EINTR:
                return 0
            return self.on_io_error(errno, "recv")
        pending = self.proxy_header_pending + loop.received(n)
        try:
            header = loop.proxy_header_parser(pending)
        except ValueError as error:
            loop.reject_proxy_header(self, str(error))
            return 0
        if header is None:
            self.proxy_header_pending = pending
            return 0
        self.proxy_header_pending = None
        self.remember_proxied_peer(header)
        self.state = OPEN
        if self.listed_in is not None:
            self.listed_in.unlink(self)  # the header timeout no longer applies
        if loop.idle_timeout:
            loop.idle.append(self)
        self.mark_active(loop.now)
        if len(pending) > header.length:
            loop.dispatch(self, pending[header.length:])
        return 0

    cdef int discard_input(self) except -1:
        """Read and drop what the peer sent after the close began (see the top)."""
        cdef Loop loop = self.loop
        cdef ssize_t n
        cdef int reads
        for reads in range(READS_PER_EVENT):
            n = recv(self.fd, loop.read_buffer, DISCARD_CHUNK, MSG_TRUNC)
            if n > 0:
                self.discarded += n
                self.mark_active(loop.now)
                if self.discarded > LINGER_MAX_BYTES:
                    loop.log(logging.DEBUG, "connection %s: %d bytes dropped after the close "
                             "began; no longer reading", (self.describe(), self.discarded))
                    self.input_open = False
                    break
            elif n == 0:
                self.input_open = False
                break
            elif would_block(errno):
                break
            elif errno != EINTR:
                return self.on_io_error(errno, "recv")
        if self.state == LINGERING and (
                self.saw_eof() or loop.now - self.linger_started >= LINGER_MAX_SECONDS):
            self.close()
        return 0

    cdef inline bint saw_eof(self) noexcept:
        """Whether input ended with the peer's EOF, rather than at LINGER_MAX_BYTES (then
        unread input may remain: a close() would reset, and throw away what the kernel
        has not delivered yet, so the connection lingers until the peer acknowledged it)."""
        return not self.input_open and self.discarded <= LINGER_MAX_BYTES

    cdef int service(self) except -1:
        """Send what can be sent now; move on if that finished a close; then bring the
        reading pause and the registration up to date."""
        cdef Loop loop = self.loop
        if self.fd < 0:
            return 0
        if not self.backing_off:
            self.flush()
            if self.fd < 0:
                return 0
        if (self.state == DRAINING or self.state == AWAITING_WORKER) and not self.out.pending:
            self.finish_close()
            if self.fd < 0:
                return 0
        # Backpressure: a peer that sends but does not read would otherwise grow its
        # output buffer without bound. Reading stops above the high-water mark and
        # resumes below the low one; put()s from other threads wait for the same.
        if self.out.pending >= loop.high_water:
            if self.state == OPEN:
                self.paused = True
        elif self.out.pending <= loop.low_water:
            self.paused = False
            if self.waiters:
                loop.notify_drained()
        return self.update_interest()

    cdef inline int flush(self) except -1:
        cdef Py_ssize_t sent
        cdef int error
        while self.out.pending:
            sent = outbuf_send(&self.out, self.fd)
            if sent < 0:
                error = errno
                if would_block(error):
                    break
                if error == EINTR:
                    continue
                self.on_io_error(error, "send")  # closed, or backing off
                break
            self.mark_active(self.loop.now)
        return 0

    cdef inline int update_interest(self) except -1:
        cdef int wanted = 0
        if not self.backing_off:
            if self.state == OPEN:
                if not self.paused:
                    wanted = READABLE
            elif self.input_open:
                wanted = READABLE  # to drop it, and to see the peer's EOF
            if self.out.pending:
                wanted |= WRITABLE
        if wanted != self.interest:
            self.loop.poller.modify(self.fd, wanted)
            self.interest = wanted
        return 0

    cdef int finish_close(self) except -1:
        """Everything queued is sent (DRAINING or AWAITING_WORKER): close, linger or wait."""
        if self.close_reason == REPLY_CUT:
            self.abort()
            return 0
        # When the server is stopping, a worker still holding the queue may be about to
        # reply: wait for it (Loop.check_awaiting_workers). At the peer's EOF in normal
        # running, not: a registry of queues (a chat server) holds every queue, and its
        # closed connections would pile up.
        if (self.loop.stopping and not self.shut_by_user
                and self.close_reason != CALLBACK_FAILED and self.queue_held()):
            if self.state != AWAITING_WORKER:
                self.state = AWAITING_WORKER
                self.loop.await_worker(self)
            return 0
        if self.saw_eof():
            self.close()  # nothing can arrive to cause a reset
            return 0
        return self.start_lingering()

    cdef int start_lingering(self) except -1:
        """Shut the write side and drop input until the peer closes (see the top)."""
        cdef Loop loop = self.loop
        if (loop.now - self.last_active >= LINGER_QUIET_SECONDS
                and self.unacknowledged() == 0):
            self.close()  # quiet, and it has all it was sent: nothing to protect
            return 0
        if shutdown(self.fd, SHUT_WR) < 0:
            self.close()  # the peer is gone already
            return 0
        self.state = LINGERING
        self.linger_started = self.last_active = loop.now
        if self.listed_in is not None:
            self.listed_in.unlink(self)  # the idle timeout no longer applies
        loop.lingering.append(self)
        return 0

    cdef int on_linger_quiet(self) except -1:
        """The peer of this lingering connection sent nothing for LINGER_QUIET_SECONDS."""
        if (self.unacknowledged() > 0
                and self.loop.now - self.linger_started < LINGER_MAX_SECONDS):
            self.mark_active(self.loop.now)  # it is still receiving what was sent
        else:
            self.close()
        return 0

    cdef int unacknowledged(self):
        """Bytes sent that the peer has not acknowledged yet (0 if unknown)."""
        cdef int queued = 0
        if ioctl(self.fd, SIOCOUTQ, &queued) < 0:
            return 0
        return queued

    cdef int on_hangup(self) except -1:
        """The poller reports an error or hang-up, whatever this connection waits for.

        Open, the recv() that followed the event has seen (or will, in the next turn)
        the data still there and then the error. Past OPEN there is nothing left to
        read for the callback, and the peer can take nothing more: close, or the poller
        reports the same hang-up again at once, forever.
        """
        if self.state != OPEN:
            self.close()
        return 0

    cdef int on_io_error(self, int error, str operation) except -1:
        if error == ENOBUFS or error == ENOMEM:
            # The kernel is short of memory for a moment: not the peer's fault, so the
            # connection is not dropped; its I/O is tried again shortly (Loop.back_off).
            self.loop.back_off(self)
            return 0
        # A peer that resets or vanishes is ordinary life for a server: debug only.
        if error == ECONNRESET or error == EPIPE or error == ETIMEDOUT or error == ENOTCONN:
            self.loop.log(logging.DEBUG, "connection %s: %s: %s",
                          (self.describe(), operation, strerror(error).decode()))
        else:
            self.loop.log_connection_error(self.describe(),
                                           f"{operation} failed: {strerror(error).decode()}")
        self.close()
        return 0

    cdef bint must_wait(self):
        """Whether a put() now has to wait for the output to drain (see ConnectionQueue.put).

        In any state: while stopping, the loop waits for a worker that holds the queue
        and sends what it puts, which must not pile up either (a lingering or closed
        connection has nothing pending, and drops what is put).
        """
        return (self.out.pending >= self.loop.high_water
                and PyThread_get_thread_ident() != self.loop.thread_ident)

    cdef void close(self):
        cdef int fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        self.state = CLOSED
        self.input_open = False
        outbuf_clear(&self.out)
        if self.listed_in is not None:
            self.listed_in.unlink(self)
        self.loop.forget(self, fd)

    cdef void abort(self):
        """Close with RST: the peer must not take what it got for a whole reply."""
        if self.fd >= 0:
            reset_on_close(self.fd)
        self.close()

    cdef tuple peer_address(self):
        """(host, port) of the peer, as given to the user (queue.peer)."""
        return (self.peer_host(), ntohs(self.peer_port))

    cdef str describe(self):
        if self.peer_family == AF_INET6:
            return f"[{self.peer_host()}]:{ntohs(self.peer_port)} (fd {self.fd})"
        if self.peer_family == AF_INET:
            return f"{self.peer_host()}:{ntohs(self.peer_port)} (fd {self.fd})"
        return f"fd {self.fd}"


@cython.final
cdef class ActivityList:
    """Connections ordered by last activity, least recent first.

    The next to time out is always the oldest; marking activity moves a connection to
    the newest end, O(1). The loop keeps one for the idle timeout and one for lingering
    connections; a connection is in at most one.
    """

    cdef Connection oldest
    cdef Connection newest

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef void append(self, Connection connection) noexcept:
        connection.older = self.newest
        connection.newer = None
        if self.newest is not None:
            self.newest.newer = connection
        else:
            self.oldest = connection
        self.newest = connection
        connection.listed_in = self

    cdef void unlink(self, Connection connection) noexcept:
        if connection.older is not None:
            connection.older.newer = connection.newer
        elif self.oldest is connection:
            self.oldest = connection.newer
        if connection.newer is not None:
            connection.newer.older = connection.older
        elif self.newest is connection:
            self.newest = connection.older
        connection.older = connection.newer = None
        connection.listed_in = None

    cdef void move_to_newest(self, Connection connection) noexcept:
        self.unlink(connection)
        self.append(connection)


cdef bytes as_chunk(object item):
    """A bytes snapshot of a bytes-like `item`, or TypeError naming what was given."""
    if isinstance(item, str):
        raise TypeError("queue.put() takes a bytes-like object, not str: "
                        "encode it first, e.g. queue.put(text.encode())")
    if isinstance(item, bytes):
        return bytes(item)  # a bytes subclass: keep only the bytes
    try:
        # A copy, so that mutating a bytearray after put() cannot change what is sent.
        return bytes(memoryview(item))
    except TypeError:
        raise TypeError("queue.put() takes a bytes-like object (bytes, bytearray, "
                        f"memoryview), not {type(item).__name__}") from None


cdef inline bint is_live(object candidate):
    """Whether `candidate` is a connection the loop made.

    A Connection made from Python (Connection.__new__) has no loop: nothing may use it.
    The loop makes only exact Connections, so the type test is exact (and cheap).
    """
    return type(candidate) is Connection and (<Connection>candidate).loop is not None


cdef inline Connection connection_of(object queue):
    """The connection behind `queue`, or TypeError: never a crash.

    The queue is a Python object whose slot can be emptied or replaced
    (ConnectionQueue.__new__, object.__setattr__), so every method comes through here.
    """
    cdef object connection = getattr(queue, "_connection", None)
    if not is_live(connection):
        raise TypeError("this ConnectionQueue is not bound to a connection: the server "
                        "creates each connection's queue and hands it to the callback")
    return <Connection>connection


class ConnectionQueue(_queue.Queue):
    """The queue a callback is given: what is put into it is sent to that peer.

    It is a ``queue.Queue`` so code written for the original simpleTCP keeps working,
    but it is consumed by the server, not by get(): put() and put_nowait() queue bytes
    for sending, from the callback or from any thread; shutdown() closes the connection
    once what was queued is sent (shutdown(immediate=True): at once). ``peer`` is the
    (host, port) the connection came from.
    """

    # Queue.__init__ is skipped on purpose: its lock and three Conditions would cost
    # about a kilobyte per connection, and nothing here needs them.
    __slots__ = ("_connection",)

    def __init__(self, connection):
        if not is_live(connection):
            raise TypeError("ConnectionQueue cannot be created from Python: the server "
                            "creates each connection's queue and hands it to the callback "
                            f"(got {type(connection).__name__})")
        self._connection = connection

    def put(self, item, block=True, timeout=None):
        """Queue bytes-like ``item`` to be sent, in order, to this connection's peer.

        From the server's callback this never blocks. From another thread, while the
        connection's unsent output is above the server's high-water mark, it waits for
        the output to drain below the low-water mark, as queue.Queue.put waits for room:
        ``block=False`` or an expired ``timeout`` raise ``queue.Full``.
        """
        cdef Connection connection = connection_of(self)
        if timeout is not None:
            timeout = _arguments.check_wait_seconds(timeout, "timeout")
        if connection.must_wait():
            connection.loop.wait_for_drain(connection, block, timeout)
        connection.put(item)

    def put_nowait(self, item):
        """put(item, block=False): from another thread, queue.Full above the high-water mark."""
        cdef Connection connection = connection_of(self)
        if connection.must_wait():
            raise _queue.Full
        connection.put(item)

    def shutdown(self, immediate=False):
        """Close the connection once what is queued is sent (or now, if immediate)."""
        connection_of(self).shutdown(immediate)

    def qsize(self):
        """How many queued chunks are not yet wholly sent."""
        return outbuf_chunks(&connection_of(self).out)

    def empty(self):
        return outbuf_chunks(&connection_of(self).out) == 0

    def full(self):
        """Whether the unsent output is at or above the server's high-water mark."""
        cdef Connection connection = connection_of(self)
        return connection.out.pending >= connection.loop.high_water

    @property
    def pending_bytes(self):
        """How many queued bytes the peer has not been sent yet."""
        return connection_of(self).out.pending

    @property
    def peer(self):
        """The (host, port) this connection came from, as accept() gave it; unique among
        open connections, and still there after the connection closed."""
        return connection_of(self).peer_address()

    def _consumed_by_server(self, *args, **kwargs):
        raise NotImplementedError(
            "a connection queue is consumed by the server: only put(), put_nowait(), "
            "shutdown(), qsize(), empty() and full() are available")

    get = get_nowait = task_done = join = _consumed_by_server

    def __reduce_ex__(self, protocol):
        # A copy would stand for the same connection without being its queue: a worker
        # holding only the copy would not keep the connection open at stop() (the loop
        # watches who holds the queue), and the queue would no longer be one per peer.
        raise TypeError("a ConnectionQueue cannot be copied or pickled: it is the one "
                        "queue of a live connection")

    def __repr__(self):
        cdef Connection connection
        try:
            connection = connection_of(self)
        except TypeError:
            return "<ConnectionQueue not bound to a connection>"
        return f"<ConnectionQueue {connection.describe()} pending={connection.out.pending}>"
