# Framing: a connection's input cut into whole messages, one callback each.
#
# With TCPServer(framing=...), what one recv() brought (Connection.read_for_callback)
# goes to the server's framer rather than straight to the callback. The framer finds
# each whole message in it and calls the callback once per message, in order. A
# message that lies whole in the read is made into bytes straight from the loop's
# ReadBuffer (ReadBuffer.take_at: one copy, as unframed input); the start of a message
# the read did not finish is kept in the connection's PartialMessage, and the read
# that finishes it makes the message's bytes from the two parts (two copies in all).
# Nothing kept per connection outgrows the framer's bound: a message over max_length,
# a length header that announces one or is malformed, or a custom framer that fails
# closes the connection (FRAMING_ERROR) once what was queued for it is sent.
#
# All of one read's messages are handed out before the next connection is served, as
# the slices of an unframed read are, whatever the callbacks queue: output above
# high_water pauses reading after them (Connection.apply_backpressure), and what is
# kept between reads is never a whole message. If a callback closes the connection,
# the rest of the read is dropped, as anything the peer sends once a close began.


cdef enum:
    # The least room an unfinished message is given: a few short reads fit in it.
    PARTIAL_MINIMUM = 256

cdef inline char *partial_bytes(PartialMessage *partial) noexcept:
    return bytes_memory(partial.storage)


cdef inline Py_ssize_t partial_capacity(PartialMessage *partial) noexcept:
    return 0 if partial.storage == NULL else bytes_size(partial.storage)


cdef inline Py_ssize_t awaited_size(PartialMessage *partial) noexcept:
    """How large the unfinished message must grow before anything can be handed out:
    its whole length if known, else what a custom framer asked for (NeedMore); 0 if
    neither is known (a line)."""
    return partial.expected if partial.expected else partial.wanted


cdef bytes cut_to(PyObject *storage, Py_ssize_t length):
    """`storage`, a bytes object whose only reference the caller hands over (no Python
    code has seen it, or it was kept with nobody else holding it), cut to `length`
    and without a cached hash (a kept one may have been hashed), as a bytes object."""
    cdef bytes message
    if bytes_size(storage) != length and _PyBytes_Resize(&storage, length) < 0:
        raise MemoryError()
    (<PyBytesObject *>storage).ob_shash = -1
    message = <bytes>storage  # the reference handed over becomes the message's
    Py_DECREF(message)
    return message


cdef int make_room(Connection connection, Py_ssize_t needed, Py_ssize_t bound) except -1:
    """Room for `needed` bytes in the connection's unfinished message (made if there is
    none), whose framer never lets it hold more than `bound` bytes (the caller checked
    that they fit). Room doubles as bytes arrive, so a peer that announces a large
    message and sends little holds little."""
    cdef PartialMessage *partial = connection.partial
    cdef Py_ssize_t capacity
    cdef bytes storage
    if partial == NULL:
        partial = <PartialMessage *>calloc(1, sizeof(PartialMessage))
        if partial == NULL:
            raise MemoryError()
        connection.partial = partial
    capacity = partial_capacity(partial)
    if needed <= capacity:
        return 0
    capacity = max(needed, min(max(2 * capacity, PARTIAL_MINIMUM), bound))
    storage = None
    if capacity >= DIRECT_READ_MINIMUM:
        storage = connection.loop.read_buffer.take_large(capacity)
    if storage is not None:
        if partial.size:
            memcpy(PyBytes_AS_STRING(storage), partial_bytes(partial), partial.size)
        Py_XDECREF(partial.storage)
        Py_INCREF(storage)
        partial.storage = <PyObject *>storage
        return 0
    if partial.storage == NULL:
        storage = PyBytes_FromStringAndSize(NULL, capacity)
        Py_INCREF(storage)
        partial.storage = <PyObject *>storage
    elif _PyBytes_Resize(&partial.storage, capacity) < 0:
        # The resize dropped the bytes object: what was buffered is gone, and with it
        # the message (as when a realloc of it failed before).
        forget_partial(connection)
        return -1
    return 0


cdef int keep_partial(Connection connection, const char *data, Py_ssize_t size,
                      Py_ssize_t bound) except -1:
    """Add `size` bytes of `data` to the connection's unfinished message, whose framer
    never lets it hold more than `bound` bytes (the caller checked that they fit)."""
    cdef Py_ssize_t used = 0 if connection.partial == NULL else connection.partial.size
    make_room(connection, used + size, bound)
    memcpy(partial_bytes(connection.partial) + used, data, size)
    connection.partial.size = used + size
    return 0


