# Connection: one accepted socket, what it owes its peer, its state and why it closed,
# and the queue the user sees.
#
# Every method runs with the GIL held and calls no Python code between reading and
# writing its state, so a put() from any thread is atomic against the loop without a
# lock. Only the loop thread touches the descriptor: a put from elsewhere appends to
# the buffer and hands the connection to the loop (Loop.schedule) to be sent.
#
# A connection's life (ConnectionState, changed only by become(); CloseReason says why):
#
#   (AWAITING_PROXY_HEADER ──header read──> OPEN, with proxy_protocol; read_proxy_header)
#   (AWAITING_TLS_HANDSHAKE ──handshake done──> OPEN, with ssl=, after any PROXY header;
#    TLSConnection.handshake in tls.pyx. A clean close sends TLS's close_notify before
#    the lingering close; a TLS error (TLS_ERROR) sends OpenSSL's alert instead.)
#
#   OPEN ──close begins──> DRAINING ──all sent──> LINGERING ──peer's EOF / a bound──> CLOSED
#                              │                ↑     (or CLOSED at once, see finish_close)
#     all sent, stopping, and  │                │ the queue let go of (its late reply,
#     user code holds the queue↓                │ if any, sent)
#                          AWAITING_WORKER ─────┘
#
# A close begins (begin_close) at the peer's EOF (PEER_CLOSED), queue.shutdown()
# (QUEUE_SHUTDOWN), a failing callback (CALLBACK_FAILED), stop() (SERVER_STOPPING),
# the idle timeout (IDLE_TIMEOUT) or input its framer rejects (FRAMING_ERROR); what is
# queued is sent first. Once the close has begun, whatever the peer still sends is
# read and dropped: left unread, it would make the kernel answer the final close()
# with RST and throw away the tail of the reply.
#
# Any state goes to CLOSED at once (close/abort) on a reset or vanished peer
# (PEER_RESET), another socket error (IO_ERROR), a hang-up with nothing left to read
# (HUNG_UP), a failure of the loop's own work (LOOP_ERROR), the end of the grace period
# (GRACE_EXPIRED), a second stop signal (SERVER_ABORTED), shutdown(immediate=True) in
# the middle of a reply (REPLY_CUT) or output stuck at the idle timeout (IDLE_TIMEOUT).
#
# The lingering close (as nginx's lingering_close, Apache's lingering close): when
# the server closes for any reason but the peer's EOF, it shuts its write side once
# everything is sent, so the peer reads the whole reply and then EOF, and keeps reading
# and dropping input until the peer closes too. Bounded by the LINGER_* constants
# (connection.pxd) and, while stopping, by the grace period. After the peer's EOF a
# plain close is already graceful: nothing more can arrive.


