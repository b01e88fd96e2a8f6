# LogThrottle: one log line per kind of trouble per interval (throttle.pyx).

cdef enum:
    # Between two reports of the same trouble.
    LOG_INTERVAL_MS = 10000


@cython.final
cdef class LogThrottle:
    cdef double reported_at       # monotonic time of the last report; 0: never
    cdef Py_ssize_t unreported    # occurrences since then, not reported
    cdef Py_ssize_t skipped       # as of the last report_due() that said yes

    cdef bint report_due(self)
