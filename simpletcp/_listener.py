"""The listening socket a server serves: bound here (TCP or Unix), or brought by the
caller (``sock=``, an inherited descriptor, systemd socket activation).

Whatever its origin, the loop gets a listening SOCK_STREAM socket of family AF_INET,
AF_INET6 or AF_UNIX (and makes it non-blocking); every check of one lives here.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from typing import List, Optional, Tuple

from simpletcp import _address, _arguments

#: The prefix of a mode that names a Unix domain socket's path.
UNIX_PREFIX = "unix:"
#: sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
MAX_UNIX_PATH_BYTES = 107
#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
SYSTEMD_FIRST_FD = 3
FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def unix_path(mode: object) -> Optional[str]:
    """The path of a ``"unix:/path"`` mode (checked), or None for a TCP mode."""
    if not isinstance(mode, str) or not mode.startswith(UNIX_PREFIX):
        return None
    path = mode[len(UNIX_PREFIX):]
    if not path:
        raise ValueError("mode 'unix:' needs a path, as in 'unix:/run/app.sock'")
    if "\0" in path:
        raise ValueError(f"mode must not contain a NUL character, got {_arguments.shown(mode)}")
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise ValueError(f"mode: the Unix socket path is {len(os.fsencode(path))} bytes long; "
                         f"the kernel takes at most {MAX_UNIX_PATH_BYTES}")
    return path


def check_unix_port(port: object, allow_none: bool) -> int:
    """The ``port`` given with a ``"unix:"`` mode, which has none: 0 (or None where
    ``allow_none``), as an int is checked anywhere (bool and float are TypeErrors)."""
    if port is None and allow_none:
        return 0
    port = _arguments.check_int(port, "port", 0, 65535)
    if port != 0:
        or_none = " (or None)" if allow_none else ""
        raise ValueError(f"port must be 0{or_none} with a 'unix:' mode, got {port}")
    return 0


def bind_tcp(mode: object, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``mode``/``port`` (both checked by the caller)."""
    family, sockaddr = _address.resolve(mode, port, passive=True)
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarting a server must not wait out TIME_WAIT on its own port.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            listener.bind(sockaddr)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot bind {sockaddr[0]}:{sockaddr[1]} (mode {mode!r}, "
                f"port {port}): {exc.strerror}"
            ) from exc
        listener.listen(backlog)
    except BaseException:
        listener.close()
        raise
    return listener


def bind_unix(path: str, backlog: int, permissions: Optional[int]) -> Tuple[socket.socket, os.stat_result]:
    """A listening Unix socket at ``path``, and the file's identity (to remove it on stop
    only if it is still ours). A stale socket file (a server that crashed) is replaced;
    anything else at ``path`` is left alone."""
    remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(path)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind Unix socket {path!r}: {exc.strerror}") from exc
        try:
            if permissions is not None:
                os.chmod(path, permissions)
            listener.listen(backlog)
            identity = os.lstat(path)
        except BaseException:
            os.unlink(path)
            raise
    except BaseException:
        listener.close()
        raise
    return listener, identity


def remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on (left by a crash).

    Never anything else: a regular file, a directory or a link at ``path`` is an
    OSError (EEXIST), and so is a socket a live server listens on (EADDRINUSE).
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(status.st_mode):
        raise OSError(errno.EEXIST, f"cannot bind Unix socket {path!r}: it exists and is not "
                                    "a socket (left alone)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: stale
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind Unix socket {path!r}: cannot tell whether the "
                                 f"socket there is in use ({exc.strerror})") from exc
    else:
        raise OSError(errno.EADDRINUSE, f"cannot bind Unix socket {path!r}: a server is "
                                        "listening on it")
    finally:
        probe.close()
    try:
        if os.lstat(path).st_ino == status.st_ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def remove_unix_socket(path: str, identity: os.stat_result) -> None:
    """Remove the socket file this server made, unless it was replaced since (a newer
    server bound the same path during a rolling restart)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
        os.unlink(path)


def adopt(sock: object) -> socket.socket:
    """``sock``, checked to be a listening stream socket the loop can serve (the loop
    makes it non-blocking)."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a listening socket.socket, got {type(sock).__name__}")
    ssl = sys.modules.get("ssl")  # not imported: sock cannot be one of its sockets
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        # The loop reads and writes the descriptor itself: the TLS would be skipped.
        raise TypeError("sock must be a plain socket.socket, got an ssl.SSLSocket (the "
                        "server would answer its clients in plaintext)")
    if sock.fileno() < 0:
        raise ValueError("sock is closed")
    if sock.family not in FAMILIES:
        raise ValueError(f"sock must be an AF_INET, AF_INET6 or AF_UNIX socket, got {sock.family!r}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"sock must be a SOCK_STREAM socket, got {sock.type!r}")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("sock must be listening: call sock.listen() first")
    return sock


def from_descriptor(fd: object) -> socket.socket:
    """The listening socket open on descriptor ``fd`` (inherited from a supervisor or
    systemd), checked as ``adopt`` checks, and made close-on-exec, as sd_listen_fds()
    makes systemd's and Python makes its own sockets: a program the application runs
    must not inherit it and hold the port after the server has stopped."""
    fd = _arguments.check_int(fd, "fd", 0, _arguments.MAX_C_INT)
    try:
        os.fstat(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"fd {fd} is not an open descriptor: {exc.strerror}") from None
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise OSError(exc.errno, f"fd {fd} is not a socket: {exc.strerror}") from None
    try:
        adopt(sock)
    except BaseException:
        sock.detach()  # not ours to close: the caller's descriptor stays as it was
        raise
    sock.set_inheritable(False)
    return sock


def systemd_sockets() -> List[socket.socket]:
    """The listening sockets systemd passed to this process (socket activation), from
    descriptor 3 on; [] when none were. As sd_listen_fds(1): the variables are removed
    from the environment, so that child processes do not take the sockets for theirs."""
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []  # meant for another process (the one systemd started, not this child)
    if not count.isdigit():
        raise ValueError(f"LISTEN_FDS must be a number of descriptors, got {count!r}")
    return [from_descriptor(fd) for fd in range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + int(count))]
