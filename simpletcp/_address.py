"""Turning the user's ``mode`` and ``port`` into something a socket can bind or connect to.

Shared by the server and the client so that both read ``mode`` the same way.
"""
from __future__ import annotations

import socket
import sys
from typing import Any, Tuple

#: The two names the original simpleTCP gave special meaning to.
MODE_ADDRESSES = {
    "localhost": "127.0.0.1",
    "public": "0.0.0.0",
}

Address = Tuple[int, Any]  # (address family, sockaddr tuple)


def check_port(port: object, name: str = "port") -> int:
    """Return ``port`` as an int, or raise with a message that names the argument."""
    # bool is an int subclass, but True is never meant as port 1.
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int from 0 to 65535, got {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be from 0 to 65535, got {port}")
    return port


def check_positive_int(value: object, name: str, maximum: int = sys.maxsize) -> int:
    """``value`` if it is an int from 1 to ``maximum`` (what the C side can hold, by
    default), else TypeError or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if not 0 < value <= maximum:
        raise ValueError(f"{name} must be a positive int up to {maximum}, got {value}")
    return value


def check_timeout(value: object, name: str, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return float(value)


def mode_host(mode: object) -> str:
    """The host string ``mode`` stands for: the special names, else ``mode`` itself."""
    if not isinstance(mode, str):
        raise TypeError(
            "mode must be 'localhost', 'public' or an IP address / host name (str), "
            f"got {type(mode).__name__}"
        )
    if not mode:
        raise ValueError("mode must not be empty: use 'localhost', 'public' or an address")
    return MODE_ADDRESSES.get(mode, mode)


def resolve(mode: object, port: object, *, passive: bool) -> Address:
    """Resolve ``mode``/``port`` to the first (family, sockaddr) of a TCP socket.

    ``passive`` asks for an address to bind (server) rather than to connect to.
    """
    host = mode_host(mode)
    port = check_port(port)
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"mode {mode!r}: cannot resolve {host!r}: {exc.strerror}") from exc
    family, _type, _proto, _canon, sockaddr = infos[0]
    return family, sockaddr