cdef class Connection:
    """One accepted socket: its state, its unsent output and the queue the user sees."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        outbuf_clear(&self.output)
        forget_partial(self)

    # ---- the peer and the queue -------------------------------------------------

    cdef int begin_life(self, Loop loop, int fd) except -1:
        """Its first state, set once, when the loop has registered `fd`: OPEN, or
        AWAITING_PROXY_HEADER with proxy_protocol. From here on only become() changes it."""
        self.fd = fd
        self.loop = loop
        self.input_open = True
        self.interest = READABLE
        self.last_active = self.awaiting_since = loop.now
        if loop.proxy_header_parser is not None:
            # OPEN once its header is read (read_proxy_header).
            self.state = AWAITING_PROXY_HEADER
            self.proxy_header_pending = b""
            loop.timers.awaiting_proxy_header.append(self)
        elif self.tls is not None:
            self.state = AWAITING_TLS_HANDSHAKE  # OPEN once it is done (TLSConnection.handshake)
            loop.timers.awaiting_tls_handshake.append(self)
        else:
            self.state = OPEN
            if loop.timers.idle_timeout:
                loop.timers.idle.append(self)
            loop.events.opened(self)  # on_connect
        return 0

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

    cdef tuple peer_address(self):
        """(host, port) of the peer, as given to the user (queue.peer)."""
        return (self.peer_host(), ntohs(self.peer_port))

    cdef str describe(self):
        if self.peer_family == AF_INET6:
            return f"[{self.peer_host()}]:{ntohs(self.peer_port)} (fd {self.fd})"
        if self.peer_family == AF_INET:
            return f"{self.peer_host()}:{ntohs(self.peer_port)} (fd {self.fd})"
        return f"fd {self.fd}"

    cdef object get_queue(self):
        if self.queue is None:
            self.queue = ConnectionQueue(self)
        return self.queue

    cdef bint queue_held(self):
        """Whether code besides this connection holds its queue: a worker that may reply.

        Only this connection references a queue nobody kept, so a count above one means
        a thread, a closure or a registry has it, or the queue's own state refers back
        to it (queue.session = Session(queue)), which _state.references_from_inside tells
        apart. The count is read right after the callback returned or in the loop,
        never while a call is passing the queue.
        """
        cdef Py_ssize_t i
        cdef list objects
        cdef list inside
        if self.queue is None:
            return False
        if refcount_of(<PyObject *>self.queue) - 1 <= 0:
            return False
        if not getattr(self.queue, "__dict__", None):
            return True  # no state of its own to refer back: held from outside (cheap:
                         # a registry can hold thousands while stopping waits)
        try:
            found = _references_from_inside(self.queue, (self,))
        except Exception:
            found = None  # cannot tell (out of memory, a strange object): wait, as before
        if found is None:  # (not returned from the except clause: see Loop.adopt)
            return True
        queue_inside, objects, inside = found
        # All counts in one pass that runs no Python code: the GIL is not let go, so a
        # worker cannot move its reference from the queue to its state (or back)
        # between two reads. `objects` holds one reference to each.
        if refcount_of(<PyObject *>self.queue) - 1 > <Py_ssize_t>queue_inside:
            return True
        for i in range(PyList_GET_SIZE(objects)):
            if (refcount_of(PyList_GET_ITEM(objects, i)) - 1
                    > <Py_ssize_t><object>PyList_GET_ITEM(inside, i)):
                return True
        return False

    # ---- output, from any thread ------------------------------------------------

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
        outbuf_push(&self.output, chunk)
        if not self.in_callback:
            # From another thread, or another connection's callback: the loop sends it.
            # (This connection's own callback is followed by send_and_settle.)
            self.loop.schedule(self)
        return 0

    cdef int shutdown(self, bint immediate) except -1:
        """The user's queue.shutdown(): send what is queued (or not), then close."""
        self.shut_by_user = True
        if self.state == CLOSED:
            return 0
        self.begin_close(QUEUE_SHUTDOWN)
        if immediate:
            if self.tls is not None:
                self.tls.drop_unsent(self)
            if self.output.offset:
                # Part of a put is out and the rest is dropped: a graceful close would
                # let the peer take that part for the whole (finish_close resets).
                self.close_reason = REPLY_CUT
            outbuf_clear(&self.output)
        if not self.in_callback:
            self.loop.schedule(self)
        return 0

    cdef bint must_wait(self):
        """Whether a put() now has to wait for the output to drain (see ConnectionQueue.put).

        In any state: while stopping, the loop waits for a worker that holds the queue
        and sends what it puts, which must not pile up either (a lingering or closed
        connection has nothing pending, and drops what is put).
        """
        return self.above_high_water() and PyThread_get_thread_ident() != self.loop.thread_ident

    cdef int wait_for_drain(self, bint block, object timeout) except -1:
        """Block the calling (non-loop) thread until the output drains or the connection
        closes (apply_backpressure and close wake it)."""
        if not block:
            raise _queue.Full
        cdef object drained = self.loop.drain_condition
        deadline = None if timeout is None else _time.monotonic() + timeout
        with drained:
            self.waiters += 1
            try:
                while self.fd >= 0 and self.owed() > self.loop.low_water:
                    if deadline is None:
                        drained.wait()
                    else:
                        remaining = deadline - _time.monotonic()
                        if remaining <= 0:
                            raise _queue.Full
                        drained.wait(remaining)
            finally:
                self.waiters -= 1
        return 0

    cdef void wake_waiters(self):
        # One condition for the whole loop: waiters recheck their own connection.
        cdef object drained = self.loop.drain_condition
        with drained:
            drained.notify_all()

    # ---- events, in the loop's thread -------------------------------------------

    cdef inline int on_events(self, int events) except -1:
        """READABLE reads (and then sends), WRITABLE sends, HANGUP acts on an error or
        hang-up the poller reports."""
        if events & READABLE:
            self.on_readable()
        elif events & WRITABLE:
            self.send_and_settle()
        if events & HANGUP and self.fd >= 0:
            self.on_hangup()
        return 0

    cdef inline int on_readable(self) except -1:
        if self.state == OPEN:
            if self.tls is None:
                self.read_for_callback()
            else:
                self.tls.read_for_callback(self)
        elif self.state == AWAITING_TLS_HANDSHAKE:
            self.tls.handshake(self, None)
        elif self.state == AWAITING_PROXY_HEADER:
            self.read_proxy_header()
        elif self.input_open:
            self.discard_input()
        # The replies the callbacks put (one sendmsg() for all of them), or what is
        # left of a close.
        return self.send_and_settle()

    cdef inline int read_for_callback(self) except -1:
        # One recv() of up to buffer.capacity bytes (LARGE_READ at the default
        # recv_bytes), handed to the callback in recv_bytes-sized slices, in order, and
        # the replies sent once, in one sendmsg(): a 256 KiB message costs a few system
        # calls instead of one per recv_bytes. One read per readiness event keeps a
        # streaming peer from starving the others: what is left is read in the next turn
        # (every poller here is level-triggered). Output above the high-water mark does
        # not stop the slices: they are read already, and the callback is owed every
        # byte, in order; reading pauses after them (apply_backpressure).
        cdef Loop loop = self.loop
        cdef ReadBuffer buffer = loop.read_buffer
        cdef ssize_t n
        if self.paused:
            return 0
        if self.partial != NULL:
            # framing=: the rest of a large message goes straight where it is gathered.
            n = direct_read_room(self, buffer.capacity)
            if n:
                return self.read_into_partial(n)
        n = self.receive(buffer.memory, buffer.capacity)
        if n <= 0:
            return 0
        self.mark_active(loop.now)
        return self.hand_out(n)

    cdef int read_into_partial(self, Py_ssize_t room) except -1:
        """Read up to `room` bytes straight into the unfinished message (framing.pyx:
        direct_read_room made the room), and hand it out if it is now whole."""
        cdef ssize_t n = self.receive(partial_bytes(self.partial) + self.partial.size, room)
        if n <= 0:
            return 0
        self.mark_active(self.loop.now)
        return self.loop.framer.take_direct_read(self, n)

    cdef inline ssize_t receive(self, char *into, Py_ssize_t room) except -1:
        """One recv() of up to `room` bytes into `into`: how many came, or 0 after
        handling what came instead (EOF, nothing to read, an error)."""
        cdef ssize_t n
        while True:
            n = recv(self.fd, into, room, 0)
            if n > 0:
                break
            if n == 0:
                # EOF or a half-close: the peer has said all it will, but may still be
                # reading, so what is queued goes out before the socket is closed.
                self.input_open = False
                self.begin_close(PEER_CLOSED)
                return 0
            if would_block(errno):
                return 0
            if errno != EINTR:
                self.on_io_error(errno, "recv")
                return 0
        return n

    cdef inline int hand_out(self, Py_ssize_t n) except -1:
        """The `n` bytes at the start of the read buffer (a plain read's, or what TLS
        decrypted) to the callback: whole messages with framing= (framing.pyx), else
        as they came, in recv_bytes slices."""
        cdef ReadBuffer buffer = self.loop.read_buffer
        if self.loop.framer is not None:
            return self.loop.framer.feed(self, buffer.memory, n)
        if n <= buffer.slice_size:
            return self.call_callback(buffer.take(0, n))  # one piece: a small request
        return self.hand_out_slices(n)

    cdef int hand_out_slices(self, Py_ssize_t n) except -1:
        """Call the callback with each recv_bytes slice of the `n` bytes just read, in
        order, unless it closes the connection: the rest of the read is then dropped,
        as anything the peer sends once a close began is."""
        cdef ReadBuffer buffer = self.loop.read_buffer
        cdef Py_ssize_t offset = 0, size = buffer.slice_size
        while offset < n:
            if self.state != OPEN:
                self.discarded += n - offset
                return 0
            if size > n - offset:
                size = n - offset
            self.call_callback(buffer.take(offset, size))
            offset += size
        return 0

    cdef int read_proxy_header(self) except -1:
        """Read the PROXY protocol header (proxy_protocol=True): the peer becomes the
        client it names, and what follows the header goes to the callback. A malformed
        header closes the connection (Loop.reject_proxy_header): nothing of it reaches
        the callback. Timers.proxy_header_late bounds how long this may take."""
        cdef Loop loop = self.loop
        cdef ReadBuffer buffer = loop.read_buffer
        cdef ssize_t n = recv(self.fd, buffer.memory, buffer.slice_size, 0)
        if n == 0:
            self.close(PEER_CLOSED)  # gone before saying whom for: nothing is owed
            return 0
        if n < 0:
            if would_block(errno) or errno == EINTR:
                return 0
            return self.on_io_error(errno, "recv")
        pending = self.proxy_header_pending + buffer.take(0, n)
        malformed = None
        try:
            header = loop.proxy_header_parser(pending)
        except ValueError as error:
            malformed = error
        if malformed is not None:  # not returned from the except clause: see Loop.adopt
            loop.reject_proxy_header(self, str(malformed))
            return 0
        if header is None:
            self.proxy_header_pending = pending
            return 0
        self.proxy_header_pending = None
        self.remember_proxied_peer(header)
        if self.tls is not None:
            # The header comes first, then the handshake (a balancer passing TLS through).
            self.become(AWAITING_TLS_HANDSHAKE)
            return self.tls.handshake(self, pending[header.length:])
        self.become(OPEN)
        cdef Py_ssize_t header_length = header.length
        if self.state != OPEN or len(pending) <= header_length:  # on_connect may close it
            return 0
        if loop.framer is not None:
            loop.framer.feed(self, PyBytes_AS_STRING(pending) + header_length,
                             len(pending) - header_length)
        else:
            self.call_callback(pending[header_length:])
        return 0

    cdef int call_callback(self, object data) except -1:
        """Call the user's callback; whatever it raises closes only this connection.

        Any exception: SystemExit, KeyboardInterrupt, GeneratorExit and the like too. A
        server must not die of one request; Ctrl-C and SIGTERM reach the loop through its
        own handlers (Loop.watch_signals), not as exceptions in a callback. While it
        runs, what it puts into this connection's queue waits for the send that follows
        (in on_readable) instead of being scheduled.
        """
        cdef Loop loop = self.loop
        cdef object result, queue
        cdef PyObject *arguments[4]  # [0]: room the callee may use (PY_VECTORCALL_ARGUMENTS_OFFSET)
        self.in_callback = True
        try:
            queue = self.get_queue()
            if loop.callback_takes_ip:
                arguments[1] = <PyObject *>self.peer_ip
                arguments[2] = <PyObject *>queue
                arguments[3] = <PyObject *>data
                result = vectorcall(loop.callback, arguments + 1,
                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET)
            else:
                arguments[1] = <PyObject *>queue
                arguments[2] = <PyObject *>data
                result = vectorcall(loop.callback, arguments + 1,
                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET)
            if result is not None:
                self.take_reply(result)
        except BaseException as error:
            self.callback_failed(error)
        finally:
            self.in_callback = False
        return 0

    cdef int take_reply(self, object result, str callback="read_callback") except -1:
        """What the `callback` (read_callback, or on_connect) returned, if not None. A
        bytes-like object is its reply: queued as by a put() at the callback's end
        (bytes without a copy; after shutdown(), ShutDown, as put() raises). A coroutine is discarded
        (discard_coroutine). A str is a reply that cannot be sent: the callback failed,
        as put() of one raises. Anything else is ignored, as every return value was
        before replies could be returned (a lambda that returns a tuple of the calls it
        makes), and logged: it may be a reply built wrong."""
        cdef LogThrottle throttle = self.loop.reply_log
        if PyBytes_CheckExact(result) or PyObject_CheckBuffer(result):
            return self.put(result)
        if isinstance(result, _Coroutine):
            return self.discard_coroutine(result, callback)
        if isinstance(result, str):
            self.begin_close(CALLBACK_FAILED)
            if throttle.report_due():
                self.loop.log(logging.ERROR, "%s returned a str, which cannot be "
                              "sent: return bytes (text.encode()); closing connection %s "
                              "once its queued output is sent%s",
                              (callback, self.describe(),
                               since_last(throttle.skipped, "more such returns")))
        elif throttle.report_due():
            self.loop.log(logging.WARNING, "%s returned %s, which is ignored: "
                          "only a bytes-like object returned is sent (connection %s)%s",
                          (callback, type(result).__name__, self.describe(),
                           since_last(throttle.skipped, "more such returns")))
        return 0

    cdef int callback_failed(self, BaseException error, str callback="read_callback") except -1:
        """The `callback` (read_callback, or on_connect) raised `error`. If it came from
        the application's signal handler (its frame is in the traceback) it is the
        application's request: the server stops (Loop.stop_for). Otherwise it is
        logged. Either way this connection closes once its queued output is sent."""
        # The close first: under memory pressure what follows may fail in turn, and the
        # input this callback was given is consumed whatever happens.
        self.begin_close(CALLBACK_FAILED)
        try:
            if self.loop.signal_fd >= 0 and raised_by_signal_handler(error):
                self.loop.stop_for(error)
            else:
                self.loop.log(logging.ERROR, "%s raised %s; closing connection %s "
                              "once its queued output is sent",
                              (callback, type(error).__name__, self.describe()), error)
        except MemoryError:
            pass  # out of memory to say so; the connection closes all the same
        return 0

    cdef int discard_coroutine(self, object coroutine, str callback="read_callback") except -1:
        """The `callback` (read_callback, or on_connect) returned a coroutine (it wraps
        an async def): nothing will ever run it. TCPServer rejects async callbacks it
        can see; this catches the rest."""
        self.begin_close(CALLBACK_FAILED)
        coroutine.close()  # never started: closing it runs none of its code, and Python
                           # does not warn that it was never awaited
        cdef LogThrottle throttle = self.loop.coroutine_log
        if throttle.report_due():
            logger.error("%s returned a coroutine, which nothing awaits: the "
                         "callback is called synchronously, so its async code never runs; "
                         "closing connection %s once its queued output is sent%s",
                         callback, self.describe(),
                         since_last(throttle.skipped, "coroutines discarded"))
        return 0

    cdef int discard_input(self) except -1:
        """Read and drop what the peer sent after the close began (see the top)."""
        cdef Loop loop = self.loop
        cdef ssize_t n
        cdef int reads_left = READS_PER_EVENT
        while reads_left:
            reads_left -= 1
            n = recv(self.fd, loop.read_buffer.memory, DISCARD_CHUNK, MSG_TRUNC)
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
                self.saw_eof() or loop.now - self.linger_started >= self.linger_limit()):
            self.close(self.close_reason)
        return 0

    cdef int on_hangup(self) except -1:
        """The poller reports an error or hang-up, whatever this connection waits for.

        Open, the recv() that followed the event has seen (or will, in the next turn)
        the data still there and then the error. Past OPEN there is nothing left to
        read for the callback, and the peer can take nothing more: close, or the poller
        reports the same hang-up again at once, forever.
        """
        if self.state != OPEN:
            self.close(HUNG_UP)
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
            self.close(PEER_RESET)
        else:
            self.loop.log_connection_error(self.describe(),
                                           f"{operation} failed: {strerror(error).decode()}")
            self.close(IO_ERROR)
        return 0

    cdef int on_idle_timeout(self) except -1:
        """Nothing moved for idle_timeout: close.

        With output still unsent the peer has stopped reading (slowloris): reset, so it
        cannot take the part it got for the whole reply. Otherwise the close is
        graceful (finish_close).
        """
        if self.owed():
            self.abort(IDLE_TIMEOUT)
            return 0
        self.begin_close(IDLE_TIMEOUT)
        self.loop.handle(self, WRITABLE)
        if self.listed_in is self.loop.timers.idle:
            # Waiting for a worker while stopping: the grace period bounds it now.
            self.listed_in.unlink(self)
        return 0

    cdef int on_linger_quiet(self) except -1:
        """The peer of this lingering connection sent nothing for LINGER_QUIET_MS (with
        TLS, at most ssl_shutdown_timeout).

        It lingers on only while it is taking what was sent: fewer bytes unacknowledged
        than at the last look. A peer that has stopped reading (a chat member whose
        client hung) would otherwise hold the connection, and whatever holds its queue,
        for LINGER_MAX_MS. Closing it is still graceful: input is being read and
        dropped, so none is left to reset with, and the kernel keeps delivering what it
        holds. Past the byte bound (input no longer read) a close could reset and cut
        the reply: only the time bound applies then.
        """
        cdef int unacknowledged = self.unacknowledged()
        if (unacknowledged > 0
                and (unacknowledged < self.linger_unacknowledged or not self.input_open)
                and self.loop.now - self.linger_started < self.linger_limit()):
            self.linger_unacknowledged = unacknowledged
            self.mark_active(self.loop.now)  # it is still receiving what was sent
        else:
            self.close(self.close_reason)
        return 0

    cdef inline void mark_active(self, double now) noexcept:
        self.last_active = now
        if (self.listed_in is not None and self is not self.listed_in.newest
                and not self.listed_in.keeps_join_order):
            self.listed_in.move_to_newest(self)

    # ---- sending and settling ---------------------------------------------------

    cdef int send_and_settle(self) except -1:
        """Send what can be sent now; then settle what that changed: a close whose
        output is all out moves on (finish_close), reading pauses or resumes
        (apply_backpressure), and the poller is told what to watch (update_interest)."""
        if self.fd < 0:
            return 0
        if not self.backing_off:
            self.flush()
            if self.fd < 0:
                return 0
        if (self.state == DRAINING or self.state == AWAITING_WORKER) and not self.owed():
            self.finish_close()
            if self.fd < 0:
                return 0
        self.apply_backpressure()
        return self.update_interest()

    cdef inline int flush(self) except -1:
        if self.tls is not None:
            return self.tls.flush(self)  # encrypts what was put, sends the ciphertext
        return self.send_all(&self.output)

    cdef inline int send_all(self, OutputBuffer *buffer) except -1:
        """Send what `buffer` holds until it is empty or the socket is full."""
        cdef Py_ssize_t sent
        cdef int error
        while buffer.pending:
            sent = outbuf_send(buffer, self.fd, self.loop.read_buffer)
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

    cdef inline Py_ssize_t owed(self) noexcept:
        """Bytes the peer is still owed: what was put and, with TLS, the ciphertext."""
        if self.tls is None:
            return self.output.pending
        return self.output.pending + self.tls.ciphertext.pending

    cdef inline bint above_high_water(self) noexcept:
        """Whether the peer is owed so much that it must read before more is taken from
        it (reading pauses) or put for it (put() from other threads waits, full(),
        broadcast() leaves it out). With TLS the ciphertext counts too: reading alone
        makes some (a KeyUpdate answered), which a peer that never reads would otherwise
        pile up, KeyUpdate after KeyUpdate."""
        return self.owed() >= self.loop.high_water

    cdef inline void apply_backpressure(self):
        # A peer that sends but does not read would otherwise grow its output buffer
        # without bound. Reading stops above the high-water mark and resumes below the
        # low one; put()s from other threads wait for the same.
        if self.above_high_water():
            if self.state == OPEN:
                self.paused = True
        elif self.owed() <= self.loop.low_water:
            self.paused = False
            if self.waiters:
                self.wake_waiters()

    cdef inline int update_interest(self) except -1:
        cdef int wanted = 0
        if not self.backing_off:
            if self.state == OPEN:
                if not self.paused:
                    wanted = READABLE
            elif self.input_open:
                wanted = READABLE  # to drop it, and to see the peer's EOF
            if self.owed():
                wanted |= WRITABLE
        if wanted != self.interest:
            self.loop.poller.modify(self.fd, wanted)
            self.interest = wanted
        return 0

    # ---- life ---------------------------------------------------------------------

    cdef int become(self, ConnectionState state) except -1:
        """The one place the state changes, with what entering each state takes."""
        self.state = state
        if state == AWAITING_TLS_HANDSHAKE:
            # From AWAITING_PROXY_HEADER: the handshake's deadline counts from now.
            if self.listed_in is not None:
                self.listed_in.unlink(self)
            self.awaiting_since = self.loop.now
            self.loop.timers.awaiting_tls_handshake.append(self)
        elif state == OPEN:
            # From AWAITING_PROXY_HEADER or AWAITING_TLS_HANDSHAKE: their timeout gives
            # way to the idle one.
            if self.listed_in is not None:
                self.listed_in.unlink(self)
            if self.loop.timers.idle_timeout:
                self.loop.timers.idle.append(self)
            self.mark_active(self.loop.now)
            self.loop.events.opened(self)  # on_connect
        elif state == DRAINING:
            self.paused = False  # input is read (and dropped) until the close is done
            forget_partial(self)  # no more messages: input is dropped from now on
        elif state == AWAITING_WORKER:
            self.loop.await_worker(self)
        elif state == LINGERING:
            self.linger_started = self.last_active = self.loop.now
            self.linger_unacknowledged = self.unacknowledged()
            if self.listed_in is not None:
                self.listed_in.unlink(self)  # the idle timeout no longer applies
            self.loop.timers.lingering.append(self)
        elif state == CLOSED:
            self.input_open = False
            forget_partial(self)
        return 0

    cdef void begin_close(self, CloseReason reason):
        """Stop serving the peer: send what is queued, then close (see finish_close)."""
        if (self.state == OPEN or self.state == AWAITING_PROXY_HEADER
                or self.state == AWAITING_TLS_HANDSHAKE):
            self.close_reason = reason
            self.become(DRAINING)

    cdef int finish_close(self) except -1:
        """Everything queued is sent (DRAINING or AWAITING_WORKER): close, linger or wait."""
        if self.close_reason == REPLY_CUT:
            self.abort(REPLY_CUT)
            return 0
        # When the server is stopping, a worker still holding the queue may be about to
        # reply: wait for it (Loop.check_awaiting_workers). At the peer's EOF in normal
        # running, not: a registry of queues (a chat server) holds every queue, and its
        # closed connections would pile up.
        if (self.loop.stopping and not self.shut_by_user
                and self.close_reason != CALLBACK_FAILED and self.queue_held()):
            if self.state != AWAITING_WORKER:
                self.become(AWAITING_WORKER)
            return 0
        if self.tls is not None and self.tls.send_close_notify(self):
            return 0  # TLS's close_notify is on its way: the TCP close follows it
        if self.saw_eof():
            self.close(self.close_reason)  # nothing can arrive to cause a reset
            return 0
        return self.start_lingering()

    cdef int start_lingering(self) except -1:
        """Shut the write side and drop input until the peer closes (see the top)."""
        if (self.loop.now - self.last_active >= self.loop.timers.linger_quiet_seconds
                and self.unacknowledged() == 0):
            self.close(self.close_reason)  # quiet, and it has all it was sent: nothing to protect
            return 0
        if shutdown(self.fd, SHUT_WR) < 0:
            self.close(self.close_reason)  # the peer is gone already
            return 0
        return self.become(LINGERING)

    cdef inline bint saw_eof(self) noexcept:
        """Whether input ended with the peer's EOF, rather than at LINGER_MAX_BYTES (then
        unread input may remain: a close() would reset, and throw away what the kernel
        has not delivered yet, so the connection lingers until the peer acknowledged it)."""
        return not self.input_open and self.discarded <= LINGER_MAX_BYTES

    cdef int unacknowledged(self):
        """Bytes sent that the peer has not acknowledged yet (0 if unknown)."""
        cdef int queued = 0
        if ioctl(self.fd, SIOCOUTQ, &queued) < 0:
            return 0
        return queued

    cdef inline double linger_limit(self) noexcept:
        """The longest this connection lingers: LINGER_MAX_MS, or with TLS
        ssl_shutdown_timeout (the wait for the peer's close after our close_notify)."""
        if self.tls is None:
            return LINGER_MAX_MS / 1000.0
        return self.tls.server.shutdown_timeout

    cdef void close(self, CloseReason reason):
        """Close now, for `reason`: the close's own (a graceful end passes the reason
        its close began for; a reset, a hang-up, the grace period's end say theirs)."""
        cdef int fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        self.close_reason = reason
        self.become(CLOSED)
        outbuf_clear(&self.output)
        if self.tls is not None:
            outbuf_clear(&self.tls.ciphertext)
        if self.listed_in is not None:
            self.listed_in.unlink(self)
        self.loop.remove(self, fd)

    cdef void abort(self, CloseReason reason):
        """Close with RST: the peer must not take what it got for a whole reply."""
        if self.fd >= 0:
            reset_on_close(self.fd)
        self.close(reason)


