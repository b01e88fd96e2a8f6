# ReadBuffer: where every connection's recv() lands, one per loop.
#
# The loop runs one callback at a time, so one buffer serves every connection: what a
# read put there becomes a bytes object for the callback before the next read.


cdef class ReadBuffer:
    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        free(self.memory)

    cdef int allocate(self, Py_ssize_t size) except -1:
        self.memory = <char *>malloc(size)
        if self.memory == NULL:
            raise MemoryError()
        self.size = size
        return 0

    cdef bytes take(self, Py_ssize_t size):
        """The `size` bytes just read into `memory`, as a bytes object.

        A bytes object nobody else holds (the callback did not keep it and its reply
        was sent) is refilled instead of allocating anew: a 1 KiB bytes object is past
        glibc's fast caches, and its malloc/free were a quarter of the loop's
        instructions per echo. Refcount 1 means only `spare` refers to it, so no Python
        code can see the change. Single bytes are shared singletons, never 1.
        """
        cdef PyObject *spare = <PyObject *>self.spare
        cdef bytes data
        if spare != NULL and refcount_of(spare) == 1 and PyBytes_GET_SIZE(<object>spare) == size:
            memcpy(PyBytes_AS_STRING(<object>spare), self.memory, size)
            (<PyBytesObject *>spare).ob_shash = -1
            return <bytes>spare
        data = PyBytes_FromStringAndSize(self.memory, size)
        self.spare = data
        return data
