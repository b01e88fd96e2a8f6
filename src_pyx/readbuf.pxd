# ReadBuffer: where every connection's recv() lands, one per loop (readbuf.pyx).

@cython.final
cdef class ReadBuffer:
    cdef char *memory
    cdef Py_ssize_t size          # recv_bytes: the most one read hands a callback
    cdef bytes spare              # the last bytes handed to a callback, to reuse if we can

    cdef int allocate(self, Py_ssize_t size) except -1
    cdef bytes take(self, Py_ssize_t size)
