# cython: language_level=3
"""simpletcp._loop: the compiled event loop behind simpletcp.tcpserver.TCPServer.

One module, in the manner of uvloop's loop.pyx: each concept lives in its own room,
declared once in a .pxd (all pulled in by loop.pxd, the module's header) and
implemented in the .pyx of the same name, included here, so that the C compiler sees
the whole hot path at once. ARCHITECTURE.md draws the house.
"""

from cpython.bool cimport PyBool_Check
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact,
                            PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.dict cimport PyDict_Keys
from cpython.exc cimport PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_Check
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from libc.errno cimport (EAGAIN, ECONNABORTED, ECONNRESET, EINTR,
                         ENOBUFS, ENOMEM, ENOTCONN, EPIPE, ETIMEDOUT,
                         EPROTO, EPERM, errno)
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcpy, memmove, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, usleep, write

import logging
from collections.abc import Coroutine as _Coroutine
import queue as _queue
import _signal as _csignal  # the C module: no Python code runs in its calls
from simpletcp import _arguments
from simpletcp._state import references_from_inside as _references_from_inside
from socket import socket as _Socket
from _socket import socket as _CSocket
import threading
import time as _time

logger = logging.getLogger("simpletcp")

#: Raised by put() after queue.shutdown(); the standard library's own class where
#: it has one (Python 3.13+), so `except queue.ShutDown` works there.
ShutDown = getattr(_queue, "ShutDown", None)
if ShutDown is None:
    class ShutDown(Exception):
        """put() was called on a connection queue after shutdown()."""


cdef int raise_errno(str what) except -1:
    cdef int error = errno
    raise OSError(error, f"{what}: {strerror(error).decode()}")


cdef int internal_class(object instance) except -1:
    """The __init__ of the loop's internal classes: they cannot be made from Python.

    The loop makes them with Cls.__new__(Cls), which does not call __init__; from Python,
    a half-made one could point the loop at memory or descriptors it does not own.
    """
    raise TypeError(f"{type(instance).__name__} is internal to simpletcp's loop and "
                    "cannot be created from Python")


cdef inline bint would_block(int error) noexcept nogil:
    # Two tests, not one `or`: where EWOULDBLOCK == EAGAIN, Cython's switch would repeat a case.
    if error == EAGAIN:
        return True
    return error == EWOULDBLOCK


cdef double monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


include "throttle.pyx"
include "poller.pyx"
include "outbuf.pyx"
include "readbuf.pyx"
include "sockets.pyx"
include "framing.pyx"
include "connection.pyx"
include "events.pyx"
include "tls.pyx"
include "timers.pyx"
include "serverloop.pyx"
