# cython: language_level=3
"""simpletcp._loop: the compiled event loop behind simpletcp.tcpserver.TCPServer.

One module, in the manner of uvloop's loop.pyx: the concepts live in their own
files (poller.pxi, outbuf.pxi, connection.pxi, serverloop.pxi) and are included
here so the C compiler sees the whole hot path at once.
"""

cimport cython
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact,
                            PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.errno cimport (EAGAIN, ECONNABORTED, ECONNRESET, EINTR, EMFILE, ENFILE,
                         ENOBUFS, ENOMEM, ENOTCONN, EPIPE, ETIMEDOUT,
                         EPROTO, EPERM, errno)
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, usleep, write

from includes.epoll cimport *
from includes.eventfd cimport *
from includes.poll cimport *
from includes.socket cimport *

cdef extern from "Python.h":
    # Only to forget the hash a reused bytes object cached for its old contents.
    ctypedef struct PyBytesObject:
        Py_hash_t ob_shash
    # Py_REFCNT on a borrowed pointer: cpython.ref's takes an object, for which Cython
    # makes a temporary reference that the count would include.
    Py_ssize_t refcount_of "Py_REFCNT"(PyObject *obj)
    # To hand an exception nobody can be given to sys.unraisablehook (Loop.log).
    void PyErr_SetObject(object type, object value)
    void PyErr_WriteUnraisable(object obj)

import logging
import os
from collections.abc import Coroutine as _Coroutine
import queue as _queue
import signal as _signal
import _signal as _csignal  # the C module: no Python code runs in its calls
from simpletcp import _arguments
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


cdef inline double earliest(double deadline, double other) noexcept nogil:
    """The earlier of two deadlines, where 0 means none."""
    if deadline == 0 or other < deadline:
        return other
    return deadline


cdef class Loop
include "throttle.pxi"
include "poller.pxi"
include "outbuf.pxi"
include "connection.pxi"
include "serverloop.pxi"
