# Framing: a connection's input cut into whole messages, one callback each (framing.pyx).


cdef enum:
    # An unfinished message that still awaits this many bytes or more is read into
    # straight from the socket (direct_read_room): reading it through the read buffer
    # would copy each of its bytes once more. Also the least size of a message's bytes
    # object kept for reuse (MessageFramer.recycle, outbuf_consume).
    DIRECT_READ_MINIMUM = 65536


# The start of a message that one read did not finish: what a connection keeps between
# reads (Connection.partial), allocated when a read ends inside a message and freed
# when the message is handed out or the connection leaves OPEN. Its bytes are kept in a
# bytes object that only the connection holds (`storage`, as long as the room made so
# far: partial_capacity), so that the message, once whole, is that same object cut to
# length (joined_message) rather than a copy. It never holds more than its framer's
# bound (MessageFramer.max_length, plus a header or a delimiter).
cdef struct PartialMessage:
    PyObject *storage     # a bytes object: the bytes buffered, then room
    Py_ssize_t size       # bytes buffered
    Py_ssize_t expected   # the whole message's length once known (a length header, a
                          # fixed size, a custom framer's answer); 0 while unknown
    Py_ssize_t wanted     # custom framers: not asked again before `size` reaches this


# A server's framer, made from its `framing=` (simpletcp.framing) by compile_framing.
# One per server: what differs per connection is in its PartialMessage.
cdef class MessageFramer:
    cdef Py_ssize_t max_length    # the longest message (without header or delimiter)
    cdef LogThrottle error_log    # "closing connection ...: <what was wrong>"
    cdef list spares              # large messages' bytes objects that nobody kept:
    cdef Py_ssize_t spare_bytes   # room for the next ones (recycle, take_spare)

    cdef int feed(self, Connection connection, const char *data, Py_ssize_t size) except -1
    cdef Py_ssize_t complete(self, Connection connection, const char *data,
                             Py_ssize_t size) except -1
    cdef int frame_all(self, Connection connection, const char *data,
                       Py_ssize_t size) except -1
    cdef int reject(self, Connection connection, str why, object error=*) except -1
    cdef int take_direct_read(self, Connection connection, Py_ssize_t size) except -1
    cdef void recycle(self, PyObject *message) noexcept
    cdef bytes take_spare(self, Py_ssize_t capacity)


@cython.final
cdef class LineFramer(MessageFramer):
    cdef bytes delimiter
    cdef Py_ssize_t delimiter_size
    cdef bint keep_delimiter
    cdef char *straddle           # scratch room for a delimiter split between two reads

    cdef Py_ssize_t find_straddling(self, PartialMessage *partial, const char *data,
                                    Py_ssize_t size)
    cdef str too_long(self, Py_ssize_t length, bint unfinished)


@cython.final
cdef class LengthFramer(MessageFramer):
    cdef Py_ssize_t header_size
    cdef bint little_endian
    cdef bint includes_header

    cdef Py_ssize_t frame_length(self, Connection connection, const unsigned char *header) except -1


@cython.final
cdef class FixedFramer(MessageFramer):
    pass


@cython.final
cdef class PythonFramer(MessageFramer):
    cdef object frame             # the user's framer's bound frame(data, start)
    cdef str name                 # its class name, for the log
    cdef object framing_error     # simpletcp.framing.FramingError: the peer's fault
    cdef object need_more         # simpletcp.framing.NeedMore

    cdef bytes bytes_of(self, const char *data, Py_ssize_t size)
    cdef int frame_buffered(self, Connection connection, bytes data) except -1
    cdef Py_ssize_t checked_length(self, Connection connection, object answer,
                                   Py_ssize_t buffered) except -2
