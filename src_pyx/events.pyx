# Events: what the user's code learns of each connection's life, and how it reaches
# every open connection.
#
# A connection is listed (open_connections) and on_connect called when it becomes OPEN
# (Connection.begin_life at accept, or Connection.become after its PROXY header), before
# any read callback for it. It is unlisted when it is CLOSED (Loop.remove), and its
# on_disconnect is called at the top of the loop's next turn (Loop.serve), or before
# run() returns (Loop.teardown): never inside the loop's own work on a connection, which
# a close can interrupt anywhere (a read callback's shutdown(), a teardown that closes
# every connection, another connection's event). Each connection listed gets exactly
# one on_disconnect, whatever ends it; one never OPEN (a PROXY header rejected, a
# connection refused at connection_limit) gets neither event.
#
# server.connections() and server.broadcast() read the list from any thread. It is
# changed only in the loop's thread, and read by copying its keys in one C call with
# the GIL held; every put is atomic against the loop (connection.pyx, at the top).

import enum as _enum

cdef object close_reason_enum = _enum.IntEnum(
    "CloseReason",
    [
        # Member for member the C enum CloseReason (connection.pxd), with its values.
        ("PEER_CLOSED", PEER_CLOSED),
        ("QUEUE_SHUTDOWN", QUEUE_SHUTDOWN),
        ("CALLBACK_FAILED", CALLBACK_FAILED),
        ("SERVER_STOPPING", SERVER_STOPPING),
        ("IDLE_TIMEOUT", IDLE_TIMEOUT),
        ("REPLY_CUT", REPLY_CUT),
        ("PEER_RESET", PEER_RESET),
        ("IO_ERROR", IO_ERROR),
        ("HUNG_UP", HUNG_UP),
        ("LOOP_ERROR", LOOP_ERROR),
        ("GRACE_EXPIRED", GRACE_EXPIRED),
        ("SERVER_ABORTED", SERVER_ABORTED),
        ("PROXY_HEADER_REJECTED", PROXY_HEADER_REJECTED),
        ("FRAMING_ERROR", FRAMING_ERROR),
        ("TLS_ERROR", TLS_ERROR),
    ],
    module="simpletcp",
)
close_reason_enum.__doc__ = (
    "Why a connection closed, or is closing: queue.close_reason (None while it is open). "
    "ARCHITECTURE.md, \"A connection's life\", says when each applies.")
# Published as simpletcp.CloseReason; in this module the name CloseReason is the C
# enum's, so the Python name is set by its text.
globals()["CloseReason"] = close_reason_enum


cdef object close_reason_of(CloseReason reason):
    """The Python face of `reason` (queue.close_reason): None while open."""
    if reason == NOT_CLOSING:
        return None
    return close_reason_enum(<int>reason)


cdef object call_event(object event, bint takes_ip, Connection connection, object queue):
    """Call on_connect or on_disconnect in its form: event(queue) or event(ip, queue)."""
    if takes_ip:
        return event(connection.peer_host(), queue)
    return event(queue)


cdef class Events:
    """Internal: the user's on_connect and on_disconnect, and the open connections."""

    def __init__(self, *args, **kwargs):
        internal_class(self)

    cdef int opened(self, Connection connection) except -1:
        """`connection` is OPEN: list it, make its queue (the one object its events, its
        read callbacks and connections() share), and call on_connect. What on_connect
        puts (or returns, as a read callback may) is sent by the caller's next send (Loop.adopt, Connection.on_readable); an
        exception closes the connection as a read callback's does (CALLBACK_FAILED), and
        its on_disconnect is still called: it is listed."""
        cdef object queue = connection.get_queue()
        cdef object result
        self.open_connections[connection] = None
        if self.on_connect is None:
            return 0
        connection.in_callback = True
        try:
            result = call_event(self.on_connect, self.on_connect_takes_ip, connection, queue)
            if result is not None:
                connection.take_reply(result, "on_connect")  # a returned banner is sent
        except BaseException as error:
            connection.callback_failed(error, "on_connect")
        finally:
            connection.in_callback = False
        return 0

    cdef int closed(self, Connection connection) except -1:
        """`connection` is CLOSED (Loop.remove, before it lets go of the queue): unlist
        it; its on_disconnect is due (announce_closed)."""
        if connection not in self.open_connections:
            return 0  # never OPEN
        del self.open_connections[connection]
        if self.on_disconnect is not None:
            # The connection too: the queue's slot is the application's to break.
            self.unannounced.append((connection, connection.queue))
        return 0

    cdef int announce_closed(self) except -1:
        """Call on_disconnect for each connection closed since the last call, in the
        order they closed; each queue is let go of after its call."""
        cdef list batch
        cdef tuple closed
        cdef Py_ssize_t i
        while self.unannounced:
            batch = self.unannounced
            self.unannounced = []
            for i in range(len(batch)):
                closed = batch[i]
                batch[i] = None
                self.call_on_disconnect(closed[0], closed[1])
                closed = None
        return 0

    cdef int call_on_disconnect(self, Connection connection, object queue) except -1:
        cdef object result
        try:
            result = call_event(self.on_disconnect, self.on_disconnect_takes_ip, connection,
                                queue)
            if result is not None and isinstance(result, _Coroutine):
                result.close()  # never started: none of its code runs
                raise TypeError("on_disconnect returned a coroutine, which nothing awaits")
        except BaseException as error:
            self.on_disconnect_failed(connection, error)
        return 0

    cdef int on_disconnect_failed(self, Connection connection, BaseException error) except -1:
        """on_disconnect raised `error`: logged, and the server goes on (the connection
        is closed already). From the application's signal handler: the server stops."""
        try:
            if connection.loop.signal_fd >= 0 and raised_by_signal_handler(error):
                connection.loop.stop_for(error)
            else:
                connection.loop.log(logging.ERROR, "on_disconnect raised %s for connection %s",
                                    (type(error).__name__, connection.describe()), error)
        except MemoryError:
            pass  # out of memory to say so
        return 0

    cdef list open_queues(self):
        """server.connections(): the open connections' queues, oldest first."""
        cdef list queues = []
        cdef object queue
        for connection in PyDict_Keys(self.open_connections):
            queue = (<Connection>connection).queue
            if queue is not None:  # closed since the copy was taken
                queues.append(queue)
        return queues

    cdef list broadcast(self, object data, object exclude):
        """server.broadcast(): put `data` to every open connection but `exclude`'s,
        without blocking; return the queues of those left out because their unsent
        output is at or above high_water (clients that stopped reading)."""
        cdef bytes chunk
        cdef Connection connection
        cdef Connection excluded = None
        cdef list full = []
        if PyBytes_CheckExact(data):
            chunk = <bytes>data
        else:
            chunk = as_chunk(data, "server.broadcast()")  # once, shared by every connection
        if exclude is not None:
            if not isinstance(exclude, ConnectionQueue):
                raise TypeError("exclude must be a connection's queue (ConnectionQueue) or "
                                f"None, got {type(exclude).__name__}")
            excluded = connection_of(exclude)
        if PyBytes_GET_SIZE(chunk) == 0:
            return full
        for candidate in PyDict_Keys(self.open_connections):
            connection = <Connection>candidate
            if (connection is excluded or connection.shut_by_user
                    or connection.state == LINGERING or connection.state == CLOSED):
                continue  # not to be sent, or nowhere to send it
            if connection.above_high_water():
                full.append(connection.queue)
                continue
            connection.put(chunk)
        return full
