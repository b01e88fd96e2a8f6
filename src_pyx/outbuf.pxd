# OutputBuffer: what a connection still owes its peer (outbuf.pyx).

cdef enum:
    # How many chunks one sendmsg() gathers; the kernel caps a call at IOV_MAX (1024).
    GATHER_MAX = 64


cdef struct OutputBuffer:
    PyObject **chunks      # owned references to bytes objects, [head, tail) unsent
    Py_ssize_t head
    Py_ssize_t tail
    Py_ssize_t capacity
    Py_ssize_t offset      # bytes of chunks[head] already sent
    Py_ssize_t pending     # unsent bytes in all
    PyObject *recycler     # borrowed: the server's framer (framing=), given each large
                           # chunk sent (MessageFramer.recycle); NULL without framing
