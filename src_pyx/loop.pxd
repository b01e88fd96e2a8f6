# The one header of simpletcp._loop: the C APIs the loop calls, then each room's
# declarations (its cdef class, struct or enums, declared once), in the order they
# depend on one another. loop.pyx includes the implementations in the same order.

cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t

from includes.epoll cimport *
from includes.eventfd cimport *
from includes.poll cimport *
from includes.python cimport *
from includes.socket cimport *
from includes.string cimport memmem

# Connection and Loop point at each other: Connection reaches its loop for the poller,
# scheduling and logging, and the loop finds connections by descriptor.
cdef class Loop
cdef class ActivityList
# A connection keeps its unfinished message (framing.pxd), which framers fill.
cdef class Connection

include "throttle.pxd"
include "poller.pxd"
include "outbuf.pxd"
include "readbuf.pxd"
include "framing.pxd"
include "connection.pxd"
include "events.pxd"
include "timers.pxd"
include "serverloop.pxd"
