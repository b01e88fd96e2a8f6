"""Working out, once, how the user's read_callback wants to be called."""
from __future__ import annotations

import inspect
from typing import Callable


def takes_ip(read_callback: object) -> bool:
    """True for ``callback(ip, queue, data)``, False for ``callback(queue, data)``.

    Both forms come from the original simpleTCP (the ip form from its later versions).
    Decided from the signature: three required positional parameters mean the ip form,
    two the original one; otherwise whichever the callable can accept, preferring the
    ip form. Raises TypeError for a non-callable, a callable that fits neither, or a
    coroutine or generator function.
    """
    if not callable(read_callback):
        raise TypeError(
            "read_callback must be callable as callback(queue, data) or "
            f"callback(ip, queue, data), got {type(read_callback).__name__}"
        )
    for function in (read_callback, getattr(read_callback, "__call__", None)):
        # Calling these only makes a coroutine or generator object, which runs nothing:
        # every request would go unanswered without a word.
        if inspect.iscoroutinefunction(function) or inspect.isgeneratorfunction(function) \
                or inspect.isasyncgenfunction(function):
            raise TypeError(
                "read_callback must be a plain function: it is called in the server's "
                f"thread and its return value is ignored, so {read_callback!r} (a coroutine "
                "or generator function) would never run; put() the reply from a plain one"
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
        f"read_callback{signature} cannot be called as callback(queue, data) "
        "or callback(ip, queue, data)"
    )
