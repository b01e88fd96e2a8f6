# The Poller: one small interface over epoll and poll, in the manner of selectors.py.
#
# The loop speaks READABLE/WRITABLE, and HANGUP for errors and hang-ups. A backend
# reports those as readable and writable too, because the loop learns what went wrong
# from the recv()/send() that follows; HANGUP tells it that the poller will keep
# reporting this descriptor whatever it is registered for, so a connection that was
# not going to read or write must act on it (close) rather than ignore it and spin.
#
# Fairness: one wait reports every ready descriptor (the result arrays grow with the
# registrations), so a ready connection is served in the next turn of the loop however
# many others are busy; a fixed cap let poll() starve the descriptors past it.

cdef class Poller:
    """Waits for descriptors to become ready. Results land in ready_fd/ready_events."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    def __dealloc__(self):
        free(self.ready_fd)
        free(self.ready_events)

    cdef int count_registration(self) except -1:
        """One more descriptor registered: make room for it in the result arrays."""
        cdef Py_ssize_t capacity = max(64, self.ready_capacity * 2)
        cdef int *fds
        cdef int *events
        if self.registered >= self.ready_capacity:
            fds = <int *>realloc(self.ready_fd, capacity * sizeof(int))
            if fds == NULL:
                raise MemoryError()
            self.ready_fd = fds
            events = <int *>realloc(self.ready_events, capacity * sizeof(int))
            if events == NULL:
                raise MemoryError()
            self.ready_events = events
            self.grow_results(capacity)
            self.ready_capacity = capacity
        self.registered += 1
        return 0

    cdef int grow_results(self, Py_ssize_t capacity) except -1:
        """A backend with its own result array grows it here."""
        return 0

    cdef int register(self, int fd, int events) except -1:
        raise NotImplementedError

    cdef int modify(self, int fd, int events) except -1:
        raise NotImplementedError

    cdef int unregister(self, int fd) except -1:
        raise NotImplementedError

    cdef int wait(self, int timeout_ms) except -2:
        """Number of ready descriptors, or -1 if a signal interrupted the wait.

        The GIL is released while it waits, so other threads run (the loop never polls
        with a timeout of 0: its timeout is -1 or at least 1 ms).
        """
        raise NotImplementedError

    cdef void close(self):
        pass


cdef inline unsigned int _epoll_mask(int events) nogil:
    cdef unsigned int mask = 0
    if events & READABLE:
        mask |= EPOLLIN
    if events & WRITABLE:
        mask |= EPOLLOUT
    return mask


cdef class EpollPoller(Poller):
    def __cinit__(self):
        self.events = NULL
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise_errno("epoll_create1")
        self.name = "epoll"

    def __dealloc__(self):
        self.close()
        free(self.events)

    cdef int grow_results(self, Py_ssize_t capacity) except -1:
        cdef epoll_event *grown = <epoll_event *>realloc(self.events, capacity * sizeof(epoll_event))
        if grown == NULL:
            raise MemoryError()
        self.events = grown
        return 0

    cdef void close(self):
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    cdef inline int _ctl(self, int op, int fd, int events) except -1:
        cdef epoll_event ev
        cdef int attempts_left = CTL_ATTEMPTS
        ev.events = _epoll_mask(events)
        ev.data.u64 = 0
        ev.data.fd = fd
        while attempts_left:
            if epoll_ctl(self.epfd, op, fd, &ev) == 0:
                return 0
            if errno != EINTR and not would_block(errno):
                break
            attempts_left -= 1
        raise_errno("epoll_ctl")

    cdef int register(self, int fd, int events) except -1:
        self.count_registration()
        try:
            return self._ctl(EPOLL_CTL_ADD, fd, events)
        except BaseException:
            self.registered -= 1
            raise

    cdef int modify(self, int fd, int events) except -1:
        return self._ctl(EPOLL_CTL_MOD, fd, events)

    cdef int unregister(self, int fd) except -1:
        # Closing the descriptor would also remove it; an explicit DEL keeps the
        # interest list right even if someone else holds a dup() of it. If DEL fails
        # the close() that follows removes it all the same.
        cdef epoll_event ev
        if self.epfd >= 0 and epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev) == 0:
            self.registered -= 1
        return 0

    cdef int wait(self, int timeout_ms) except -2:
        cdef int n, i
        cdef unsigned int e
        cdef int ready
        cdef int capacity = <int>self.ready_capacity
        with nogil:
            n = epoll_wait(self.epfd, self.events, capacity, timeout_ms)
        if n < 0:
            if errno == EINTR:
                return -1
            raise_errno("epoll_wait")
        for i in range(n):
            e = self.events[i].events
            ready = 0
            if e & (EPOLLIN | EPOLLERR | EPOLLHUP):
                ready = READABLE
            if e & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                ready |= WRITABLE
            if e & (EPOLLERR | EPOLLHUP):
                ready |= HANGUP
            self.ready_fd[i] = self.events[i].data.fd
            self.ready_events[i] = ready
        return n


cdef class PollPoller(Poller):
    def __cinit__(self):
        self.fds = NULL
        self.slot_of_fd = NULL
        self.count = self.capacity = self.slot_capacity = 0
        self.name = "poll"

    def __dealloc__(self):
        free(self.fds)
        free(self.slot_of_fd)

    cdef int _reserve_fd(self, int fd) except -1:
        cdef Py_ssize_t new_capacity, i
        cdef Py_ssize_t *grown
        if fd < self.slot_capacity:
            return 0
        new_capacity = max(64, self.slot_capacity * 2, fd + 1)
        grown = <Py_ssize_t *>realloc(self.slot_of_fd, new_capacity * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        for i in range(self.slot_capacity, new_capacity):
            grown[i] = -1
        self.slot_of_fd = grown
        self.slot_capacity = new_capacity
        return 0

    cdef int register(self, int fd, int events) except -1:
        cdef pollfd *grown
        cdef Py_ssize_t new_capacity
        self._reserve_fd(fd)
        if self.slot_of_fd[fd] >= 0:
            raise FileExistsError(f"descriptor {fd} is already registered")
        self.count_registration()
        if self.count == self.capacity:
            new_capacity = max(64, self.capacity * 2)
            grown = <pollfd *>realloc(self.fds, new_capacity * sizeof(pollfd))
            if grown == NULL:
                self.registered -= 1
                raise MemoryError()
            self.fds = grown
            self.capacity = new_capacity
        self.fds[self.count].fd = fd
        self.fds[self.count].events = _poll_mask(events)
        self.fds[self.count].revents = 0
        self.slot_of_fd[fd] = self.count
        self.count += 1
        return 0

    cdef int modify(self, int fd, int events) except -1:
        if fd >= self.slot_capacity or self.slot_of_fd[fd] < 0:
            raise FileNotFoundError(f"descriptor {fd} is not registered")
        self.fds[self.slot_of_fd[fd]].events = _poll_mask(events)
        return 0

    cdef int unregister(self, int fd) except -1:
        cdef Py_ssize_t slot, last
        if fd >= self.slot_capacity or self.slot_of_fd[fd] < 0:
            return 0
        slot = self.slot_of_fd[fd]
        last = self.count - 1
        if slot != last:
            self.fds[slot] = self.fds[last]
            self.slot_of_fd[self.fds[slot].fd] = slot
        self.slot_of_fd[fd] = -1
        self.count = last
        self.registered -= 1
        return 0

    cdef int wait(self, int timeout_ms) except -2:
        cdef int n, found = 0
        cdef Py_ssize_t i
        cdef short e
        cdef int ready
        with nogil:
            n = poll(self.fds, <nfds_t>self.count, timeout_ms)
        if n < 0:
            if errno == EINTR:
                return -1
            if errno == ENOMEM:
                # The kernel is short of memory for its copy of the array: the loop's
                # out-of-memory path pauses and goes on (Loop.serve_until_closed).
                raise MemoryError()
            raise_errno("poll")
        i = 0
        while i < self.count and found < n:
            e = self.fds[i].revents
            if e:
                ready = 0
                if e & (POLLIN | POLLERR | POLLHUP | POLLNVAL):
                    ready = READABLE
                if e & (POLLOUT | POLLERR | POLLHUP | POLLNVAL):
                    ready |= WRITABLE
                if e & (POLLERR | POLLHUP | POLLNVAL):
                    ready |= HANGUP
                self.ready_fd[found] = self.fds[i].fd
                self.ready_events[found] = ready
                found += 1
            i += 1
        return found


cdef inline short _poll_mask(int events) nogil:
    cdef short mask = 0
    if events & READABLE:
        mask |= POLLIN
    if events & WRITABLE:
        mask |= POLLOUT
    return mask


BACKENDS = ("epoll", "poll")


cdef Poller make_poller(str backend):
    """The poller for ``backend``; "auto" picks epoll where the system has it.

    TCPServer checks the name for its caller (with BACKENDS, from here); one it did
    not check is refused here too, rather than served by a poller nobody asked for.
    """
    if backend == "auto" or backend == "epoll":
        try:
            return EpollPoller.__new__(EpollPoller)
        except OSError:
            if backend == "epoll":
                raise
        return PollPoller.__new__(PollPoller)
    if backend == "poll":
        return PollPoller.__new__(PollPoller)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