cdef bytes as_chunk(object item, str taker="queue.put()"):
    """A bytes snapshot of a bytes-like `item`, or TypeError naming what was given
    and `taker`, what it was given to."""
    if isinstance(item, str):
        raise TypeError(f"{taker} takes a bytes-like object, not str: "
                        f"encode it first, e.g. {taker[:-1]}text.encode())")
    try:
        # A copy, so that mutating a bytearray after put() cannot change what is sent;
        # through the buffer, and so exact bytes: a bytes subclass's __bytes__ could
        # return an object with a __del__, which the loop would then run while it
        # frees its chunks (and a __del__ that calls shutdown() freed them under it).
        return bytes(memoryview(item))
    except TypeError:
        raise TypeError(f"{taker} takes a bytes-like object (bytes, bytearray, "
                        f"memoryview), not {type(item).__name__}") from None


cdef inline bint is_live(object candidate):
    """Whether `candidate` is a connection the loop made.

    A Connection made from Python (Connection.__new__) has no loop: nothing may use it.
    The loop makes only exact Connections, so the type test is exact (and cheap).
    """
    return type(candidate) is Connection and (<Connection>candidate).loop is not None


# Where a ConnectionQueue keeps its connection: the `_connection` slot's offset in the
# object, found once the class exists (find_connection_slot). Every put() reads it; a
# getattr() would look the name up in the type and call the slot's descriptor, about a
# hundred instructions per put.
cdef PyTypeObject *queue_type = NULL
cdef Py_ssize_t connection_slot = 0


