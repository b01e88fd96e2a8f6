# TLS: a connection's encryption, by the standard library's ssl module over memory BIOs
# (tls.pyx). TLSServer is the loop's (the user's SSLContext and the timeouts);
# TLSConnection is one connection's (its SSLObject and the ciphertext it owes).

cdef enum:
    # The most ciphertext made ahead of what the socket took: the rest of what the user
    # put stays plaintext in the connection's output, where the high-water mark counts
    # it, so a 10 MB put is not held twice over.
    ENCRYPT_AHEAD = 262144
    # The most plaintext one TLS record holds. Chunks smaller than this (a callback's
    # recv_bytes-sized replies) are gathered into one SSLObject.write(): one record,
    # not one per chunk, each with its own header, tag and call.
    RECORD_SIZE = 16384


cdef enum TLSPhase:
    TLS_HANDSHAKING  # nothing may be encrypted yet (the connection is AWAITING_TLS_HANDSHAKE,
                     # or began closing before the handshake was done)
    TLS_ESTABLISHED  # application data flows both ways
    TLS_CLOSED       # our close_notify is written: nothing more may be
    TLS_FAILED       # a TLS error, or the handshake never finished: no close_notify


@cython.final
cdef class TLSServer:
    cdef object context           # the user's ssl.SSLContext, server side
    cdef double shutdown_timeout  # seconds a connection lingers after its close_notify
    cdef object plaintext_view    # a writable memoryview of the loop's ReadBuffer
    cdef char *gathered           # RECORD_SIZE bytes: small chunks copied into one record
    cdef LogThrottle error_log    # "TLS handshake failed", "TLS error"

    cdef int attach(self, ReadBuffer buffer) except -1
    cdef TLSConnection wrap(self)


@cython.final
cdef class TLSInfo:
    # What the handshake agreed on, read from the SSLObject once it was done (queue.tls).
    cdef object _version, _cipher, _alpn_protocol, _compression, _session_reused
    cdef object _peer_certificate, _peer_certificate_der, _tls_unique, _server_name

    cdef int take_from(self, object session, object server_name) except -1


@cython.final
cdef class TLSSessionView:
    cdef object session           # the connection's TLSConnection.session
    cdef unsigned long loop_thread  # the only thread that may touch the session
    cdef object __weakref__       # the _ssl session refers to its owner weakly

    cdef int check_thread(self) except -1


@cython.final
cdef class TLSConnection:
    cdef TLSServer server
    cdef object session           # the _ssl session an SSLObject would wrap: only the
                                  # loop's thread calls it
    cdef TLSSessionView view      # what the context's callbacks get as the connection
    cdef TLSInfo info             # queue.tls, once the handshake is done
    cdef bytes client_hello       # handshaking: the first bytes, until the ClientHello is whole
    cdef str server_name          # the name the ClientHello asked for (SNI), or None
    cdef object incoming          # ssl.MemoryBIO: ciphertext received, not yet decrypted
    cdef object outgoing          # ssl.MemoryBIO: ciphertext the SSLObject wrote
    cdef OutputBuffer ciphertext  # what the socket has not taken yet of it
    cdef bint user_data_unsent    # the ciphertext holds records of what the user put
    cdef TLSPhase phase

    cdef ssize_t receive(self, Connection connection) except -2
    cdef int handshake(self, Connection connection, bytes early) except -1
    cdef int read_server_name(self, bytes received) except -1
    cdef int read_for_callback(self, Connection connection) except -1
    cdef int deliver(self, Connection connection) except -1
    cdef int flush(self, Connection connection) except -1
    cdef int encrypt(self, Connection connection) except -1
    cdef Py_ssize_t encrypt_gathered(self, OutputBuffer *plain) except -1
    cdef int take_output(self) except -1
    cdef bint send_close_notify(self, Connection connection) except -1
    cdef int drop_unsent(self, Connection connection) except -1
    cdef int fail(self, Connection connection, object error) except -1
    cdef int reject_late_handshake(self, Connection connection) except -1
