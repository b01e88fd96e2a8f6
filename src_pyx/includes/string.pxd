# The searches the framers make (framing.pyx) beyond libc.string's.
# (pyconfig.h defines _GNU_SOURCE, which memmem() needs.)

cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystack_size,
                 const void *needle, size_t needle_size)
