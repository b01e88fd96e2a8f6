"""Checking the arguments of TCPServer, ClientSocket and the command line.

Every bound is named once, here, with its reason; README.md documents the same numbers.
A bad argument raises TypeError (wrong type) or ValueError (out of range) naming it.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Literal, Optional, overload

#: The most bytes one read hands a callback (or one ClientSocket.send() returns): 64 MiB.
#: A socket's receive buffer holds a few MiB at most, so a larger read buffer would be
#: allocated (per server, or per send()) and never filled.
MAX_RECV_BYTES = 64 * 1024 * 1024
#: The listen backlog and the connection limit are C ints (the kernel further caps the
#: backlog at net.core.somaxconn, and connections at the descriptor limit).
MAX_C_INT = 2**31 - 1
#: Byte counts of unsent output are C Py_ssize_t; this large disables backpressure.
MAX_BYTES = sys.maxsize
#: The longest timeout, grace period or idle timeout, in seconds: a week.
MAX_SECONDS = 7 * 24 * 3600
#: The most worker processes (TCPServer(workers=...)): far more than any machine has
#: cores; each worker is a process with its own loop and memory.
MAX_WORKERS = 1024
#: The longest host name (a DNS name in text form).
MAX_HOST_LENGTH = 253


def shown(value: object) -> str:
    """repr(value), short even for an int of a million digits (str() of one raises)."""
    if isinstance(value, int) and not -10**30 < value < 10**30:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(value: object, name: str, minimum: int, maximum: int) -> int:
    """``value`` as a plain int from ``minimum`` to ``maximum``, or TypeError/ValueError."""
    # bool is an int subclass, but True is never meant as 1 byte or port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int.__index__(value)  # the plain int it holds: see exact_number()
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be from {minimum} to {maximum}, got {shown(value)}")
    return value


def exact_number(value: int | float) -> int | float:
    """The plain int or float that an int or float (subclass) holds.

    A subclass's own __int__, __index__, __float__ or comparisons would otherwise have
    the last word: it could pass the range check as one number and be used as another.
    """
    if isinstance(value, int):
        return int.__index__(value)
    return float.__float__(value)


def check_bool(value: object, name: str) -> bool:
    """``value``, which must be a bool (1 or "yes" are refused: say True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


@overload
def check_seconds(value: object, name: str, *, allow_zero: bool,
                  allow_none: Literal[False]) -> float: ...
@overload
def check_seconds(value: object, name: str, *, allow_zero: bool,
                  allow_none: bool) -> Optional[float]: ...
def check_seconds(value: object, name: str, *, allow_zero: bool,
                  allow_none: bool) -> Optional[float]:
    """``value`` as float seconds, more than 0 (or from 0) up to MAX_SECONDS."""
    if value is None and allow_none:
        return None
    or_none = ", or None" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds{or_none}, got "
                        f"{type(value).__name__}")
    value = exact_number(value)
    above_minimum = value >= 0 if allow_zero else value > 0
    if not (above_minimum and value <= MAX_SECONDS):  # NaN fails both
        span = "from 0 to" if allow_zero else "more than 0 and at most"
        raise ValueError(f"{name} must be {span} {MAX_SECONDS} seconds (a week){or_none}, "
                         f"got {shown(value)}")
    return float(value)


def check_wait_seconds(value: object, name: str) -> Optional[float]:
    """How long to wait, as threading's waits take it: None for ever (also for longer
    than a lock can wait, infinity included, which the lock would refuse). NaN is
    refused: every wait would return at once, a busy loop in the caller."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, "
                        f"got {type(value).__name__}")
    value = exact_number(value)
    if not value >= 0:  # NaN too
        raise ValueError(f"{name} must be a non-negative number of seconds, "
                         f"got {shown(value)}")
    return None if value > threading.TIMEOUT_MAX else float(value)


def check_ssl_context(context: object) -> Any:
    """``context`` (TCPServer's ``ssl``): a server-side ssl.SSLContext, or None."""
    if context is None:
        return None
    try:
        import ssl
    except ImportError:  # a Python built without OpenSSL
        raise ValueError("ssl= needs Python's ssl module, which this Python lacks") from None
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext (or None), got "
                        f"{type(context).__name__}")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT or context.check_hostname:
        # A client's context cannot serve: it checks a host name the server has none
        # of, and asks for the certificate of the "server", which is the client here.
        raise ValueError("ssl must be a server-side context: "
                         "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or "
                         "ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), then load_cert_chain(); "
                         "this one is for clients (PROTOCOL_TLS_CLIENT or check_hostname)")
    check_has_certificate(context)
    return context


