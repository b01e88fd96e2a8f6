"""Working out, once, how each of the user's callbacks wants to be called.

Every callback the server calls (``read_callback``, ``on_connect``, ``on_disconnect``)
comes in two forms, with or without the peer's ``ip`` first, as the original simpleTCP's
read_callback did; this module alone decides which, the same way for all of them.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, Tuple

#: What each callback is given after the optional ``ip``.
PARAMETERS: Dict[str, Tuple[str, ...]] = {
    "read_callback": ("queue", "data"),
    "on_connect": ("queue",),
    "on_disconnect": ("queue",),
}


def forms(argument: str) -> str:
    """The two ways ``argument`` is called, as words: "read_callback(queue, data) or
    read_callback(ip, queue, data)"."""
    parameters = PARAMETERS[argument]
    return (f"{argument}({', '.join(parameters)}) or "
            f"{argument}({', '.join(('ip',) + parameters)})")


def check_runs_when_called(callback: object, argument: str = "read_callback") -> None:
    """TypeError for a callback whose body would not run when the server calls it.

    The server calls its callbacks synchronously in its thread and does nothing with
    what they return: an ``async def`` (or async generator, or generator) function
    called that way only creates an object, and its code never runs. Partials of
    them (and staticmethods of them) and objects whose ``__call__`` is one are the same.
    """
    target = callback
    # A partial, or a staticmethod (callable since Python 3.10), calls what it wraps.
    while isinstance(target, (functools.partial, staticmethod)):
        target = target.func if isinstance(target, functools.partial) else target.__func__
    candidates = [target]
    if not inspect.isclass(target) and not inspect.isroutine(target):
        candidates.append(getattr(target, "__call__", None))  # a callable object
    for candidate in candidates:
        if inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate):
            raise TypeError(
                f"{argument} is an async function: the server calls it synchronously, "
                "in its own thread, so its body would never run. Make it a plain def; "
                "to use asyncio, hand the work to your event loop "
                "(asyncio.run_coroutine_threadsafe) and put() the reply from there."
            )
        if inspect.isgeneratorfunction(candidate):
            raise TypeError(
                f"{argument} is a generator function (it contains yield): calling it "
                "runs none of its body. Make it a plain def that calls queue.put()."
            )


def takes_ip(callback: Any, argument: str = "read_callback") -> bool:
    """True if ``callback`` takes the peer's ip first (``callback(ip, queue, data)``),
    False if not (``callback(queue, data)``); for on_connect and on_disconnect the same
    with ``queue`` alone.

    Both forms come from the original simpleTCP (the ip form from its later versions).
    Decided from the signature: as many required positional parameters as the ip form
    has mean the ip form, one fewer the other; otherwise whichever the callable can
    accept, preferring the ip form. Raises TypeError, naming ``argument``, for a
    non-callable or a callable that fits neither.
    """
    plain = len(PARAMETERS[argument])
    with_ip = plain + 1
    if not callable(callback):
        raise TypeError(f"{argument} must be callable as {forms(argument)}, "
                        f"got {type(callback).__name__}")
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        # Some builtins have no introspectable signature: assume the original form.
        return False
    required = 0
    accepted = 0
    varargs = False
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            accepted += 1
            if parameter.default is parameter.empty:
                required += 1
        elif parameter.kind is parameter.VAR_POSITIONAL:
            varargs = True
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            raise TypeError(
                f"{argument} has a required keyword-only parameter {parameter.name!r}; "
                f"it is called as {forms(argument)}"
            )
    if required == with_ip:
        return True
    if required == plain:
        return False
    if required < with_ip and (accepted >= with_ip or varargs):
        return True
    if required < plain and accepted >= plain:
        return False
    raise TypeError(f"{argument} cannot be called as {forms(argument)}: "
                    f"its signature is {signature}")
