# Timers: every timed thing the loop waits for, in one place.
#
# The loop asks for the earliest deadline before it waits (next_deadline), and after
# the wait runs what expired (Loop.run_expired_timers). Its own timers have one
# deadline each. The per-connection ones (idle timeout, lingering) each have a single
# duration, so a FIFO ordered by last activity holds them: the next to expire is the
# oldest, and a touch on every request only moves a connection to the newest end.
# The handshake deadlines (PROXY header, TLS) are FIFOs by the time a connection began
# waiting, which nothing moves: a deadline, not an inactivity timeout.


cdef class ActivityList:
    """Connections ordered by last activity, least recent first.

    The next to time out is always the oldest; marking activity moves a connection to
    the newest end, O(1). A connection is in at most one list.
    """

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef void append(self, Connection connection) noexcept:
        connection.older = self.newest
        connection.newer = None
        if self.newest is not None:
            self.newest.newer = connection
        else:
            self.oldest = connection
        self.newest = connection
        connection.listed_in = self

    cdef void unlink(self, Connection connection) noexcept:
        if connection.older is not None:
            connection.older.newer = connection.newer
        elif self.oldest is connection:
            self.oldest = connection.newer
        if connection.newer is not None:
            connection.newer.older = connection.older
        elif self.newest is connection:
            self.newest = connection.older
        connection.older = connection.newer = None
        connection.listed_in = None

    cdef void move_to_newest(self, Connection connection) noexcept:
        self.unlink(connection)
        self.append(connection)


cdef class Timers:
    """The loop's timers: see the top of timers.pyx."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __cinit__(self):
        self.idle = ActivityList.__new__(ActivityList)
        self.lingering = ActivityList.__new__(ActivityList)
        self.awaiting_proxy_header = ActivityList.__new__(ActivityList)
        self.awaiting_proxy_header.keeps_join_order = True
        self.awaiting_tls_handshake = ActivityList.__new__(ActivityList)
        self.awaiting_tls_handshake.keeps_join_order = True
        self.linger_quiet_seconds = LINGER_QUIET_MS / 1000.0

    cdef inline void start(self, TimerKind kind, double at) noexcept:
        self.deadline[<int>kind] = at

    cdef inline void cancel(self, TimerKind kind) noexcept:
        self.deadline[<int>kind] = 0

    cdef inline bint running(self, TimerKind kind) noexcept:
        return self.deadline[<int>kind] != 0

    cdef inline bint expired(self, TimerKind kind, double now) noexcept:
        """Whether `kind` is set and due at `now` (it stays set: its handler restarts or
        cancels it)."""
        cdef double at = self.deadline[<int>kind]
        return at != 0 and at <= now

    cdef inline bint idle_expired(self, double now) noexcept:
        """Whether the least recently active connection has been idle too long."""
        return (self.idle.oldest is not None
                and self.idle.oldest.last_active + self.idle_timeout <= now)

    cdef inline bint linger_quiet(self, double now) noexcept:
        """Whether the least recently active lingering connection has been quiet for
        linger_quiet_seconds."""
        return (self.lingering.oldest is not None
                and self.lingering.oldest.last_active + self.linger_quiet_seconds <= now)

    cdef inline bint proxy_header_late(self, double now) noexcept:
        """Whether the connection accepted longest ago of those still owing their PROXY
        header has had proxy_header_timeout to send it."""
        return (self.awaiting_proxy_header.oldest is not None
                and self.awaiting_proxy_header.oldest.awaiting_since
                + self.proxy_header_timeout <= now)

    cdef inline bint tls_handshake_late(self, double now) noexcept:
        """Whether the connection waiting longest for its TLS handshake to be done has
        had tls_handshake_timeout (since accept, or the end of its PROXY header: the
        flights of the handshake do not extend it)."""
        return (self.awaiting_tls_handshake.oldest is not None
                and self.awaiting_tls_handshake.oldest.awaiting_since
                + self.tls_handshake_timeout <= now)

    cdef double next_deadline(self) noexcept:
        """The earliest deadline of all; 0 if none is set."""
        cdef double earliest = 0, at
        cdef int kind
        for kind in range(<int>LOOP_TIMER_KINDS):
            at = self.deadline[kind]
            if at != 0 and (earliest == 0 or at < earliest):
                earliest = at
        if self.idle.oldest is not None:
            at = self.idle.oldest.last_active + self.idle_timeout
            if earliest == 0 or at < earliest:
                earliest = at
        if self.lingering.oldest is not None:
            at = self.lingering.oldest.last_active + self.linger_quiet_seconds
            if earliest == 0 or at < earliest:
                earliest = at
        if self.awaiting_proxy_header.oldest is not None:
            at = self.awaiting_proxy_header.oldest.awaiting_since + self.proxy_header_timeout
            if earliest == 0 or at < earliest:
                earliest = at
        if self.awaiting_tls_handshake.oldest is not None:
            at = self.awaiting_tls_handshake.oldest.awaiting_since + self.tls_handshake_timeout
            if earliest == 0 or at < earliest:
                earliest = at
        return earliest