cdef inline void forget_partial(Connection connection) noexcept:
    cdef PartialMessage *partial = connection.partial
    if partial != NULL:
        Py_XDECREF(partial.storage)
        free(partial)
        connection.partial = NULL


cdef Py_ssize_t direct_read_room(Connection connection, Py_ssize_t read_size) except -1:
    """How many bytes the next recv() may put straight into the connection's unfinished
    message, room made for them; 0 if it should read into the read buffer. Only a
    message that awaits many more bytes is read into (DIRECT_READ_MINIMUM), and never
    past its end (or past what a custom framer asked for: NeedMore), so what follows
    it is framed as usual. At most `read_size` bytes, as a read through the buffer,
    and at most as many as the message holds already, so that the room made never
    more than doubles what the peer sent (a peer that announces a large message and
    sends a few bytes holds a few hundred): the start of a message, up to
    DIRECT_READ_MINIMUM, comes through the read buffer."""
    cdef PartialMessage *partial = connection.partial
    cdef Py_ssize_t awaited, needed, room
    if partial == NULL:
        return 0
    awaited = awaited_size(partial)
    needed = awaited - partial.size
    if needed < DIRECT_READ_MINIMUM or partial.size < DIRECT_READ_MINIMUM:
        return 0
    room = min(needed, read_size, partial.size)
    make_room(connection, partial.size + room, awaited)
    return room


cdef bytes bytes_of(ReadBuffer buffer, const char *data, Py_ssize_t size):
    """`size` bytes of `data` for a Framer's frame(): in a kept large bytes object if
    they are many (the start of a large message, most likely), cut to length."""
    cdef bytes spare = None
    cdef PyObject *storage
    if size >= DIRECT_READ_MINIMUM:
        spare = buffer.take_large(size)
    if spare is None:
        return PyBytes_FromStringAndSize(<char *>data, size)
    memcpy(PyBytes_AS_STRING(spare), data, size)
    storage = <PyObject *>spare
    Py_INCREF(spare)
    spare = None  # the one reference left is `storage`, handed to cut_to
    return cut_to(storage, size)


cdef inline void recycle_unheld(ReadBuffer buffer, bytes message) noexcept:
    """Keep `message`, a whole message's bytes, as room for a large message to come if
    it is large and only the caller holds it (so nothing can see it change)."""
    if (buffer.takes_large(PyBytes_GET_SIZE(message))
            and refcount_of(<PyObject *>message) == 1):
        Py_INCREF(message)
        if not buffer.keep_large(<PyObject *>message):
            Py_DECREF(message)


cdef inline int deliver(Connection connection, const char *data, Py_ssize_t size) except -1:
    """Call back with a message that lies whole in what was read."""
    return connection.call_callback(connection.loop.read_buffer.take_at(data, size))


cdef bytes joined_message(Connection connection, Py_ssize_t skip, Py_ssize_t head,
                          const char *data, Py_ssize_t tail):
    """The message a read finished: `head` bytes of the unfinished message (after its
    first `skip`: a length header), then `tail` bytes of `data`. It is the unfinished
    message's own bytes object, cut to length, so its head is not copied; the
    connection no longer has an unfinished message."""
    cdef PartialMessage *partial = connection.partial
    cdef Py_ssize_t length = head + tail
    cdef char *memory
    cdef PyObject *storage
    if length == 0:
        forget_partial(connection)
        return b""
    make_room(connection, skip + length, skip + length)
    memory = partial_bytes(partial)
    if tail:
        memcpy(memory + skip + head, data, tail)
    if skip:
        memmove(memory, memory + skip, length)
    storage = partial.storage  # the connection's reference, handed to cut_to
    partial.storage = NULL
    forget_partial(connection)
    return cut_to(storage, length)


cdef inline int deliver_joined(Connection connection, Py_ssize_t skip, Py_ssize_t head,
                               const char *data, Py_ssize_t tail) except -1:
    """Call back with the message a read finished (joined_message); first the
    connection forgets it: the callback may close the connection."""
    cdef bytes message = joined_message(connection, skip, head, data, tail)
    connection.call_callback(message)
    recycle_unheld(connection.loop.read_buffer, message)
    return 0


