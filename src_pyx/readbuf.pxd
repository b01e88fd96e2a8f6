# ReadBuffer: where every connection's recv() lands, one per loop (readbuf.pyx).

cdef enum:
    # The most one recv() reads: a large message costs one system call per this many
    # bytes rather than one per recv_bytes (its slices are handed out in a row).
    LARGE_READ = 262144
    # The most callbacks one read feeds, so that a peer streaming in tiny recv_bytes
    # slices does not hold the loop longer per turn than a large read does.
    SLICES_PER_READ = 128
    # framing=: an unfinished message that still awaits this many bytes or more is read
    # into straight from the socket (framing.pyx, direct_read_room): through the read
    # buffer each of its bytes would be copied once more. Also the least size of a
    # message's bytes object kept as room for the next (ReadBuffer.keep_large).
    DIRECT_READ_MINIMUM = 65536
    # How much a loop keeps in large messages' bytes objects nobody holds any more
    # (keep_large): the next large message then lands in memory already in use, not in
    # memory the allocator just got from the kernel (page faults were most of a 1 MB
    # request's system time).
    LARGE_SPARE_BYTES = 16777216


@cython.final
cdef class ReadBuffer:
    cdef char *memory
    cdef Py_ssize_t slice_size    # recv_bytes: the most bytes one callback receives
    cdef Py_ssize_t capacity      # the most one recv() reads (see allocate)
    cdef bytes spare              # the last bytes handed to a callback, to reuse if we can
    # Slices let go of once sent (recycle): bytes objects of slice_size that nobody else
    # holds, refilled by take_at instead of a malloc and a free each. At most a read's
    # worth (capacity // slice_size), owned references.
    cdef PyObject **recycled
    cdef Py_ssize_t recycled_count
    cdef Py_ssize_t recycled_max
    # framing= (keeps_large): large messages' bytes objects let go of, room for the next
    # large message (take_large); owned, at most LARGE_SPARE_BYTES in all.
    cdef bint keeps_large
    cdef list large_spares
    cdef Py_ssize_t large_spare_bytes

    cdef int allocate(self, Py_ssize_t slice_size) except -1
    cdef inline bint recycle(self, PyObject *chunk) noexcept
    cdef inline bint takes_large(self, Py_ssize_t size) noexcept
    cdef bint keep_large(self, PyObject *chunk) noexcept
    cdef bytes take_large(self, Py_ssize_t capacity)
    cdef inline bytes take(self, Py_ssize_t offset, Py_ssize_t size)
    cdef bytes take_at(self, const char *start, Py_ssize_t size)
