"""Turning the user's ``mode`` and ``port`` into something a socket can bind or connect to.

Shared by the server and the client so that both read ``mode`` the same way.
"""
from __future__ import annotations

import socket
from typing import Any, Tuple

from simpletcp import _arguments

#: The two names the original simpleTCP gave special meaning to.
MODE_ADDRESSES = {
    "localhost": "127.0.0.1",
    "public": "0.0.0.0",
}

Address = Tuple[int, Any]  # (address family, sockaddr tuple)


def mode_host(mode: object) -> str:
    """The host string ``mode`` stands for: the special names, else ``mode`` itself."""
    mode = _arguments.check_mode(mode)
    return MODE_ADDRESSES.get(mode, mode)


def resolve(mode: object, port: int, *, passive: bool) -> Address:
    """Resolve ``mode``/``port`` (already checked) to the first (family, sockaddr) of a
    TCP socket. ``passive`` asks for an address to bind (server), not to connect to."""
    host = mode_host(mode)
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"mode {mode!r}: cannot resolve {host!r}: {exc.strerror}") from exc
    except UnicodeError as exc:
        # A non-ASCII name goes through IDNA first, which refuses e.g. labels over 63.
        raise ValueError(f"mode {_arguments.shown(mode)} is not a valid host name: {exc}") from None
    family, _type, _proto, _canon, sockaddr = infos[0]
    return family, sockaddr
