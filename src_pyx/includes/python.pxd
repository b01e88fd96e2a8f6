# The CPython internals the loop relies on beyond cpython.*: each one is a deliberate
# shortcut on the hot path or a way to report what no caller can be given.
from cpython.ref cimport PyObject

cdef extern from "Python.h":
    # Only to forget the hash a reused bytes object cached for its old contents
    # (Connection.received_bytes refills a bytes object nobody else holds).
    ctypedef struct PyBytesObject:
        Py_hash_t ob_shash
    # Py_REFCNT on a borrowed pointer: cpython.ref's takes an object, for which Cython
    # makes a temporary reference that the count would include.
    Py_ssize_t refcount_of "Py_REFCNT"(PyObject *obj)
    # A bytes object held through a PyObject * (PartialMessage.storage): its memory and
    # size without the reference Cython would make to cast it to an object.
    char *bytes_memory "PyBytes_AS_STRING"(PyObject *obj)
    Py_ssize_t bytes_size "PyBytes_GET_SIZE"(PyObject *obj)
    bint bytes_exact "PyBytes_CheckExact"(PyObject *obj)
    # To grow or cut an unfinished message's bytes object in place (realloc); only for
    # one no Python code has seen. On failure (-1, an exception set) the object is gone
    # and *bytes is NULL, which the caller must see to before anything else.
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t size)
    # To hand an exception nobody can be given to sys.unraisablehook (Loop.log).
    void PyErr_SetObject(object type, object value)
    void PyErr_WriteUnraisable(object obj)
