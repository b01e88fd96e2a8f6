"""Working out, once, how the user's read_callback wants to be called."""
from __future__ import annotations

import functools
import inspect
from typing import Any


def check_runs_when_called(read_callback: object) -> None:
    """TypeError for a callback whose body would not run when the server calls it.

    The server calls read_callback synchronously in its thread and does nothing with
    what it returns: an ``async def`` (or async generator, or generator) function
    called that way only creates an object, and its code never runs. Partials of
    them (and staticmethods of them) and objects whose ``__call__`` is one are the same.
    """
    target = read_callback
    # A partial, or a staticmethod (callable since Python 3.10), calls what it wraps.
    while isinstance(target, (functools.partial, staticmethod)):
        target = target.func if isinstance(target, functools.partial) else target.__func__
    candidates = [target]
    if not inspect.isclass(target) and not inspect.isroutine(target):
        candidates.append(getattr(target, "__call__", None))  # a callable object
    for candidate in candidates:
        if inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate):
            raise TypeError(
                "read_callback is an async function: the server calls it synchronously, "
                "in its own thread, so its body would never run. Make it a plain def; "
                "to use asyncio, hand the work to your event loop "
                "(asyncio.run_coroutine_threadsafe) and put() the reply from there."
            )
        if inspect.isgeneratorfunction(candidate):
            raise TypeError(
                "read_callback is a generator function (it contains yield): calling it "
                "runs none of its body. Make it a plain def that calls queue.put()."
            )


def takes_ip(read_callback: Any) -> bool:
    """True for ``callback(ip, queue, data)``, False for ``callback(queue, data)``.

    Both forms come from the original simpleTCP (the ip form from its later versions).
    Decided from the signature: three required positional parameters mean the ip form,
    two the original one; otherwise whichever the callable can accept, preferring the
    ip form. Raises TypeError for a non-callable or a callable that fits neither.
    """
    if not callable(read_callback):
        raise TypeError(
            "read_callback must be callable as callback(queue, data) or "
            f"callback(ip, queue, data), got {type(read_callback).__name__}"
        )
    try:
        signature = inspect.signature(read_callback)
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
                f"read_callback has a required keyword-only parameter {parameter.name!r}; "
                "it is called as callback(queue, data) or callback(ip, queue, data)"
            )
    if required == 3:
        return True
    if required == 2:
        return False
    if required < 3 and (accepted >= 3 or varargs):
        return True
    if required < 2 and accepted >= 2:
        return False
    raise TypeError(
        "read_callback cannot be called as callback(queue, data) or "
        f"callback(ip, queue, data): its signature is {signature}"
    )