def check_has_certificate(context: Any) -> None:
    """A server's context must hold a certificate: without one, OpenSSL refuses every
    client's hello (NO_SHARED_CIPHER), which would show only as failed handshakes, one
    per connection. OpenSSL tells, in a hello from a client offering every cipher and
    every group (offering_every_group) handed to a server-side SSLObject that never sees
    the network (no descriptor; the context's session statistics count one more accepted
    handshake).

    Not asked where application code would run in it: an sni_callback (it may hand each
    name the context that holds its certificate), a _msg_callback, a keylog file."""
    import ssl
    if (context.sni_callback is not None or getattr(context, "_msg_callback", None)
            is not None or getattr(context, "keylog_filename", None)):
        return
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    # Every cipher and version this OpenSSL has: a server kept to legacy ones on purpose
    # (for old devices) holds a certificate all the same.
    try:
        client.set_ciphers("ALL:@SECLEVEL=0")
        client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    except (ssl.SSLError, ValueError):
        pass
    hello = ssl.MemoryBIO()
    asking = client.wrap_bio(ssl.MemoryBIO(), hello)
    try:
        asking.do_handshake()
    except ssl.SSLWantReadError:
        pass
    answering_in = ssl.MemoryBIO()
    answering_in.write(offering_every_group(hello.read()))
    answering = context.wrap_bio(answering_in, ssl.MemoryBIO(), server_side=True)
    try:
        answering.do_handshake()
    except ssl.SSLError as error:
        if error.reason == "NO_SHARED_CIPHER":
            raise ValueError("ssl: the context has no certificate to serve with (or none "
                             "that its ciphers can use): load one with "
                             "context.load_cert_chain(certfile, keyfile)") from None


#: Every named group a TLS client may offer (IANA's registry: the elliptic curves 1-33,
#: finite-field groups 256-260). Python sets one client group at most, and a server kept
#: to TLS 1.2 with a curve outside OpenSSL's default list (set_ecdh_curve("secp224r1"),
#: brainpool) has no ECDHE cipher for a client that does not offer it: NO_SHARED_CIPHER,
#: certificate or not.
EVERY_GROUP = tuple(range(1, 34)) + tuple(range(256, 261))
SUPPORTED_GROUPS_EXTENSION = 10


def offering_every_group(hello: bytes) -> bytes:
    """``hello``, one TLS record holding a ClientHello, with its supported_groups
    extension offering EVERY_GROUP (its own first, so its key share still matches).
    The server answering it never gets as far as checking the transcript. ``hello``
    itself if it is not laid out so."""
    try:
        record_end = 5 + int.from_bytes(hello[3:5], "big")
        if hello[0] != 22 or hello[5] != 1 or record_end != len(hello):
            return hello
        offset = 9 + 2 + 32  # record and handshake headers, legacy version, random
        offset += 1 + hello[offset]  # session id
        offset += 2 + int.from_bytes(hello[offset:offset + 2], "big")  # cipher suites
        offset += 1 + hello[offset]  # compression methods
        extensions_start = offset + 2
        extensions_end = extensions_start + int.from_bytes(hello[offset:offset + 2], "big")
        if extensions_end != record_end:
            return hello
        offset = extensions_start
        while offset + 4 <= extensions_end:
            kind = int.from_bytes(hello[offset:offset + 2], "big")
            data_end = offset + 4 + int.from_bytes(hello[offset + 2:offset + 4], "big")
            if kind == SUPPORTED_GROUPS_EXTENSION:
                own = hello[offset + 6:data_end]
                offered = [int.from_bytes(own[i:i + 2], "big") for i in range(0, len(own), 2)]
                groups = offered + [group for group in EVERY_GROUP if group not in offered]
                listed = b"".join(group.to_bytes(2, "big") for group in groups)
                extension = (kind.to_bytes(2, "big") + (len(listed) + 2).to_bytes(2, "big")
                             + len(listed).to_bytes(2, "big") + listed)
                grown = len(extension) - (data_end - offset)
                body = bytearray(hello[9:offset] + extension + hello[data_end:])
                extensions_length = extensions_end - extensions_start + grown
                at = extensions_start - 2 - 9
                body[at:at + 2] = extensions_length.to_bytes(2, "big")
                handshake = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
                return hello[:3] + len(handshake).to_bytes(2, "big") + handshake
            offset = data_end
    except IndexError:
        pass
    return hello


def check_server_hostname(context: Any, name: str) -> None:
    """``name`` (ClientSocket's ``server_hostname``): one that ``context`` can send
    (SNI) and check the certificate against. Python's ssl module tells, as it would at
    the handshake, in an SSLObject that never sees the network."""
    import ssl
    try:
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name)
    except (TypeError, ValueError) as error:  # UnicodeError (IDNA) is a ValueError
        raise ValueError(f"server_hostname {shown(name)} cannot be used: {error}") from None


def check_client_ssl_context(context: object) -> Any:
    """``context`` (ClientSocket's ``ssl``): a client-side ssl.SSLContext, or None."""
    if context is None:
        return None
    import ssl
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext (or None), got "
                        f"{type(context).__name__}")
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("ssl must be a client-side context: ssl.create_default_context() "
                         "(with load_verify_locations() for a private CA); this one is "
                         "PROTOCOL_TLS_SERVER")
    return context


def check_mode(mode: object) -> str:
    """``mode``: a non-empty str that can be a host name; TypeError/ValueError naming it."""
    if not isinstance(mode, str):
        raise TypeError(
            "mode must be 'localhost', 'public' or an IP address / host name (str), "
            f"got {type(mode).__name__}"
        )
    mode = str.__str__(mode)  # a str subclass's own __contains__/__len__ have no say
    if not mode:
        raise ValueError("mode must not be empty: use 'localhost', 'public' or an address")
    if "\0" in mode:
        # The C resolver would stop at the NUL and bind what precedes it.
        raise ValueError(f"mode must not contain a NUL character, got {shown(mode)}")
    if len(mode) > MAX_HOST_LENGTH:
        raise ValueError(f"mode is {len(mode)} characters long; a host name has at most "
                         f"{MAX_HOST_LENGTH}")
    return mode