cdef inline Connection connection_of(object queue):
    """The connection behind `queue`, or TypeError: never a crash.

    The queue is a Python object whose slot can be emptied or replaced
    (ConnectionQueue.__new__, object.__setattr__), so every method comes through here.
    """
    cdef PyObject *slot
    cdef object connection = None
    if Py_TYPE(queue) == queue_type:
        slot = (<PyObject **>(<char *><PyObject *>queue + connection_slot))[0]
        if slot != NULL:
            connection = <object>slot
    else:
        connection = getattr(queue, "_connection", None)  # a subclass: its own ways
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
    (host, port) the connection came from; ``close_reason`` why it closed (None while
    open); ``tls`` what its TLS handshake agreed on (None for a plain connection).

    It is the connection's one object for its whole life, and the place for the
    application's per-connection state: set any attribute on it (``queue.nickname =
    ...``). The server lets go of it after on_disconnect, and its state with it.
    """

    # Queue.__init__ is skipped on purpose: its lock and three Conditions would cost
    # about a kilobyte per connection, and nothing here needs them. The instance dict
    # that holds the application's attributes is queue.Queue's (a subclass cannot
    # declare one it already has); it is made only when the first one is set.
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
            connection.wait_for_drain(block, timeout)
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
        return outbuf_chunks(&connection_of(self).output)

    def empty(self):
        return outbuf_chunks(&connection_of(self).output) == 0

    def full(self):
        """Whether the unsent output is at or above the server's high-water mark."""
        cdef Connection connection = connection_of(self)
        return connection.above_high_water()

    @property
    def pending_bytes(self):
        """How many queued bytes the peer has not been sent yet."""
        return connection_of(self).output.pending

    @property
    def peer(self):
        """The (host, port) this connection came from, as accept() gave it; unique among
        open connections, and still there after the connection closed."""
        return connection_of(self).peer_address()

    @property
    def close_reason(self):
        """Why the connection closed, a ``simpletcp.CloseReason`` (once its close has
        begun: why it is closing); None while it is open."""
        return close_reason_of(connection_of(self).close_reason)

    @property
    def tls(self):
        """What a TLS connection's handshake agreed on (ssl=), a ``simpletcp.TLSInfo``:
        version(), cipher(), getpeercert(), selected_alpn_protocol(), server_hostname...
        Read-only, from any thread, still there after the close; None for a plain
        connection."""
        cdef TLSConnection tls = connection_of(self).tls
        return None if tls is None else tls.info

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
        cdef Connection connection = None
        try:
            connection = connection_of(self)
        except TypeError:
            pass
        if connection is None:  # not returned from the except clause: see Loop.adopt
            return "<ConnectionQueue not bound to a connection>"
        return (f"<ConnectionQueue {connection.describe()} {life_of(connection)} "
                f"pending={connection.output.pending}>")


