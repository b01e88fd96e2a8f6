"""TLS contexts from files: the command line's --certfile, --keyfile, --ca-certs and
--require-client-cert (gunicorn's names; uvicorn's --ssl-* spellings are aliases)."""
from __future__ import annotations

import contextlib
import os
import ssl
from typing import Iterator, Optional, Tuple


def server_context(certfile: str, keyfile: Optional[str] = None,
                   ca_certs: Optional[str] = None,
                   require_client_cert: bool = False,
                   keyfile_password: Optional[str] = None) -> ssl.SSLContext:
    """A server-side SSLContext with the standard library's defaults (TLS 1.2 and up,
    its cipher choice), the certificate chain of ``certfile`` (and its key, from
    ``keyfile`` or from ``certfile`` itself), and the CAs of ``ca_certs`` to verify
    client certificates with: asked for if given, required with ``require_client_cert``.
    ``keyfile_password`` decrypts an encrypted key; without it, such a key is an error
    (OpenSSL would ask for the password on the terminal, or fail with EINVAL where
    there is none, as under systemd).
    OSError naming the file if one cannot be read, or what it was to hold if it does
    not (no valid PEM, a key that does not match the certificate)."""
    if require_client_cert and ca_certs is None:
        raise ValueError("require_client_cert needs ca_certs: the CA certificates that "
                         "client certificates are verified against")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    key_source = "its private key" if keyfile is None else f"the private key in {keyfile}"
    with _loading(f"the certificate chain in {certfile} and {key_source}",
                  certfile, keyfile):
        # The password's bytes as given on the command line (argv is decoded with the
        # file system encoding; a password typed in Latin-1 is no UTF-8).
        context.load_cert_chain(certfile, keyfile, _no_password if keyfile_password is None
                                else os.fsencode(keyfile_password))
    if ca_certs is not None:
        with _loading(f"the CA certificates in {ca_certs}", ca_certs):
            context.load_verify_locations(cafile=ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def _no_password() -> str:
    """load_cert_chain's password, called only for an encrypted key."""
    raise ssl.SSLError("the private key is encrypted: give its password "
                       "(--keyfile-password)")


@contextlib.contextmanager
def _loading(what: str, *paths: Optional[str]) -> Iterator[None]:
    """Load ``what`` from ``paths``, with errors that say which file: OpenSSL's own name
    none ("[Errno 2] No such file or directory", "[SSL] PEM lib")."""
    for path in paths:
        if path is not None:
            with open(path, "rb"):  # OSError with the file's name, if it cannot be read
                pass
    try:
        yield
    except ssl.SSLError as error:
        # One raised by Python code (_no_password) has only its message, which str()
        # would show as a tuple; OpenSSL's own have an errno and their text.
        reason = error.args[0] if len(error.args) == 1 else error
        raise ssl.SSLError(error.errno, f"cannot load {what}: {reason}") from None


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