cdef Py_ssize_t complete_known(Connection connection, const char *data, Py_ssize_t size,
                               Py_ssize_t skip) except -1:
    """The unfinished message's whole length is known (partial.expected): hand it out
    if `data` holds what it lacks, or keep all of `data`. Returns the bytes of `data`
    used."""
    cdef PartialMessage *partial = connection.partial
    cdef Py_ssize_t lacking = partial.expected - partial.size
    if size < lacking:
        keep_partial(connection, data, size, partial.expected)
        return size
    deliver_joined(connection, skip, partial.size - skip, data, lacking)
    return lacking


cdef class MessageFramer:
    """Internal: cuts a connection's input into messages (framing=, simpletcp.framing)."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef int feed(self, Connection connection, const char *data, Py_ssize_t size) except -1:
        """Hand the callback each whole message of the `size` bytes just read, in order,
        first the one they finish; keep the start of one they do not."""
        cdef Py_ssize_t used
        if connection.partial != NULL:
            used = self.complete(connection, data, size)
            data += used
            size -= used
            if connection.state != OPEN:
                connection.discarded += size
                return 0
            if connection.partial != NULL:
                return 0  # all of it taken, and still not whole
        if size:
            self.frame_all(connection, data, size)
        return 0

    cdef Py_ssize_t complete(self, Connection connection, const char *data,
                             Py_ssize_t size) except -1:
        """The unfinished message (connection.partial) and the head of `data`: hand it
        out if `data` finishes it, else keep all of `data`. Returns the bytes used."""
        raise NotImplementedError

    cdef int frame_all(self, Connection connection, const char *data,
                       Py_ssize_t size) except -1:
        """Hand out the whole messages `data` begins with; keep the start of the next."""
        raise NotImplementedError

    cdef int take_direct_read(self, Connection connection, Py_ssize_t size) except -1:
        """`size` bytes were just read straight into the unfinished message
        (direct_read_room): hand it out if it is now whole."""
        cdef PartialMessage *partial = connection.partial
        partial.size += size
        if partial.size == awaited_size(partial):
            return self.feed(connection, NULL, 0)
        return 0

    cdef int reject(self, Connection connection, str why, object error=None) except -1:
        """Bad input, or a custom framer that failed (`error`, whose traceback is then
        logged): close the connection once what was queued for it is sent, and say
        why, at most once per 10 s with a count (a hostile client would flood the log)."""
        cdef Loop loop = connection.loop
        connection.begin_close(FRAMING_ERROR)
        if error is not None and loop.signal_fd >= 0 and raised_by_signal_handler(error):
            return loop.stop_for(error)  # the application's signal handler ran inside frame()
        if self.error_log.report_due():
            loop.log(logging.WARNING if error is None else logging.ERROR,
                     "closing connection %s once its queued output is sent: %s%s",
                     (connection.describe(), why,
                      since_last(self.error_log.skipped, "framing errors")), error)
        return 0


cdef inline const char *find_delimiter(LineFramer framer, const char *data,
                                       Py_ssize_t size) noexcept:
    if framer.delimiter_size == 1:
        return <const char *>memchr(data, PyBytes_AS_STRING(framer.delimiter)[0], size)
    return <const char *>memmem(data, size, PyBytes_AS_STRING(framer.delimiter),
                                framer.delimiter_size)


cdef class LineFramer(MessageFramer):
    """Internal: simpletcp.framing.Lines."""

    def __dealloc__(self):
        free(self.straddle)

    cdef int frame_all(self, Connection connection, const char *data,
                       Py_ssize_t size) except -1:
        cdef const char *end = data + size
        cdef const char *found
        cdef Py_ssize_t length
        cdef Py_ssize_t delimiter_size = self.delimiter_size
        cdef Py_ssize_t kept = delimiter_size if self.keep_delimiter else 0
        while True:
            found = find_delimiter(self, data, end - data)
            if found == NULL:
                break
            length = found - data
            if length > self.max_length:
                return self.reject(connection, self.too_long(length, False))
            deliver(connection, data, length + kept)
            data = found + delimiter_size
            if connection.state != OPEN:
                connection.discarded += end - data
                return 0
        if data == end:
            return 0
        # The tail may end with the start of a delimiter: the line is at least the rest.
        if end - data - (delimiter_size - 1) > self.max_length:
            return self.reject(connection, self.too_long(end - data - (delimiter_size - 1), True))
        return keep_partial(connection, data, end - data, self.max_length + delimiter_size - 1)

    cdef Py_ssize_t complete(self, Connection connection, const char *data,
                             Py_ssize_t size) except -1:
        cdef PartialMessage *partial = connection.partial
        cdef Py_ssize_t delimiter_size = self.delimiter_size
        cdef Py_ssize_t end = -1  # where in `data` the delimiter that ends the line ends
        cdef Py_ssize_t length
        cdef const char *found
        if delimiter_size > 1:
            end = self.find_straddling(partial, data, size)
        if end < 0:
            found = find_delimiter(self, data, size)
            if found == NULL:
                length = partial.size + size - (delimiter_size - 1)
                if length > self.max_length:
                    self.reject(connection, self.too_long(length, True))
                    return size
                keep_partial(connection, data, size, self.max_length + delimiter_size - 1)
                return size
            end = found - data + delimiter_size
        length = partial.size + end - delimiter_size
        if length > self.max_length:
            self.reject(connection, self.too_long(length, False))
            return end
        if self.keep_delimiter:
            deliver_joined(connection, 0, partial.size, data, end)
        elif end >= delimiter_size:
            deliver_joined(connection, 0, partial.size, data, end - delimiter_size)
        else:  # the delimiter began in the unfinished part
            deliver_joined(connection, 0, length, data, 0)
        return end

    cdef Py_ssize_t find_straddling(self, PartialMessage *partial, const char *data,
                                    Py_ssize_t size):
        """Where in `data` a delimiter ends that began in the unfinished line, or -1.
        Such a delimiter lies in the line's last d-1 bytes and the first d-1 of `data`
        (d: its length); neither part alone can hold a whole one (the line was searched
        already), so whatever is found there straddles the two, and comes first."""
        cdef Py_ssize_t before = min(partial.size, self.delimiter_size - 1)
        cdef Py_ssize_t after = min(size, self.delimiter_size - 1)
        cdef const char *found
        memcpy(self.straddle, partial_bytes(partial) + partial.size - before, before)
        memcpy(self.straddle + before, data, after)
        found = <const char *>memmem(self.straddle, before + after,
                                     PyBytes_AS_STRING(self.delimiter), self.delimiter_size)
        if found == NULL:
            return -1
        return found - self.straddle + self.delimiter_size - before

    cdef str too_long(self, Py_ssize_t length, bint unfinished):
        if unfinished:
            return (f"{length} bytes and no end of line ({self.delimiter!r}) yet: a line "
                    f"over max_length ({self.max_length})")
        return f"a line of {length} bytes, over max_length ({self.max_length})"


cdef class LengthFramer(MessageFramer):
    """Internal: simpletcp.framing.LengthPrefixed."""

    cdef int frame_all(self, Connection connection, const char *data,
                       Py_ssize_t size) except -1:
        cdef Py_ssize_t header_size = self.header_size
        cdef Py_ssize_t frame = 0
        while size >= header_size:
            frame = self.frame_length(connection, <const unsigned char *>data)
            if frame == 0:
                return 0
            if size < frame:
                break
            deliver(connection, data + header_size, frame - header_size)
            data += frame
            size -= frame
            if connection.state != OPEN:
                connection.discarded += size
                return 0
            frame = 0
        if size:
            keep_partial(connection, data, size, frame if frame else header_size)
            connection.partial.expected = frame
        return 0

    cdef Py_ssize_t complete(self, Connection connection, const char *data,
                             Py_ssize_t size) except -1:
        cdef PartialMessage *partial = connection.partial
        cdef Py_ssize_t header_size = self.header_size
        cdef Py_ssize_t used = 0, frame
        if partial.expected == 0:  # the header is not whole yet
            used = min(header_size - partial.size, size)
            keep_partial(connection, data, used, header_size)
            partial = connection.partial
            if partial.size < header_size:
                return used
            frame = self.frame_length(connection, <const unsigned char *>partial_bytes(partial))
            if frame == 0:
                return used
            partial.expected = frame
        return used + complete_known(connection, data + used, size - used, header_size)

    cdef Py_ssize_t frame_length(self, Connection connection,
                                 const unsigned char *header) except -1:
        """The length of the frame this header begins, header included; or 0, the
        connection rejected for it (a message over max_length, a length shorter than
        the header it includes)."""
        cdef uint64_t value = 0
        cdef Py_ssize_t i
        if self.little_endian:
            for i in range(self.header_size - 1, -1, -1):
                value = (value << 8) | header[i]
        else:
            for i in range(self.header_size):
                value = (value << 8) | header[i]
        if self.includes_header:
            if value < <uint64_t>self.header_size:
                self.reject(connection, f"a length header of {value}, less than the "
                                        f"{self.header_size} bytes of the header it includes")
                return 0
            value -= self.header_size
        if value > <uint64_t>self.max_length:
            self.reject(connection, f"a length header announcing a message of {value} "
                                    f"bytes, over max_length ({self.max_length})")
            return 0
        return self.header_size + <Py_ssize_t>value


cdef class FixedFramer(MessageFramer):
    """Internal: simpletcp.framing.FixedSize (its size is max_length)."""

    cdef int frame_all(self, Connection connection, const char *data,
                       Py_ssize_t size) except -1:
        cdef Py_ssize_t message_size = self.max_length
        while size >= message_size:
            deliver(connection, data, message_size)
            data += message_size
            size -= message_size
            if connection.state != OPEN:
                connection.discarded += size
                return 0
        if size:
            keep_partial(connection, data, size, message_size)
            connection.partial.expected = message_size
        return 0

    cdef Py_ssize_t complete(self, Connection connection, const char *data,
                             Py_ssize_t size) except -1:
        return complete_known(connection, data, size, 0)


cdef class PythonFramer(MessageFramer):
    """Internal: a simpletcp.framing.Framer subclass's frame(data, start), given what is
    buffered as bytes. The buffering is the loop's: the framer is asked again only once
    more bytes arrived (as many as a NeedMore it returned asks for), and not at all
    for the rest of a message whose length it has said."""

    cdef int feed(self, Connection connection, const char *data, Py_ssize_t size) except -1:
        cdef PartialMessage *partial = connection.partial
        cdef Py_ssize_t used
        cdef bytes buffered
        if partial != NULL and partial.expected:
            used = complete_known(connection, data, size, 0)
            data += used
            size -= used
            if connection.state != OPEN:
                connection.discarded += size
                return 0
            if connection.partial != NULL or size == 0:
                return 0
            partial = NULL
        if partial == NULL:
            buffered = bytes_of(connection.loop.read_buffer, data, size)
        elif partial.size + size < partial.wanted:
            return keep_partial(connection, data, size, self.max_length)
        else:
            buffered = joined_message(connection, 0, partial.size, data, size)
        self.frame_buffered(connection, buffered)
        recycle_unheld(connection.loop.read_buffer, buffered)
        return 0

    cdef int frame_buffered(self, Connection connection, bytes data) except -1:
        """Ask frame(data, start) for each message at the start of `data`, all that is
        buffered, and call back with each; keep what is left (see the class)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t start = 0, length = 0, expected = 0, wanted = 0
        cdef object answer, message, failure = None
        while start < size:
            try:
                answer = self.frame(data, start)
            except BaseException as error:
                failure = error
            if failure is not None:
                if isinstance(failure, self.framing_error):
                    return self.reject(connection, f"{self.name}: {failure}")
                return self.reject(connection, f"{self.name}.frame() raised "
                                               f"{type(failure).__name__}", failure)
            if connection.state != OPEN:
                # frame() closed it (a queue.shutdown() through server.connections()):
                # its input is dropped from now on, as after a callback's close.
                connection.discarded += size - start
                return 0
            if answer is None:
                wanted = size - start + 1
                break
            if type(answer) is self.need_more:
                wanted = self.checked_length(connection, answer.count, size - start)
                if wanted < 0:
                    return 0
                break
            if PyTuple_CheckExact(answer) and PyTuple_GET_SIZE(answer) == 2:
                length = self.checked_length(connection, answer[0], 0)
                if length < 0:
                    return 0
                if length > size - start:
                    return self.reject(connection, f"{self.name}.frame() returned "
                                       f"({length}, message), but only {size - start} bytes "
                                       "are buffered", TypeError("frame() said a message "
                                       "it returned is longer than what it was given"))
                message = answer[1]
            else:
                length = self.checked_length(connection, answer, 0)
                if length < 0:
                    return 0
                if length > size - start:
                    expected = length  # the loop gathers the rest without asking again
                    break
                if start == 0 and length == size:
                    message = data
                else:
                    message = connection.loop.read_buffer.take_at(
                        PyBytes_AS_STRING(data) + start, length)
            connection.call_callback(message)
            start += length
            if connection.state != OPEN:
                connection.discarded += size - start
                return 0
        if start == size:
            return 0
        if wanted > self.max_length:
            return self.reject(connection, f"{self.name}.frame() found no whole message in "
                               f"{size - start} bytes buffered, and max_length is "
                               f"{self.max_length}")
        keep_partial(connection, PyBytes_AS_STRING(data) + start, size - start,
                     expected if expected else self.max_length)
        connection.partial.expected = expected
        connection.partial.wanted = wanted
        return 0

    cdef Py_ssize_t checked_length(self, Connection connection, object answer,
                                   Py_ssize_t buffered) except -2:
        """`buffered` + what frame() answered (a message's length, or with NeedMore how
        many more bytes it needs), as a length from 1 to max_length; or -1, the
        connection rejected for it: a length over max_length is the peer's (its message
        is too long), anything else the framer's (a bug: logged as an error)."""
        cdef int overflow = 0
        cdef long length
        if PyLong_Check(answer) and not PyBool_Check(answer):
            # The int's own value, whatever an int subclass says; past a C long, overflow.
            length = PyLong_AsLongAndOverflow(answer, &overflow)
            if overflow > 0 or (overflow == 0 and length > self.max_length - buffered):
                self.reject(connection, f"{self.name}.frame() says the next message is "
                                        f"{'at least ' if buffered else ''}"
                                        f"{int.__index__(answer) + buffered} bytes, over "
                                        f"max_length ({self.max_length})")
                return -1
            if overflow == 0 and length >= 1:
                return length + buffered
        self.reject(connection, f"{self.name}.frame() returned {answer!r}"[:300],
                    TypeError(f"frame() must return a length of at least 1 (an int), "
                              "(length, message), NeedMore(count) or None; got "
                              f"{type(answer).__name__} {answer!r}"[:300]))
        return -1


