# LogThrottle: one log line per kind of trouble per interval, however often it recurs.
#
# A server at its descriptor or connection limit under churn hits the limit again on
# every freed slot; saying so each time would flood the log with the same line.


# Seconds between two reports of the same trouble.
DEF LOG_INTERVAL = 10.0


@cython.final
cdef class LogThrottle:
    cdef double reported_at       # monotonic time of the last report; 0: never
    cdef Py_ssize_t unreported    # occurrences since then

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef Py_ssize_t due(self):
        """Count one occurrence; if a report is due, return how many went unreported
        since the last one (0 or more), else -1."""
        cdef double now = monotonic()
        if self.reported_at and now - self.reported_at < LOG_INTERVAL:
            self.unreported += 1
            return -1
        cdef Py_ssize_t skipped = self.unreported
        self.reported_at = now
        self.unreported = 0
        return skipped


cdef str since_last(Py_ssize_t skipped, str what):
    # The last report may be much older than LOG_INTERVAL: count since it, not per interval.
    if skipped <= 0:
        return ""
    return f" ({skipped} more {what} since this was last logged)"