cdef int find_connection_slot() except -1:
    """Where ConnectionQueue's `_connection` slot is (see connection_of); if its
    descriptor is not the plain object slot __slots__ makes, connection_of keeps to
    getattr()."""
    global queue_type, connection_slot
    cdef object descriptor = ConnectionQueue.__dict__["_connection"]
    if Py_TYPE(descriptor) != &PyMemberDescr_Type:
        return 0
    cdef PyMemberDef *member = (<PyMemberDescrObject *><PyObject *>descriptor).d_member
    if member.type != T_OBJECT_EX:
        return 0
    connection_slot = member.offset
    queue_type = <PyTypeObject *>ConnectionQueue
    return 0


find_connection_slot()


cdef str life_of(Connection connection):
    """The connection's state, and why it is closing or closed, as words (queue repr)."""
    cdef str state = state_name(connection.state)
    if connection.close_reason == NOT_CLOSING:
        return state
    return f"{state}: {close_reason_name(connection.close_reason)}"


# By name, not by position in a table: a state or reason added to the enums
# (connection.pxd) cannot shift the others' names or index past the end.
cdef str state_name(ConnectionState state):
    if state == AWAITING_PROXY_HEADER:
        return "awaiting PROXY header"
    if state == AWAITING_TLS_HANDSHAKE:
        return "awaiting TLS handshake"
    if state == OPEN:
        return "open"
    if state == DRAINING:
        return "draining"
    if state == AWAITING_WORKER:
        return "awaiting worker"
    if state == LINGERING:
        return "lingering"
    if state == CLOSED:
        return "closed"
    return f"state {<int>state}"


cdef str close_reason_name(CloseReason reason):
    if reason == PEER_CLOSED:
        return "peer closed"
    if reason == QUEUE_SHUTDOWN:
        return "queue shutdown"
    if reason == CALLBACK_FAILED:
        return "callback failed"
    if reason == SERVER_STOPPING:
        return "server stopping"
    if reason == IDLE_TIMEOUT:
        return "idle timeout"
    if reason == REPLY_CUT:
        return "reply cut"
    if reason == PEER_RESET:
        return "peer reset"
    if reason == IO_ERROR:
        return "I/O error"
    if reason == HUNG_UP:
        return "hung up"
    if reason == LOOP_ERROR:
        return "loop error"
    if reason == GRACE_EXPIRED:
        return "grace period over"
    if reason == SERVER_ABORTED:
        return "server aborted"
    if reason == PROXY_HEADER_REJECTED:
        return "PROXY header rejected"
    if reason == FRAMING_ERROR:
        return "framing error"
    if reason == TLS_ERROR:
        return "TLS error"
    return f"reason {<int>reason}"
