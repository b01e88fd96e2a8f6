# POSIX poll(2), declared from <poll.h>: the portable fallback behind the Poller interface.
cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL

    ctypedef unsigned long nfds_t

    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd *fds, nfds_t nfds, int timeout)
