"""TLS contexts from files: the command line's --certfile, --keyfile, --ca-certs and
--require-client-cert (gunicorn's names; uvicorn's --ssl-* spellings are aliases)."""
from __future__ import annotations

import ssl
from typing import Optional, Tuple


def server_context(certfile: str, keyfile: Optional[str] = None,
                   ca_certs: Optional[str] = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side SSLContext with the standard library's defaults (TLS 1.2 and up,
    its cipher choice), the certificate chain of ``certfile`` (and its key, from
    ``keyfile`` or from ``certfile`` itself), and the CAs of ``ca_certs`` to verify
    client certificates with: asked for if given, required with ``require_client_cert``.
    OSError if a file cannot be read; ssl.SSLError (an OSError) if it holds no valid
    PEM, or the key does not match."""
    if require_client_cert and ca_certs is None:
        raise ValueError("require_client_cert needs ca_certs: the CA certificates that "
                         "client certificates are verified against")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if ca_certs is not None:
        context.load_verify_locations(cafile=ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


# The most of a connection's first bytes read for the server name, and the most records
# they may come in: a ClientHello is a few hundred bytes (about 1.8 KiB with a
# post-quantum key share), in one record. One past these is not looked into (its name
# is then None; OpenSSL still serves it), so a client that trickles its hello in tiny
# records costs a bounded amount of looking.
CLIENT_HELLO_LIMIT = 16384 + 5
CLIENT_HELLO_RECORDS = 16


def requested_server_name(received: bytes) -> Tuple[bool, Optional[str]]:
    """The name a TLS client asked for (SNI) in the ClientHello that ``received``, the
    first bytes of its connection, begins with: ``(True, name)``, ``(True, None)`` if it
    asked for none (or the bytes are no ClientHello), ``(False, None)`` while more bytes
    are needed. The server side of ssl.SSLObject does not tell (its server_hostname is
    the client side's), so queue.tls.server_hostname comes from here."""
    message = bytearray()
    offset = records = 0
    while len(received) - offset >= 5:  # the handshake message, from its records
        length = int.from_bytes(received[offset + 3:offset + 5], "big")
        records += 1
        if (received[offset] != 22 or offset + 5 + length > CLIENT_HELLO_LIMIT
                or records > CLIENT_HELLO_RECORDS):
            return True, None  # not a handshake record, or past the limits
        if len(received) - offset - 5 < length:
            break  # the rest of this record is still on its way
        message += received[offset + 5:offset + 5 + length]
        offset += 5 + length
        if len(message) >= 4:
            if message[0] != 1:
                return True, None  # not a ClientHello
            if len(message) >= 4 + int.from_bytes(message[1:4], "big"):
                return True, _server_name_in(bytes(message[4:4 + int.from_bytes(
                    message[1:4], "big")]))
    if len(received) >= CLIENT_HELLO_LIMIT:
        return True, None
    return False, None


def _server_name_in(hello: bytes) -> Optional[str]:
    """The host_name of a ClientHello body's server_name extension (RFC 6066), or None."""
    position = 2 + 32  # legacy_version, random
    try:
        position += 1 + hello[position]  # legacy_session_id
        position += 2 + int.from_bytes(hello[position:position + 2], "big")  # cipher_suites
        position += 1 + hello[position]  # legacy_compression_methods
        end = position + 2 + int.from_bytes(hello[position:position + 2], "big")
        position += 2
        while position + 4 <= min(end, len(hello)):
            kind = int.from_bytes(hello[position:position + 2], "big")
            size = int.from_bytes(hello[position + 2:position + 4], "big")
            position += 4
            if kind == 0:  # server_name: a list of (name_type, name); host_name is 0
                names = hello[position + 2:position + size]
                while len(names) >= 3:
                    name_length = int.from_bytes(names[1:3], "big")
                    if names[0] == 0 and len(names) >= 3 + name_length:
                        return names[3:3 + name_length].decode("ascii")
                    names = names[3 + name_length:]
                return None
            position += size
    except (IndexError, UnicodeDecodeError):
        pass
    return None
