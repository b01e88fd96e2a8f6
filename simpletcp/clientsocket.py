"""ClientSocket: the original simpleTCP's small blocking client, with a timeout."""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Optional, Union

from simpletcp import _address, _arguments, _listener

if TYPE_CHECKING:
    import ssl as _ssl

#: Seconds a connect, send or receive may take before socket.timeout is raised.
DEFAULT_TIMEOUT = 10.0


class ClientSocket:
    """Sends a message to a server and returns its reply.

    ``ClientSocket(mode, port)``: ``mode`` is ``"localhost"``, ``"public"`` (this host)
    or an address / host name; or ``"unix:/path"`` for a Unix socket (then ``port`` is 0). ``send(data)`` connects if needed, sends all of ``data``
    (str is sent as UTF-8) and returns the reply of one ``recv(recv_bytes)``: b"" when
    the server closed the connection. With ``single_use`` (the default) the connection
    is closed after each send and the next send opens a new one; without, the
    connection is opened at once, as the original did, and kept.

    The original's attributes keep their meaning: ``connect_ip`` and ``connect_port``
    (where send() connects), ``closed`` (no connection is open) and ``used`` (send()
    has sent something).

    ``ssl``: a client-side ``ssl.SSLContext`` (``ssl.create_default_context()``): every
    connection is TLS, its certificate checked against ``server_hostname`` (default:
    ``mode``, "localhost" for "localhost" and "public"; required with a 'unix:' mode).
    """

    def __init__(
        self,
        mode: str,
        port: int,
        recv_bytes: int = 2048,
        single_use: bool = True,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        *,
        ssl: Optional[_ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> None:
        self._unix_path = _listener.unix_path(mode)
        if self._unix_path is not None:
            host = self._unix_path
            self.connect_port = _listener.check_unix_port(port, allow_none=False)
        else:
            host = _address.mode_host(mode)
            if mode == "public":
                # 0.0.0.0 is where a server listens, not an address to reach it at.
                host = "127.0.0.1"
            self.connect_port = _arguments.check_int(port, "port", 1, 65535)
        self.mode = mode
        self.connect_ip = host
        self.recv_bytes = _arguments.check_int(recv_bytes, "recv_bytes", 1,
                                               _arguments.MAX_RECV_BYTES)
        if not isinstance(single_use, bool):
            raise TypeError(f"single_use must be a bool, got {type(single_use).__name__}")
        self.single_use = single_use
        self.timeout = _arguments.check_seconds(timeout, "timeout", allow_zero=False,
                                                allow_none=True)
        self.ssl = _arguments.check_client_ssl_context(ssl)
        if server_hostname is not None:
            if not isinstance(server_hostname, str):
                raise TypeError(f"server_hostname must be a str, got "
                                f"{type(server_hostname).__name__}")
            if self.ssl is None:
                raise ValueError("server_hostname applies to TLS: give ssl= too")
            _arguments.check_server_hostname(self.ssl, server_hostname)
        elif self.ssl is not None:
            if self._unix_path is not None:
                if self.ssl.check_hostname:
                    raise ValueError("server_hostname is required with ssl= and a "
                                     "'unix:' mode: the name the certificate is checked "
                                     "against")
            else:
                # The name the user gave, which the certificate names (not the address
                # it resolves to); the original's "public" means this host too.
                server_hostname = "localhost" if mode in ("localhost", "public") else mode
        self.server_hostname = server_hostname
        self.used = False
        self._socket: Optional[socket.socket] = None
        if not single_use:
            # As the original: a kept connection opens now, and fails here if it cannot.
            self.connect()

    @property
    def connected(self) -> bool:
        """Whether a connection is open."""
        return self._socket is not None

    @property
    def closed(self) -> bool:
        """Whether no connection is open (the original's name for ``not connected``)."""
        return self._socket is None

    def connect(self) -> None:
        """Open the connection now (send() does so when needed)."""
        if self._socket is not None:
            return
        sockaddr: Any
        family: int
        if self._unix_path is not None:
            family, sockaddr = socket.AF_UNIX, self._unix_path
        else:
            family, sockaddr = _address.resolve(self.connect_ip, self.connect_port,
                                                passive=False)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(sockaddr)
            if self.ssl is not None:
                # The handshake now, under the same timeout: a certificate that does not
                # verify raises ssl.SSLCertVerificationError here.
                sock = self.ssl.wrap_socket(sock, server_hostname=self.server_hostname)
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    def send(self, data: Union[str, bytes, bytearray, memoryview]) -> bytes:
        """Send ``data`` (str as UTF-8) and return the reply of one recv(recv_bytes)."""
        payload = _as_bytes(data)
        self.connect()
        sock = self._socket
        assert sock is not None
        try:
            sock.sendall(payload)
            self.used = True
            reply = sock.recv(self.recv_bytes)
        except BaseException:
            self.close()  # the connection's state is unknown now: start afresh next time
            raise
        if self.single_use or not reply:
            self.close()
        return reply

    def close(self) -> None:
        """Close the connection, if open. Safe to call more than once."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "ClientSocket":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        where = (f"unix:{self._unix_path}" if self._unix_path is not None
                 else f"{self.connect_ip}:{self.connect_port}")
        return f"<ClientSocket {where} {state}>"


def _as_bytes(data: object) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes):
        return data
    try:
        return bytes(memoryview(data))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be str or a bytes-like object, got {type(data).__name__}"
        ) from None
