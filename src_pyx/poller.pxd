# The Poller: one small interface over epoll and poll (poller.pyx).

cdef enum:
    # What the loop asks for and is told: a descriptor is readable, writable, or the
    # poller reports an error or hang-up on it.
    READABLE = 1
    WRITABLE = 2
    HANGUP = 4
    # How often a registration is tried again when the kernel says EINTR or EAGAIN.
    CTL_ATTEMPTS = 8


cdef class Poller:
    cdef int *ready_fd
    cdef int *ready_events
    cdef Py_ssize_t ready_capacity  # room for this many results: at least `registered`
    cdef Py_ssize_t registered      # descriptors registered now
    cdef readonly str name

    cdef int count_registration(self) except -1
    cdef int grow_results(self, Py_ssize_t capacity) except -1
    cdef int register(self, int fd, int events) except -1
    cdef int modify(self, int fd, int events) except -1
    cdef int unregister(self, int fd) except -1
    cdef int wait(self, int timeout_ms) except -2
    cdef void close(self)


@cython.final
cdef class EpollPoller(Poller):
    cdef int epfd
    cdef epoll_event *events

    cdef inline int _ctl(self, int op, int fd, int events) except -1


@cython.final
cdef class PollPoller(Poller):
    # A dense pollfd array for poll(), and each descriptor's slot in it, so that
    # register/modify/unregister are O(1); wait is O(n), as poll() itself is.
    cdef pollfd *fds
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    cdef Py_ssize_t *slot_of_fd
    cdef Py_ssize_t slot_capacity

    cdef int _reserve_fd(self, int fd) except -1
