# TLS: a connection's encryption, by the standard library's ssl module.
#
# Each connection gets an OpenSSL session over two ssl.MemoryBIOs (the _ssl object an
# ssl.SSLObject wraps, made as SSLContext.wrap_bio makes it, server side, and called
# directly, without SSLObject's Python layer), so the loop keeps its own non-blocking
# socket and OpenSSL never touches it: recv() lands in the loop's ReadBuffer as for a plain connection and is written to
# the incoming BIO; SSLObject.read() decrypts into that same buffer, and the callback
# gets its slices exactly as it gets a plain read's. What the user puts stays plaintext
# in the connection's OutputBuffer (where backpressure counts it) until flush() encrypts
# it, at most ENCRYPT_AHEAD at a time, into this room's ciphertext buffer, which is
# what the socket sends. Only the loop's thread calls the SSLObject: OpenSSL's objects
# are not safe to share between threads, and put() from any thread only queues plaintext.
# Its calls release the GIL, so other threads run in them: whatever the loop had read
# of the connection's output before one must be read again after it (encrypt).
#
# The connection's life (connection.pyx) gains one state, AWAITING_TLS_HANDSHAKE, after
# accept (or after the PROXY header): nothing reaches the callback before the handshake
# is done, and Timers bounds how long it may take. A clean close writes close_notify
# before the lingering close shuts the TCP side; a TLS error (TLS_ERROR) sends OpenSSL's
# alert and closes without one.

try:
    from ssl import (CHANNEL_BINDING_TYPES as _CHANNEL_BINDING_TYPES, MemoryBIO as _MemoryBIO,
                     SSLContext as _SSLContext, SSLError as _SSLError,
                     SSLWantReadError as _SSLWantReadError,
                     SSLZeroReturnError as _SSLZeroReturnError)
    from simpletcp._tls import requested_server_name as _requested_server_name
except ImportError:  # a Python built without OpenSSL: TCPServer refuses ssl= there
    _MemoryBIO = _SSLContext = _SSLError = _SSLWantReadError = _SSLZeroReturnError = None
    _CHANNEL_BINDING_TYPES = _requested_server_name = None


