# ReadBuffer: where every connection's recv() lands, one per loop.
#
# The loop runs one callback at a time, so one buffer serves every connection: what a
# read put there becomes bytes objects for the callbacks before the next read. A read
# may be larger than recv_bytes: it is then handed out as recv_bytes-sized slices, one
# callback each, in order (Connection.read_for_callback).


cdef class ReadBuffer:
    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        cdef Py_ssize_t i
        free(self.memory)
        for i in range(self.recycled_count):
            Py_DECREF(<object>self.recycled[i])
        free(self.recycled)

    cdef int allocate(self, Py_ssize_t slice_size) except -1:
        """Room for one read: LARGE_READ bytes, or SLICES_PER_READ slices if that is
        less, and never less than one slice (a recv_bytes above LARGE_READ is read
        whole, as before)."""
        cdef Py_ssize_t capacity = LARGE_READ
        if slice_size <= capacity // SLICES_PER_READ:
            capacity = slice_size * SLICES_PER_READ
        elif slice_size > capacity:
            capacity = slice_size
        self.memory = <char *>malloc(capacity)
        self.recycled_max = capacity // slice_size
        self.recycled = <PyObject **>malloc(self.recycled_max * sizeof(PyObject *))
        if self.memory == NULL or self.recycled == NULL:
            raise MemoryError()
        # Made here, not when the first is kept: from outbuf_consume a new list could
        # run the cyclic GC, and a finalizer there could shut a connection down mid-send.
        self.large_spares = []
        self.slice_size = slice_size
        self.capacity = capacity
        return 0

    cdef inline bytes take(self, Py_ssize_t offset, Py_ssize_t size):
        """The `size` bytes read into `memory` at `offset`, as a bytes object."""
        return self.take_at(self.memory + offset, size)

    cdef bytes take_at(self, const char *start, Py_ssize_t size):
        """The `size` bytes at `start` (in `memory`, or a message a framer found in
        what a read brought: framing.pyx), as a bytes object.

        A bytes object nobody else holds (the callback did not keep it and its reply
        was sent) is refilled instead of allocating anew: a 1 KiB bytes object is past
        glibc's fast caches, and its malloc/free were a quarter of the loop's
        instructions per echo. Refcount 1 means only `spare` refers to it, so no Python
        code can see the change. Single bytes are shared singletons, never 1.
        """
        cdef PyObject *spare = <PyObject *>self.spare
        cdef bytes data
        if spare != NULL and refcount_of(spare) == 1 and PyBytes_GET_SIZE(<object>spare) == size:
            memcpy(PyBytes_AS_STRING(<object>spare), start, size)
            (<PyBytesObject *>spare).ob_shash = -1
            return <bytes>spare
        if size == self.slice_size and self.recycled_count:
            # A slice sent and let go of (recycle): nobody else holds it either. Its
            # reference passes from the pool to the caller.
            self.recycled_count -= 1
            spare = self.recycled[self.recycled_count]
            memcpy(PyBytes_AS_STRING(<object>spare), start, size)
            (<PyBytesObject *>spare).ob_shash = -1
            data = <bytes>spare
            Py_DECREF(data)
            return data
        data = PyBytes_FromStringAndSize(<char *>start, size)
        self.spare = data
        return data

    cdef inline bint recycle(self, PyObject *chunk) noexcept:
        """Keep `chunk`, a bytes object the output lets go of, for take_at to refill,
        if it is a slice's size and nobody else holds it: True if kept (the reference
        is the pool's now). A large read hands out up to a read's worth of slices that
        stay alive until one sendmsg() sends them all; without this, each is a malloc
        of 2 KiB and a free that glibc's small caches no longer serve (about 550
        instructions per slice in W3). With framing=, a large one is kept too
        (keep_large)."""
        if refcount_of(chunk) != 1 or not bytes_exact(chunk):
            return False
        if bytes_size(chunk) == self.slice_size and self.recycled_count < self.recycled_max:
            self.recycled[self.recycled_count] = chunk
            self.recycled_count += 1
            return True
        if self.takes_large(bytes_size(chunk)):
            return self.keep_large(chunk)
        return False

    cdef inline bint takes_large(self, Py_ssize_t size) noexcept:
        """Whether a bytes object of `size` bytes nobody holds is worth keeping as room
        for a large message (keep_large): with framing=, from DIRECT_READ_MINIMUM on."""
        return self.keeps_large and size >= DIRECT_READ_MINIMUM

    cdef bint keep_large(self, PyObject *chunk) noexcept:
        """Take over `chunk`, a large exact bytes object nobody else holds (the caller
        checked), as room for a large message to come, unless LARGE_SPARE_BYTES are
        kept already: True if kept (the caller's reference is the pool's now)."""
        cdef Py_ssize_t size = bytes_size(chunk)
        if self.large_spare_bytes + size > LARGE_SPARE_BYTES:
            return False
        self.large_spares.append(<object>chunk)
        Py_DECREF(<object>chunk)
        self.large_spare_bytes += size
        return True

    cdef bytes take_large(self, Py_ssize_t capacity):
        """A kept large bytes object of `capacity` bytes to twice that, now the caller's
        alone (framing.pyx fills it and cuts it to length); or None. Never larger: room
        is made as bytes arrive (make_room), and a client that announces a large message
        and sends a few bytes must not be given a kept message's megabytes to hold."""
        cdef Py_ssize_t i, size
        cdef PyObject *kept
        cdef bytes spare
        if not self.large_spares:
            return None
        for i in range(PyList_GET_SIZE(self.large_spares) - 1, -1, -1):  # the most recent first
            kept = PyList_GET_ITEM(self.large_spares, i)
            size = bytes_size(kept)
            if refcount_of(kept) != 1:
                # Python code found it after all (gc.get_objects() lists the spares): it
                # must never change again, as in take_at.
                del self.large_spares[i]
                self.large_spare_bytes -= size
            elif capacity <= size <= 2 * capacity:
                spare = <bytes>kept
                del self.large_spares[i]
                self.large_spare_bytes -= size
                return spare
        return None
