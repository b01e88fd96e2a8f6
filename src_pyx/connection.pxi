# Connection: one accepted socket, its output buffer, and the queue the user sees.
#
# Every method runs with the GIL held and calls no Python code between reading and
# writing its state, so a put() from any thread is atomic against the loop without a
# lock. Only the loop thread touches the descriptor: a put from elsewhere appends to
# the buffer and hands the connection to the loop (Loop.schedule) to be sent.


# Reads from one connection per readiness event, at most (see on_readable).
DEF READS_PER_EVENT = 16


cdef struct PeerAddress:
    # Where a connection came from, as accept() said, kept in 8 bytes so that every
    # connection has it (queue.peer, log lines) at no cost in memory; an IPv6 host does
    # not fit and is kept as text in Connection.peer_ip instead.
    sa_family_t family        # AF_INET, AF_INET6, or 0: not an IP peer
    unsigned short port       # network byte order
    in_addr ipv4              # AF_INET only


cdef class Connection:
    cdef int fd
    cdef PeerAddress peer     # here, beside fd, it fills what was alignment padding
    cdef Loop loop
    cdef OutputBuffer out
    cdef object queue         # the ConnectionQueue handed to the callback, made lazily
    cdef object peer_ip       # the peer's host as str, made at accept only when the
                              # callback takes ip or the host is IPv6; see peer_host()
    cdef int interest         # READABLE/WRITABLE as registered with the poller now
    cdef bint reading         # False after EOF, shutdown() or stop(): drain, then close
    cdef bint closing         # close as soon as the output buffer is empty
    cdef bint shut_by_user    # queue.shutdown() was called: further puts raise
    cdef bint callback_failed # the callback raised: close once the output is sent
    cdef bint lingering       # stopping, all sent, but the queue is held (Loop.linger)
    cdef bint scheduled       # sitting in loop.scheduled, waiting to be serviced
    cdef bint paused          # output above the high-water mark: not reading for now
    cdef int waiters          # threads blocked in put() until the output drains
    cdef double last_active   # loop.now when bytes last moved (with an idle timeout)
    cdef Connection older     # neighbours in the loop's idle list, oldest activity first
    cdef Connection newer

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        outbuf_clear(&self.out)

    cdef int remember_peer(self, sockaddr_storage *address, bint as_text) except -1:
        """Keep accept()'s `address`; as text too if `as_text` (the callback takes ip)."""
        self.peer.family = address.ss_family
        if address.ss_family == AF_INET:
            self.peer.port = (<sockaddr_in *>address).sin_port
            self.peer.ipv4 = (<sockaddr_in *>address).sin_addr
        elif address.ss_family == AF_INET6:
            self.peer.port = (<sockaddr_in6 *>address).sin6_port
            as_text = True
        if as_text:
            self.peer_ip = format_peer_ip(address)
        return 0

    cdef str peer_host(self):
        """The peer's host as text ("" if it is not an IP peer)."""
        cdef char text[INET6_ADDRSTRLEN + 1]
        if self.peer_ip is not None:
            return self.peer_ip
        if self.peer.family == AF_INET and inet_ntop(AF_INET, &self.peer.ipv4, text,
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
        if self.fd < 0:
            # The peer is gone; a late reply (typically from a worker thread) has
            # nowhere to go. Not an error for the caller: the server may close any time.
            logger.debug("dropped %d bytes put after connection %s closed",
                         PyBytes_GET_SIZE(chunk), self.describe())
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
        if self.fd < 0:
            return 0
        if immediate:
            outbuf_clear(&self.out)
        self.reading = False
        self.closing = True
        if self is not self.loop.dispatching:
            self.loop.schedule(self)
        return 0

    # ---- I/O (loop thread only) ---------------------------------------------------

    cdef int on_readable(self) except -1:
        # A read that fills the buffer means more is probably waiting: read again (each
        # chunk is still its own callback) and flush the replies once, in one sendmsg().
        # The bound keeps one streaming peer from starving the others.
        cdef Loop loop = self.loop
        cdef ssize_t n
        cdef int reads
        for reads in range(READS_PER_EVENT):
            if not self.reading or self.paused:
                break
            n = recv(self.fd, loop.read_buffer, loop.recv_bytes, 0)
            if n > 0:
                if loop.idle_timeout:
                    loop.touch(self)
                loop.dispatch(self, loop.received(n))
                if n < loop.recv_bytes or self.out.pending >= loop.high_water:
                    break
            elif n == 0:
                # EOF or a half-close: the peer has said all it will, but may still be
                # reading, so what is queued goes out before the socket is closed.
                self.reading = False
                self.closing = True
                break
            elif would_block(errno):
                break
            elif errno != EINTR:
                return self.fail(errno, "recv")
        return self.service()

    cdef int service(self) except -1:
        """Send what can be sent now, then bring the registration up to date."""
        cdef Loop loop = self.loop
        cdef Py_ssize_t sent
        cdef int wanted
        if self.fd < 0:
            return 0
        while self.out.pending:
            sent = outbuf_send(&self.out, self.fd)
            if sent < 0:
                if would_block(errno):
                    break
                if errno == EINTR:
                    continue
                return self.fail(errno, "send")
            if loop.idle_timeout:
                loop.touch(self)
        if self.closing and not self.out.pending:
            # All that was queued is sent. When the server is stopping, a worker still
            # holding the queue may be about to reply: wait for it (Loop.linger). At the
            # peer's EOF, not: a registry of queues (a chat server) holds every queue,
            # and its closed connections would pile up.
            if (not loop.stopping or self.shut_by_user or self.callback_failed
                    or not self.queue_held()):
                self.close()
                return 0
            loop.linger(self)
        # Backpressure: a peer that sends but does not read would otherwise grow its
        # output buffer without bound. Reading stops above the high-water mark and
        # resumes below the low one; put()s from other threads wait for the same.
        if self.out.pending >= loop.high_water:
            self.paused = True
        elif self.out.pending <= loop.low_water:
            self.paused = False
            if self.waiters:
                loop.notify_drained()
        wanted = 0
        if self.reading and not self.paused:
            wanted = READABLE
        if self.out.pending:
            wanted |= WRITABLE
        if wanted != self.interest:
            self.loop.poller.modify(self.fd, wanted)
            self.interest = wanted
        return 0

    cdef int fail(self, int error, str operation) except -1:
        # A peer that resets or vanishes is ordinary life for a server: debug only.
        if error == ECONNRESET or error == EPIPE or error == ETIMEDOUT or error == ENOTCONN:
            logger.debug("connection %s: %s: %s", self.describe(), operation, strerror(error).decode())
        else:
            logger.warning("connection %s: %s failed: %s", self.describe(), operation,
                           strerror(error).decode())
        self.close()
        return 0

    cdef void close_after_failed_callback(self):
        """The callback raised (or cannot run): send what it queued, then close."""
        self.callback_failed = True
        self.reading = False
        self.closing = True

    cdef bint must_wait(self):
        """Whether a put() now has to wait for the output to drain (see ConnectionQueue.put)."""
        return (self.out.pending >= self.loop.high_water and self.fd >= 0
                and not self.closing
                and PyThread_get_thread_ident() != self.loop.thread_ident)

    cdef void close(self):
        cdef int fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        self.reading = False
        outbuf_clear(&self.out)
        self.loop.forget(self, fd)

    cdef tuple peer_address(self):
        """(host, port) of the peer, as given to the user (queue.peer)."""
        return (self.peer_host(), ntohs(self.peer.port))

    cdef str describe(self):
        if self.peer.family == AF_INET6:
            return f"[{self.peer_host()}]:{ntohs(self.peer.port)} (fd {self.fd})"
        if self.peer.family == AF_INET:
            return f"{self.peer_host()}:{ntohs(self.peer.port)} (fd {self.fd})"
        return f"fd {self.fd}"


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
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
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