cdef class TLSServer:
    """The loop's TLS settings: the user's SSLContext and what every connection shares."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        free(self.gathered)

    cdef int attach(self, ReadBuffer buffer) except -1:
        # SSLObject.read() decrypts into the loop's read buffer: the ciphertext there
        # has been copied into the incoming BIO already.
        self.plaintext_view = PyMemoryView_FromMemory(buffer.memory, buffer.capacity,
                                                      PyBUF_WRITE)
        self.error_log = LogThrottle.__new__(LogThrottle)
        self.gathered = <char *>malloc(RECORD_SIZE)
        if self.gathered == NULL:
            raise MemoryError()
        return 0

    cdef TLSConnection wrap(self):
        cdef TLSConnection tls = TLSConnection.__new__(TLSConnection)
        tls.server = self
        tls.incoming = _MemoryBIO()
        tls.outgoing = _MemoryBIO()
        # What OpenSSL's callbacks into Python (the context's sni_callback, its
        # _msg_callback) are given as the connection is TLSSessionView: they run inside
        # the loop's own call into the session, and one that drove the session from
        # there (do_handshake(), read(), write()) would re-enter OpenSSL mid-call, which
        # CPython does not guard against (a double free: asyncio crashes the same way).
        tls.view = TLSSessionView.__new__(TLSSessionView)
        tls.session = self.context._wrap_bio(tls.incoming, tls.outgoing, True, None,
                                             owner=tls.view)
        tls.view.session = tls.session
        tls.view.loop_thread = PyThread_get_thread_ident()  # wrap() runs in the loop
        tls.phase = TLS_HANDSHAKING
        tls.client_hello = b""
        return tls


cdef class TLSSessionView:
    """A TLS connection as the SSLContext's callbacks see it (the first argument of an
    ``sni_callback``, the ``conn`` of a ``_msg_callback``): it can switch the context
    (``view.context = other``, as Python's documentation shows for SNI) and answer what
    the session knows so far, but not drive it. Those callbacks run inside the loop's
    own call into OpenSSL; a handshake, read or write from there re-enters OpenSSL in
    the middle of that call, which CPython's ssl module does not guard against (it
    frees memory twice: the interpreter crashes, under asyncio as well)."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef int check_thread(self) except -1:
        # The loop's thread calls into the session with the GIL released: a view kept
        # past its callback and used from another thread meanwhile (a context switched
        # mid-handshake) corrupted OpenSSL's memory and crashed the interpreter.
        if PyThread_get_thread_ident() != self.loop_thread:
            raise RuntimeError(
                "a TLSSessionView may be used only in the loop's thread (in the "
                "SSLContext's callbacks): the loop's calls into its session run "
                "meanwhile, without the GIL")
        return 0

    @property
    def context(self):
        """The SSLContext the session uses; settable, as SSLObject.context."""
        self.check_thread()
        return self.session.context

    @context.setter
    def context(self, value):
        self.check_thread()
        if not isinstance(value, _SSLContext):
            raise TypeError(f"context must be an ssl.SSLContext, not {type(value).__name__}")
        if getattr(self.session.context, "_msg_callback", None) is not None:
            # From a _msg_callback (which the view cannot tell from an sni_callback) a
            # switch after the ClientHello frees what OpenSSL is using: a crash, as with
            # SSLObject.context. So with a _msg_callback, no switch at all.
            raise RuntimeError(
                "the context cannot be switched while it has a _msg_callback: switched "
                "from one after the ClientHello, OpenSSL would use freed memory")
        self.session.context = value

    @property
    def server_side(self):
        return True

    @property
    def server_hostname(self):
        """None, as for any server-side SSLObject: the name the client asked for is the
        sni_callback's second argument (and, once open, queue.tls.server_hostname)."""
        return None

    @property
    def session_reused(self):
        self.check_thread()
        return self.session.session_reused

    def version(self):
        self.check_thread()
        return self.session.version()

    def cipher(self):
        self.check_thread()
        return self.session.cipher()

    def selected_alpn_protocol(self):
        self.check_thread()
        return self.session.selected_alpn_protocol()

    def compression(self):
        self.check_thread()
        return self.session.compression()

    def getpeercert(self, binary_form=False):
        self.check_thread()
        return self.session.getpeercert(binary_form)

    def _driven_by_the_loop(self, *args, **kwargs):
        raise RuntimeError(
            "the loop drives this TLS session: a callback of the SSLContext (sni_callback, "
            "_msg_callback) may switch its context and read it, not call do_handshake(), "
            "read(), write(), pending() or unwrap() (from inside OpenSSL's own call that "
            "re-entry would crash the interpreter)")

    do_handshake = read = write = pending = unwrap = _driven_by_the_loop

    def __repr__(self):
        return "<simpletcp TLSSessionView>"


cdef class TLSInfo:
    """queue.tls: what a connection's TLS handshake agreed on, read-only.

    Its methods and attributes are named as ssl.SSLObject's, and answer the same, but
    they were read once, by the loop, when the handshake was done: any thread may read
    them, at any time, also after the close (in on_disconnect). The SSLObject itself
    stays the loop's: OpenSSL's objects are not safe to share between threads, and a
    read(), write() or unwrap() from outside would corrupt the session.
    """

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef int take_from(self, object session, object server_name) except -1:
        self._version = session.version()
        self._cipher = session.cipher()
        self._alpn_protocol = session.selected_alpn_protocol()
        self._compression = session.compression()
        self._session_reused = session.session_reused
        self._peer_certificate = session.getpeercert()
        self._peer_certificate_der = session.getpeercert(True)
        self._tls_unique = session.get_channel_binding("tls-unique")
        self._server_name = server_name
        return 0

    def version(self):
        """The protocol agreed on: "TLSv1.2", "TLSv1.3"."""
        return self._version

    def cipher(self):
        """(cipher name, protocol version, secret bits), as ssl.SSLObject.cipher()."""
        return self._cipher

    def selected_alpn_protocol(self):
        """The ALPN protocol agreed on (SSLContext.set_alpn_protocols), or None."""
        return self._alpn_protocol

    def compression(self):
        """The compression algorithm in use, or None (OpenSSL offers none by default)."""
        return self._compression

    def getpeercert(self, binary_form=False):
        """The client's certificate (mutual TLS), as ssl.SSLObject.getpeercert(): None if
        it sent none; a dict of its fields if it was verified ({} if not); its DER bytes
        with binary_form=True. The dict is a copy: the facts stay as they were."""
        if binary_form:
            return self._peer_certificate_der
        if self._peer_certificate is None:
            return None
        return dict(self._peer_certificate)

    def get_channel_binding(self, cb_type="tls-unique"):
        """Channel binding data for `cb_type` (RFC 5929; "tls-unique" is the one type
        ssl offers), as ssl.SSLObject.get_channel_binding()."""
        if cb_type not in _CHANNEL_BINDING_TYPES:
            raise ValueError(f"{cb_type!r} channel binding type not implemented")
        return self._tls_unique

    @property
    def server_hostname(self):
        """The host name the client asked for (SNI, what the context's sni_callback was
        given), or None if it asked for none."""
        return self._server_name

    @property
    def session_reused(self):
        """Whether the client resumed an earlier session (a ticket or a session id)."""
        return self._session_reused

    def __repr__(self):
        return (f"<TLSInfo {self._version} {self._cipher[0] if self._cipher else None} "
                f"server_hostname={self._server_name!r} "
                f"alpn={self._alpn_protocol!r}>")


