# Timers: every timed thing the loop waits for, in one place (timers.pyx).

cdef enum TimerKind:
    # The loop's own timers, one deadline each:
    GRACE_PERIOD     # stopping: what is still open is closed then
    ACCEPT_RETRY     # accepting paused (EMFILE, ENFILE, ENOBUFS, ENOMEM): resume then
    IO_RETRY         # connections backing off (ENOBUFS, ENOMEM): their I/O is retried then
    WORKER_CHECK     # stopping: the connections awaiting a worker are looked at again
    LOOP_TIMER_KINDS # how many kinds above


@cython.final
cdef class ActivityList:
    cdef Connection oldest
    cdef Connection newest
    # A deadline list: its members keep the order they joined in, whatever moves on
    # them (mark_active), and their time counts from Connection.awaiting_since.
    cdef bint keeps_join_order

    cdef void append(self, Connection connection) noexcept
    cdef void unlink(self, Connection connection) noexcept
    cdef void move_to_newest(self, Connection connection) noexcept


@cython.final
cdef class Timers:
    cdef double deadline[<int>LOOP_TIMER_KINDS]  # monotonic time; 0: not set
    # Per-connection timers of one duration each: a FIFO by last activity, so that the
    # next to expire is always the oldest and a touch (mark_active) is O(1).
    cdef ActivityList idle        # connections under the idle timeout
    cdef ActivityList lingering   # lingering connections (linger_quiet_seconds)
    # How long a lingering peer may be quiet: LINGER_QUIET_MS, or with TLS a shorter
    # ssl_shutdown_timeout (the whole linger's bound: a quiet peer must not outlast it).
    cdef double linger_quiet_seconds
    cdef double idle_timeout      # seconds; 0: none
    # Deadlines (keeps_join_order: no byte either way extends them, so trickling cannot):
    # proxy_protocol: connections still owing their PROXY header, by accept time.
    cdef ActivityList awaiting_proxy_header
    cdef double proxy_header_timeout  # seconds
    # ssl=: connections whose TLS handshake is not done, by accept time (or, with
    # proxy_protocol, the end of their PROXY header), as asyncio's ssl_handshake_timeout.
    cdef ActivityList awaiting_tls_handshake
    cdef double tls_handshake_timeout  # seconds

    cdef inline void start(self, TimerKind kind, double at) noexcept
    cdef inline void cancel(self, TimerKind kind) noexcept
    cdef inline bint running(self, TimerKind kind) noexcept
    cdef inline bint expired(self, TimerKind kind, double now) noexcept
    cdef inline bint idle_expired(self, double now) noexcept
    cdef inline bint linger_quiet(self, double now) noexcept
    cdef inline bint proxy_header_late(self, double now) noexcept
    cdef inline bint tls_handshake_late(self, double now) noexcept
    cdef double next_deadline(self) noexcept
