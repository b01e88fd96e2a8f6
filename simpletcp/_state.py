"""Whether a connection's queue is held by anything but its own per-connection state.

While stopping, the server waits for a queue that code besides the server still holds:
a worker thread may be about to reply (Connection.queue_held). It tells by the queue's
reference count. State kept on the queue (``queue.session = Session(queue)``,
``queue.reply = queue.put``) refers back to the queue and raises that count too, though
nothing outside the connection can reach it: without this check, every such connection
would make stop() wait its whole grace period.

The check: the objects the queue's state reaches, from which the queue can be reached
again, must be referred to by one another only (and the queue by them and the server).
Any reference from elsewhere — a thread's local variable, a registry, a global — shows
as a reference count higher than the references counted inside, so the answer errs
towards "held" (wait), never towards dropping a reply: what is not explored (classes,
modules, a function's globals, anything past EXPLORED_MOST objects) only makes a
reference look like an outside one.
"""
import gc
import sys
import types
from typing import Any, Dict, List, Set, Tuple

#: Past this many objects reached from a queue's state, it is taken as held.
EXPLORED_MOST = 10_000

# Not explored: what every object reaches, and what never belongs to one connection.
_SHARED: Tuple[type, ...] = (type, types.ModuleType, types.CodeType,
                           types.BuiltinFunctionType)


def _referents(obj: Any) -> List[Any]:
    """What `obj` refers to, a function's globals and a method's function left out."""
    if isinstance(obj, types.FunctionType):
        return [cell for cell in (obj.__closure__ or ())] + list(obj.__defaults__ or ())
    if isinstance(obj, types.MethodType):
        return [obj.__self__]
    return gc.get_referents(obj)


def held_beyond_its_state(queue: Any, references_besides_the_server: int,
                          server_objects: Tuple[Any, ...] = ()) -> bool:
    """True if something other than the server and the queue's own state refers to
    `queue`, or to state from which the queue can be reached: it may be used to reply.

    `references_besides_the_server` is the queue's reference count less the server's
    own reference, read by the caller before it called this (the call adds its own);
    `server_objects` are what the queue refers to that belong to the server (its
    connection), not explored.
    """
    queue_id = id(queue)
    skipped = {id(obj) for obj in server_objects}
    # Every object the queue reaches (its state: its attributes' values, and what they
    # refer to), by id; `reached` holds one reference to each, counted below.
    reached: Dict[int, Any] = {}
    edges: Dict[int, List[int]] = {}
    pending = [queue]
    while pending:
        parent = pending.pop()
        children = edges[id(parent)] = []
        for child in _referents(parent):
            child_id = id(child)
            if child_id in skipped:
                continue
            children.append(child_id)
            if child_id == queue_id or child_id in reached:
                continue
            if not gc.is_tracked(child) or isinstance(child, _SHARED):
                continue  # cannot lead back to the queue, or not explored
            if len(reached) >= EXPLORED_MOST:
                return True
            reached[child_id] = child
            pending.append(child)
        parent = child = None
    # Those from which the queue can be reached again: only they can be used to reply.
    referrers: Dict[int, List[int]] = {}
    for parent_id, children in edges.items():
        for child_id in children:
            referrers.setdefault(child_id, []).append(parent_id)
    leading: Set[int] = set()
    pending_ids = [queue_id]
    while pending_ids:
        for parent_id in referrers.get(pending_ids.pop(), ()):
            if parent_id not in leading and parent_id != queue_id:
                leading.add(parent_id)
                pending_ids.append(parent_id)
    # References from inside: every edge from the queue or an object that leads back
    # to it (only those can refer to one that does).
    inside: Dict[int, int] = {}
    for parent_id in (queue_id, *leading):
        for child_id in edges[parent_id]:
            inside[child_id] = inside.get(child_id, 0) + 1
    if references_besides_the_server > inside.get(queue_id, 0):
        return True
    # The references this function holds to each object reached: `reached`'s, the
    # loop's and getrefcount's own argument, measured on an object only they hold.
    reached[0] = []
    ours = 0
    for object_id, obj in reached.items():
        if object_id == 0:
            ours = sys.getrefcount(obj)
    for object_id, obj in reached.items():
        if object_id in leading and sys.getrefcount(obj) > ours + inside.get(object_id, 0):
            return True
    return False