cdef class TLSConnection:
    """One connection's TLS: its SSLObject, its BIOs and the ciphertext it owes."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        outbuf_clear(&self.ciphertext)

    # ---- reading ----------------------------------------------------------------------

    cdef ssize_t receive(self, Connection connection) except -2:
        """One recv() of ciphertext, written to the incoming BIO: how many bytes, 0 at
        the peer's EOF, -1 if none (would block, or an error the connection handled)."""
        cdef ReadBuffer buffer = connection.loop.read_buffer
        cdef ssize_t n
        while True:
            n = recv(connection.fd, buffer.memory, buffer.capacity, 0)
            if n > 0:
                self.incoming.write(PyMemoryView_FromMemory(buffer.memory, n, PyBUF_READ))
                return n
            if n == 0:
                return 0
            if would_block(errno):
                return -1
            if errno != EINTR:
                connection.on_io_error(errno, "recv")
                return -1

    cdef int handshake(self, Connection connection, bytes early) except -1:
        """AWAITING_TLS_HANDSHAKE: take the next flight of the handshake (what recv()
        gives, or `early`, what followed a PROXY header) and answer it; once it is
        done the connection is OPEN and what came with the last flight goes to the
        callback."""
        cdef ssize_t n
        cdef object failure = None
        if early is None:
            n = self.receive(connection)
            if n == 0:
                # Gone before the handshake was done: nothing was owed to it.
                self.phase = TLS_FAILED
                connection.loop.log(logging.DEBUG, "connection %s closed during the TLS "
                                    "handshake", (connection.describe(),))
                connection.close(PEER_CLOSED)
                return 0
            if n < 0:
                return 0
            if self.client_hello is not None:
                self.read_server_name(connection.loop.read_buffer.take(0, n))
        elif early:
            self.incoming.write(early)
            self.read_server_name(early)
        try:
            self.session.do_handshake()
        except Exception as error:
            failure = error
        # Not returned from inside the except clause (see Loop.adopt).
        if failure is not None:
            if isinstance(failure, _SSLWantReadError):
                return self.take_output()
            # SSLError (not TLS, a bad certificate, no shared protocol...), or what the
            # context's sni_callback raised: OpenSSL's alert goes out, then the close.
            self.take_output()
            return self.fail(connection, failure)
        self.take_output()
        self.phase = TLS_ESTABLISHED
        self.info = TLSInfo.__new__(TLSInfo)
        self.info.take_from(self.session, self.server_name)
        self.client_hello = None
        connection.become(OPEN)
        if self.incoming.pending:
            return self.deliver(connection)
        return 0

    cdef int read_server_name(self, bytes received) except -1:
        """The first bytes of the connection, until its ClientHello is whole: the name
        it asks for (SNI) is queue.tls.server_hostname (the server side of an SSLObject
        does not tell it)."""
        cdef bint whole
        self.client_hello += received
        whole, self.server_name = _requested_server_name(self.client_hello)
        if whole:
            self.client_hello = None
        return 0

    cdef int read_for_callback(self, Connection connection) except -1:
        """OPEN: as Connection.read_for_callback, through the SSLObject."""
        cdef ssize_t n
        if connection.paused:
            return 0
        n = self.receive(connection)
        if n == 0:
            # A TCP EOF without close_notify: what was sent before it is served all the
            # same (HTTP/1.1 clients do this), and the close is the peer's.
            connection.input_open = False
            connection.begin_close(PEER_CLOSED)
            return 0
        if n < 0:
            return 0
        connection.mark_active(connection.loop.now)
        return self.deliver(connection)

    cdef int deliver(self, Connection connection) except -1:
        """Decrypt what the incoming BIO holds into the read buffer, record after record
        until it is full, and hand that to the callback in recv_bytes slices, as a
        plain read is handed out. All of it, even above the high-water mark: input left
        in the BIO would wait for a readiness event that may never come (the poller
        watches the socket, not the BIO)."""
        cdef ReadBuffer buffer = connection.loop.read_buffer
        cdef Py_ssize_t n, filled
        cdef bint peer_closed, more
        cdef object failure
        while connection.state == OPEN:
            filled = 0
            peer_closed = more = False
            failure = None
            while filled < buffer.capacity:
                try:
                    n = self.session.read(
                        buffer.capacity - filled,
                        self.server.plaintext_view if filled == 0 else
                        PyMemoryView_FromMemory(buffer.memory + filled,
                                                buffer.capacity - filled, PyBUF_WRITE))
                except _SSLWantReadError:
                    break  # the rest of a record is still on its way
                except _SSLZeroReturnError:
                    n = 0
                except _SSLError as error:
                    failure = error
                    break
                if n == 0:
                    # The peer's close_notify (SSLObject.read() returns nothing for it):
                    # it has said all it will, and may still read what it is owed.
                    peer_closed = True
                    break
                filled += n
                # A read returns one record at most: the buffer full, the record may go
                # on in the SSLObject; otherwise more is owed only if the BIO has more.
                more = filled == buffer.capacity and self.session.pending()
                if not more and not self.incoming.pending:
                    break
            if filled:
                # What came before a close_notify or an error is the peer's all the same.
                connection.hand_out(filled)
            if failure is not None:
                self.take_output()
                return self.fail(connection, failure)
            if peer_closed:
                connection.begin_close(PEER_CLOSED)
                break
            if not (more or (filled == buffer.capacity and self.incoming.pending)):
                break
        # A TLS 1.3 KeyUpdate asks for one in return; reading writes it.
        return self.take_output()

    # ---- writing ------------------------------------------------------------------------

    cdef int flush(self, Connection connection) except -1:
        """Connection.flush: encrypt what the user put, ENCRYPT_AHEAD at a time, and
        send the ciphertext until the socket is full or nothing is left."""
        if self.phase != TLS_ESTABLISHED and connection.output.pending:
            # Put after close_notify or a TLS error (a worker's late reply while
            # stopping): it can no longer be encrypted, and would be owed for ever.
            connection.loop.log(logging.DEBUG, "connection %s: %d bytes put after its TLS "
                                "session ended were dropped",
                                (connection.describe(), connection.output.pending))
            outbuf_clear(&connection.output)
        while connection.fd >= 0:
            if connection.output.pending and self.ciphertext.pending < ENCRYPT_AHEAD:
                self.encrypt(connection)
            if not self.ciphertext.pending:
                self.user_data_unsent = False
                return 0
            connection.send_all(&self.ciphertext)
            if self.ciphertext.pending:
                return 0  # the socket is full (or the connection closed, or backs off)
        return 0

    cdef int encrypt(self, Connection connection) except -1:
        """Move plaintext from the connection's output to the ciphertext buffer, up to
        ENCRYPT_AHEAD: a chunk of a record or more as it is (a larger one a slice at a
        time), smaller ones gathered a record at a time."""
        cdef OutputBuffer *plain = &connection.output
        cdef Py_ssize_t budget = ENCRYPT_AHEAD - self.ciphertext.pending, size, offset
        cdef object chunk, failure = None
        # Before OpenSSL sees any of it: a shutdown(immediate=True) from another thread
        # while SSLObject.write() runs must know that a record of the user's is coming.
        self.user_data_unsent = True
        try:
            while plain.pending and budget > 0:
                chunk = <object>plain.chunks[plain.head]
                offset = plain.offset
                size = PyBytes_GET_SIZE(chunk) - offset
                if size < RECORD_SIZE and plain.pending > size:
                    budget -= self.encrypt_gathered(plain)
                    continue
                if size > budget:
                    size = budget
                # Taken out of the output before OpenSSL sees it: SSLObject.write()
                # releases the GIL, and a put() or shutdown(immediate=True) from another
                # thread may change the output meanwhile. `chunk` keeps its bytes alive.
                outbuf_consume(plain, size, None)
                if offset == 0 and size == PyBytes_GET_SIZE(chunk):
                    self.session.write(chunk)
                else:
                    self.session.write(PyMemoryView_FromMemory(
                        PyBytes_AS_STRING(chunk) + offset, size, PyBUF_READ))
                budget -= size
        except _SSLError as error:
            failure = error
        if failure is not None:  # not returned from the except clause: see Loop.adopt
            self.take_output()
            return self.fail(connection, failure)
        return self.take_output()

    cdef Py_ssize_t encrypt_gathered(self, OutputBuffer *plain) except -1:
        """Copy the first chunks of `plain`, up to a record, into one buffer and encrypt
        that: how many bytes. (Taken out of the output first, as in encrypt.)"""
        cdef char *gathered = self.server.gathered
        cdef Py_ssize_t size = 0, take
        cdef PyObject *chunk
        while plain.pending and size < RECORD_SIZE:
            chunk = plain.chunks[plain.head]
            take = PyBytes_GET_SIZE(<object>chunk) - plain.offset
            if take > RECORD_SIZE - size:
                take = RECORD_SIZE - size
            memcpy(gathered + size, PyBytes_AS_STRING(<object>chunk) + plain.offset, take)
            outbuf_consume(plain, take, None)
            size += take
        self.session.write(PyMemoryView_FromMemory(gathered, size, PyBUF_READ))
        return size

    cdef int take_output(self) except -1:
        """What the SSLObject wrote (handshake flights, records, alerts) joins the
        ciphertext owed, in order."""
        cdef bytes written = self.outgoing.read()  # b"" if none: one call, not two
        if PyBytes_GET_SIZE(written):
            outbuf_push(&self.ciphertext, written)
        return 0

    # ---- closing -----------------------------------------------------------------------

    cdef bint send_close_notify(self, Connection connection) except -1:
        """Connection.finish_close, once everything put is sent: write our close_notify
        (once, and only after a handshake that completed) and send it. True while it is
        still going out (the connection waits to be writable) or the connection closed."""
        if self.phase == TLS_ESTABLISHED:
            self.phase = TLS_CLOSED
            try:
                # Writes close_notify; then wants the peer's, which the lingering close
                # does not wait for in TLS terms (it waits for the TCP close).
                self.session.shutdown()  # SSLObject.unwrap()
            except _SSLError:
                pass
            self.take_output()
            connection.send_all(&self.ciphertext)
        return connection.fd < 0 or self.ciphertext.pending > 0

    cdef int drop_unsent(self, Connection connection) except -1:
        """queue.shutdown(immediate=True): nothing more is encrypted. Records already
        made of what the user put are dropped too; one cut short, or missing ones, would
        make the peer fail on our close_notify: that close is a reset (REPLY_CUT). The
        protocol's own records (the handshake's last flight, TLS 1.3's session tickets,
        a KeyUpdate's answer) are no reply: they go out, then close_notify, so that an
        on_connect that turns a client away closes as cleanly as on a plain connection.
        (Connection.shutdown resets for a put cut short in the output itself.)"""
        if self.user_data_unsent:
            connection.close_reason = REPLY_CUT
            outbuf_clear(&self.ciphertext)
            self.user_data_unsent = False
        return 0

    cdef int fail(self, Connection connection, object error) except -1:
        """A TLS error (OpenSSL's alert, if any, is in the ciphertext): log it, at most
        once per 10 s with a count, and close once the alert is out. Nothing more can be
        encrypted, so what the user had put is dropped."""
        cdef bint handshaking = self.phase == TLS_HANDSHAKING
        cdef LogThrottle throttle = self.server.error_log
        self.phase = TLS_FAILED
        outbuf_clear(&connection.output)
        if throttle.report_due():
            connection.loop.log(
                logging.WARNING, "closing connection %s: %s: %s%s",
                (connection.describe(),
                 "TLS handshake failed" if handshaking else "TLS error",
                 describe_tls_error(error), since_last(throttle.skipped, "TLS errors")))
        connection.begin_close(TLS_ERROR)
        return 0

    cdef int reject_late_handshake(self, Connection connection) except -1:
        """ssl_handshake_timeout passed before the handshake was done (Loop's timer):
        reset, as nothing was owed to it, and say so at most once per 10 s."""
        cdef LogThrottle throttle = self.server.error_log
        self.phase = TLS_FAILED
        if throttle.report_due():
            connection.loop.log(
                logging.WARNING, "closing connection %s: no TLS handshake within %g s%s",
                (connection.describe(), connection.loop.timers.tls_handshake_timeout,
                 since_last(throttle.skipped, "TLS errors")))
        connection.abort(TLS_ERROR)
        return 0


cdef str describe_tls_error(object error):
    """OpenSSL's reason for `error` (and a certificate's verification message), without
    the _ssl.c line number str() adds."""
    reason = getattr(error, "reason", None)
    verify_message = getattr(error, "verify_message", None)
    if reason is None:
        return f"{type(error).__name__}: {error}"
    if verify_message:
        return f"{reason} ({verify_message})"
    return reason