cdef MessageFramer compile_framing(object framing):
    """The loop's framer for TCPServer's `framing`, or None. TCPServer checked it
    (simpletcp.framing.check_framing); what is checked here is what memory safety
    needs, should its attributes have been changed since."""
    cdef MessageFramer framer
    cdef LineFramer lines
    cdef LengthFramer lengths
    cdef PythonFramer custom
    if framing is None:
        return None
    from simpletcp import framing as public
    if isinstance(framing, public.Lines):
        framer = lines = LineFramer.__new__(LineFramer)
        lines.delimiter = bytes(framing.delimiter)
        lines.delimiter_size = PyBytes_GET_SIZE(lines.delimiter)
        if lines.delimiter_size == 0:
            raise ValueError("framing: the delimiter must not be empty")
        lines.keep_delimiter = framing.keep_delimiter
        lines.straddle = <char *>malloc(2 * lines.delimiter_size)
        if lines.straddle == NULL:
            raise MemoryError()
    elif isinstance(framing, public.LengthPrefixed):
        framer = lengths = LengthFramer.__new__(LengthFramer)
        lengths.header_size = framing.header_size
        if lengths.header_size not in (1, 2, 4, 8):
            raise ValueError("framing: header_size must be 1, 2, 4 or 8")
        lengths.little_endian = framing.byteorder == "little"
        lengths.includes_header = framing.includes_header
    elif isinstance(framing, public.FixedSize):
        framer = FixedFramer.__new__(FixedFramer)
    elif isinstance(framing, public.Framer):
        framer = custom = PythonFramer.__new__(PythonFramer)
        custom.frame = framing.frame
        custom.name = type(framing).__name__
        custom.framing_error = public.FramingError
        custom.need_more = public.NeedMore
    else:
        raise TypeError(f"framing must be a simpletcp.framing framer, got "
                        f"{type(framing).__name__}")
    max_length = framing.max_length
    if not isinstance(max_length, int) or not 1 <= max_length <= PY_SSIZE_T_MAX // 4:
        raise ValueError(f"framing: max_length must be a positive int, got {max_length!r}")
    framer.max_length = max_length
    framer.error_log = LogThrottle.__new__(LogThrottle)
    return framer
