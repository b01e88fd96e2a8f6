# OutputBuffer: what a connection still owes its peer.
#
# Chunks are the bytes objects the user queued, kept by reference (no copy); a
# partial send only moves `offset` into the first chunk. Several chunks go out in
# one sendmsg() (a writev that takes MSG_NOSIGNAL, so a vanished peer is EPIPE,
# never SIGPIPE).

cdef inline Py_ssize_t outbuf_chunks(OutputBuffer *buf) nogil:
    return buf.tail - buf.head


cdef int outbuf_push(OutputBuffer *buf, bytes chunk) except -1:
    cdef Py_ssize_t used, new_capacity
    cdef PyObject **grown
    if buf.tail == buf.capacity:
        used = buf.tail - buf.head
        if buf.head > 0 and used <= buf.capacity // 2:
            # Room at the front: slide the unsent chunks down instead of growing.
            memmove(buf.chunks, buf.chunks + buf.head, used * sizeof(PyObject *))
        else:
            new_capacity = buf.capacity * 2 if buf.capacity else 4
            grown = <PyObject **>realloc(buf.chunks, new_capacity * sizeof(PyObject *))
            if grown == NULL:
                raise MemoryError()
            buf.chunks = grown
            buf.capacity = new_capacity
            if buf.head > 0:
                memmove(buf.chunks, buf.chunks + buf.head, used * sizeof(PyObject *))
        buf.head = 0
        buf.tail = used
    Py_INCREF(chunk)
    buf.chunks[buf.tail] = <PyObject *>chunk
    buf.tail += 1
    buf.pending += PyBytes_GET_SIZE(chunk)
    return 0


cdef void outbuf_consume(OutputBuffer *buf, Py_ssize_t sent):
    """Forget the first `sent` bytes: release the chunks that went out whole (a large
    one to buf.recycler first: room for a large message to come, if nobody else holds
    it)."""
    cdef Py_ssize_t left
    cdef PyObject *chunk
    buf.pending -= sent
    while sent > 0:
        chunk = buf.chunks[buf.head]
        left = PyBytes_GET_SIZE(<object>chunk) - buf.offset
        if sent < left:
            buf.offset += sent
            return
        sent -= left
        buf.offset = 0
        buf.chunks[buf.head] = NULL
        buf.head += 1
        if buf.recycler != NULL and bytes_size(chunk) >= DIRECT_READ_MINIMUM:
            (<MessageFramer>buf.recycler).recycle(chunk)
        Py_DECREF(<object>chunk)
    if buf.head == buf.tail:
        buf.head = buf.tail = 0


cdef Py_ssize_t outbuf_send(OutputBuffer *buf, int fd):
    """One send of what is pending: bytes the kernel took, or -1 with errno set."""
    cdef iovec parts[GATHER_MAX]
    cdef msghdr message
    cdef Py_ssize_t count, i
    cdef PyObject *chunk
    cdef ssize_t sent
    count = buf.tail - buf.head
    if count == 1:
        chunk = buf.chunks[buf.head]
        sent = send(fd, PyBytes_AS_STRING(<object>chunk) + buf.offset,
                    PyBytes_GET_SIZE(<object>chunk) - buf.offset, MSG_NOSIGNAL)
    else:
        if count > GATHER_MAX:
            count = GATHER_MAX
        for i in range(count):
            chunk = buf.chunks[buf.head + i]
            parts[i].iov_base = PyBytes_AS_STRING(<object>chunk)
            parts[i].iov_len = PyBytes_GET_SIZE(<object>chunk)
        parts[0].iov_base = <char *>parts[0].iov_base + buf.offset
        parts[0].iov_len -= buf.offset
        memset(&message, 0, sizeof(message))
        message.msg_iov = parts
        message.msg_iovlen = count
        sent = sendmsg(fd, &message, MSG_NOSIGNAL)
    if sent > 0:
        outbuf_consume(buf, sent)
    return sent


cdef void outbuf_clear(OutputBuffer *buf):
    """Drop everything still pending and free the chunk array."""
    cdef Py_ssize_t i
    cdef PyObject *chunk
    for i in range(buf.head, buf.tail):
        chunk = buf.chunks[i]
        buf.chunks[i] = NULL
        Py_DECREF(<object>chunk)
    free(buf.chunks)
    buf.chunks = NULL
    buf.head = buf.tail = buf.capacity = 0
    buf.offset = buf.pending = 0
    buf.recycler = NULL
