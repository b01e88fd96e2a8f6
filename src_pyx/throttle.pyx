# LogThrottle: one log line per kind of trouble per interval, however often it recurs.
#
# A server at its descriptor or connection limit under churn hits the limit again on
# every freed slot; saying so each time would flood the log with the same line.


cdef class LogThrottle:
    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef bint report_due(self):
        """Count one occurrence of the trouble: whether to report it now. If so,
        `skipped` says how many went unreported since the last report."""
        cdef double now = monotonic()
        if self.reported_at and now - self.reported_at < LOG_INTERVAL_MS / 1000.0:
            self.unreported += 1
            return False
        self.skipped = self.unreported
        self.reported_at = now
        self.unreported = 0
        return True


cdef str since_last(Py_ssize_t skipped, str what):
    # The last report may be much older than LOG_INTERVAL_MS: count since it, not per interval.
    if skipped <= 0:
        return ""
    return f" ({skipped} more {what} since this was last logged)"
