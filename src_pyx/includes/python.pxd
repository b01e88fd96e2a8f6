# The CPython internals the loop relies on beyond cpython.*: each one is a deliberate
# shortcut on the hot path or a way to report what no caller can be given.
from cpython.object cimport PyTypeObject
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
    enum: PY_VECTORCALL_ARGUMENTS_OFFSET
    # To hand an exception nobody can be given to sys.unraisablehook (Loop.log).
    void PyErr_SetObject(object type, object value)
    void PyErr_WriteUnraisable(object obj)

# Where a __slots__ member lives in its instances: queue.put() reads a
# ConnectionQueue's connection there (connection_of) instead of through getattr.
# structmember.h has PyMemberDef's fields in every CPython (Python.h only from 3.12).
cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    enum: T_OBJECT_EX  # an object slot that raises AttributeError when empty
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    PyTypeObject PyMemberDescr_Type

# The user's callback, called with its arguments in a C array on the stack
# (Connection.call_callback): straight into the callable's vectorcall function, as
# Cython's own calls do, without the tuple, the method check and the argument helper
# Cython wraps around a call it knows nothing of (nor PyObject_Vectorcall's debug check
# of the result, which an exported call adds in 3.11). args[-1] must be writable
# (PY_VECTORCALL_ARGUMENTS_OFFSET: the callee may use it for a bound method's self).
cdef extern from *:
    """
    static CYTHON_INLINE PyObject *simpletcp_vectorcall(PyObject *callable,
                                                        PyObject *const *args,
                                                        size_t nargsf) {
        vectorcallfunc call = PyVectorcall_Function(callable);
        if (call == NULL)
            return PyObject_Vectorcall(callable, args, nargsf, NULL);
        return call(callable, args, nargsf, NULL);
    }
    """
    object vectorcall "simpletcp_vectorcall"(object callable, PyObject **args, size_t nargsf)
