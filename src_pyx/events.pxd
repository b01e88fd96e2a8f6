# Events: the user's on_connect and on_disconnect, and the open connections that
# server.connections() and server.broadcast() reach (events.pyx).


@cython.final
cdef class Events:
    # No reference to the loop (it holds this): each connection has its own.
    cdef object on_connect            # on_connect(queue) / on_connect(ip, queue), or None
    cdef bint on_connect_takes_ip
    cdef object on_disconnect         # on_disconnect(queue) / on_disconnect(ip, queue), or None
    cdef bint on_disconnect_takes_ip
    # The connections from OPEN (opened) to CLOSED (closed), oldest first, as keys (the
    # values are None). Changed only in the loop's thread; other threads take a copy of
    # its keys in one C call (PyDict_Keys), never iterate it.
    cdef dict open_connections
    # (connection, queue) of each CLOSED connection whose on_disconnect is due
    # (announce_closed), in the order they closed.
    cdef list unannounced

    cdef int opened(self, Connection connection) except -1
    cdef int closed(self, Connection connection) except -1
    cdef int announce_closed(self) except -1
    cdef int call_on_disconnect(self, Connection connection, object queue) except -1
    cdef int on_disconnect_failed(self, Connection connection, BaseException error) except -1
    cdef list open_queues(self)
    cdef list broadcast(self, object data, object exclude)
