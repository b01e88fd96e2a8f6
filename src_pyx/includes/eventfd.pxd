# Linux eventfd(2): how other threads (and stop()) wake a loop blocked in the poller.
cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

    int eventfd(unsigned int initval, int flags)
