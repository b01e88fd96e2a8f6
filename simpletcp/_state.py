"""Whether a connection's queue is held by anything but its own per-connection state.

While stopping, the server waits for a queue that code besides the server still holds:
a worker thread may be about to reply (Connection.queue_held). It tells by the queue's
reference count. State kept on the queue (``queue.session = Session(queue)``,
``queue.reply = queue.put``) refers back to the queue and raises that count too, though
nothing outside the connection can reach it: without this check, every such connection
would make stop() wait its whole grace period.

The check: the objects the queue's state reaches, from which the queue can be reached
again, must be referred to by one another only (and the queue by them and the server).
Any reference from elsewhere (a thread's local variable, a registry, a global) shows
as a reference count higher than the references counted inside, so the answer errs
towards "held" (wait), never towards dropping a reply: what is not explored (classes,
modules, a function's globals, anything past EXPLORED_MOST objects) only makes a
reference look like an outside one. This module counts the references from inside;
Connection.queue_held reads the counts, all at one instant.

Not covered: a worker that changes the state's references themselves (moves the
state's only reference to the queue into its own variable) while the check runs.
"""
import gc
import sys
import types
from typing import Any, Dict, List, Optional, Set, Tuple

#: Past this many objects reached from a queue's state, it is taken as held.
EXPLORED_MOST = 10_000

# Not explored: what every object reaches, and what never belongs to one connection.
_SHARED: Tuple[type, ...] = (type, types.ModuleType, types.CodeType,
                           types.BuiltinFunctionType)


# Python 3.13 keeps an instance's attributes inline even once its __dict__ has been
# made: the instance and that dict then share one reference to each value, and the
# instance's traversal shows the values, not the dict (nor the dict's, the values).
# Here the instance refers to its dict, and the dict to the values.
_DICT_SHARES_INLINE_VALUES = sys.version_info >= (3, 13)


def _referents(obj: Any) -> List[Any]:
    """What `obj` refers to, a function's globals and a method's function left out.

    Each referent stands for one reference `obj` holds: the tuple of a function's
    closure cells or defaults, not what is in it, since a worker can hold that tuple.
    """
    if isinstance(obj, types.FunctionType):
        return [part for part in (obj.__closure__, obj.__defaults__, obj.__kwdefaults__)
                if part is not None]
    if isinstance(obj, types.MethodType):
        return [obj.__self__]
    if _DICT_SHARES_INLINE_VALUES:
        if type(obj) is dict and all(type(key) is str for key in obj):
            # Its values, also when they are an instance's inline values, which the
            # dict's own traversal leaves to the instance.
            return list(obj.values())
        return _with_its_dict(obj, gc.get_referents(obj))
    return gc.get_referents(obj)


def _with_its_dict(obj: Any, referents: List[Any]) -> List[Any]:
    """`referents` with an instance's dict in place of the inline values it shares.

    A worker holding vars(session) can reach what the session refers to, so the dict
    must be counted as a referent (of the one reference the instance holds to it), and
    its values once only, as the dict's.
    """
    descriptor = None
    for klass in type(obj).__mro__:
        descriptor = vars(klass).get("__dict__")
        if descriptor is not None:
            break
    if not isinstance(descriptor, types.GetSetDescriptorType):
        return referents  # no instance dict, or not the interpreter's own
    attributes = descriptor.__get__(obj, type(obj))
    if not isinstance(attributes, dict) or any(r is attributes for r in referents):
        return referents
    # Left out: one edge per value of the dict (fewer edges inside only err towards held).
    shared: Dict[int, int] = {}
    for value in attributes.values():
        shared[id(value)] = shared.get(id(value), 0) + 1
    kept = []
    for referent in referents:
        if shared.get(id(referent), 0) > 0:
            shared[id(referent)] -= 1
        else:
            kept.append(referent)
    kept.append(attributes)
    return kept


def references_from_inside(queue: Any, server_objects: Tuple[Any, ...] = ()
                           ) -> Optional[Tuple[int, List[Any], List[int]]]:
    """How many references the queue's own state holds to the queue and to each object
    of that state from which the queue can be reached again, or None if that state is
    too large to tell (then it is taken as held).

    Returns (references to the queue, those objects, references to each). The caller
    compares them with the reference counts in one pass that runs no Python code, so
    that a worker thread cannot move its reference from one of these objects to
    another between two reads (Connection.queue_held); the returned list holds one
    reference to each object. `server_objects` are what the queue refers to that
    belong to the server (its connection), not explored.
    """
    queue_id = id(queue)
    skipped = {id(obj) for obj in server_objects}
    # Every object the queue reaches (its state: its attributes' values, and what they
    # refer to), by id.
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
                return None
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
    objects = [reached[object_id] for object_id in leading]
    return inside.get(queue_id, 0), objects, [inside.get(id(obj), 0) for obj in objects]
