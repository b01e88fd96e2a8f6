"""The PROXY protocol header (versions 1 and 2), as HAProxy, nginx and cloud load
balancers send it at the start of a connection to say whom it is really from.

``parse_header(data)`` is a pure function over the first bytes of a connection:

- ``None``: ``data`` is a valid beginning of a header, but not all of it yet;
- a ``ProxyHeader``: a whole header, ``length`` bytes long (what follows is the
  client's own data);
- ``ProxyHeaderError`` (a ValueError): not a header, a malformed one, or one longer than
  this module accepts.

The specification is HAProxy's "The PROXY protocol, versions 1 & 2"
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt); this is our own reading
of it. TCP over IPv4/IPv6 and Unix stream addresses are understood; v1 UNKNOWN, v2
LOCAL (a health check of the balancer's own) and v2 UNSPEC carry no address, and the
connection keeps its own peer. v2's TLVs are checked to fit and skipped.
"""
from __future__ import annotations

import ipaddress
import os
import struct
from typing import NamedTuple, Optional, Tuple, Union

__all__ = ["ProxyHeader", "ProxyHeaderError", "parse_header", "V1_MAX_LENGTH",
           "V2_MAX_LENGTH", "V2_SIGNATURE"]

#: A v1 header is at most 107 bytes, its CRLF included (the specification's bound).
V1_MAX_LENGTH = 107
V1_PREFIX = b"PROXY "
#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
#: The longest v2 header accepted, its 16 fixed bytes included: the addresses (216 bytes
#: for Unix ones) and a few KiB of TLVs (HAProxy's SSL and unique-id TLVs are well under).
#: The format allows 65,551; a longer header is refused rather than buffered.
V2_MAX_LENGTH = 4096

V2_COMMAND_LOCAL = 0x0
V2_COMMAND_PROXY = 0x1
V2_FAMILY_UNSPEC = 0x0
V2_FAMILY_INET = 0x1
V2_FAMILY_INET6 = 0x2
V2_FAMILY_UNIX = 0x3
V2_TRANSPORT_UNSPEC = 0x0
V2_TRANSPORT_STREAM = 0x1
#: Bytes of the address block each family needs (source and destination).
V2_ADDRESS_LENGTH = {V2_FAMILY_UNSPEC: 0, V2_FAMILY_INET: 12, V2_FAMILY_INET6: 36,
                     V2_FAMILY_UNIX: 216}
V2_UNIX_PATH_LENGTH = 108
#: How an IP family's address block is laid out (source and destination addresses, then
#: ports, in network order), its address type and its v1 name.
V2_IP_LAYOUTS = {
    V2_FAMILY_INET: ("!4s4sHH", ipaddress.IPv4Address, "TCP4"),
    V2_FAMILY_INET6: ("!16s16sHH", ipaddress.IPv6Address, "TCP6"),
}

#: (host, port) of an IP peer, or (path, 0) of a Unix one: what queue.peer shows.
Address = Tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


class ProxyHeader(NamedTuple):
    """A parsed header. ``source``/``destination`` are None when the header carries no
    address (v1 UNKNOWN, v2 LOCAL or UNSPEC): the connection's own peer stands."""
    version: int                  # 1 or 2
    command: str                  # "PROXY", or "LOCAL" (v2: the balancer's own connection)
    family: str                   # "TCP4", "TCP6", "UNIX" or "UNKNOWN"
    source: Optional[Address]
    destination: Optional[Address]
    length: int                   # bytes of the connection's data the header took


def parse_header(data: Union[bytes, bytearray, memoryview]) -> Optional[ProxyHeader]:
    """The PROXY header at the start of ``data``, None if more bytes are needed, or
    ProxyHeaderError."""
    try:
        data = bytes(memoryview(data))  # bytes() of an int would make that many zeros
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        if len(data) < len(V2_SIGNATURE):
            return None  # the empty prefix of either version, or of v2's signature
        return _parse_v2(data)
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError(f"not a PROXY protocol header: starts with {data[:16]!r}")


# ---- version 1: one line of text ------------------------------------------------------

def _parse_v1(data: bytes) -> Optional[ProxyHeader]:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 header without CRLF in its first "
                                   f"{V1_MAX_LENGTH} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header with a bare CR or LF")
        return None
    line = data[:end]
    if b"\n" in line or b"\r" in line:
        # Refused as it is while the line is incomplete: a header's fate must not depend
        # on how TCP cut it into reads.
        raise ProxyHeaderError("PROXY v1 header with a bare CR or LF")
    length = end + 2
    fields = line.split(b" ")  # the first is b"PROXY"
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        # The sender could not tell (or will not): the rest of the line is to be ignored.
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, length)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"PROXY v1 header with protocol {protocol[:16]!r}")
    if len(fields) != 6:
        raise ProxyHeaderError(f"PROXY v1 {protocol.decode()} header with {len(fields)} "
                               "fields instead of 6 (single spaces between them)")
    version = 4 if protocol == b"TCP4" else 6
    source = (_v1_host(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_host(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, "PROXY", protocol.decode(), source, destination, length)


def _v1_host(field: bytes, version: int) -> str:
    try:
        text = field.decode("ascii")
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header with a bad IPv{version} address "
                               f"{field[:46]!r}") from None
    if address.version == 6 and address.scope_id:
        raise ProxyHeaderError("PROXY v1 header with a scoped IPv6 address")
    return str(address)


def _v1_port(field: bytes) -> int:
    # Decimal digits only, no sign, no leading zero (but "0" itself).
    if (not field.isdigit() or len(field) > 5 or (field[:1] == b"0" and len(field) > 1)
            or int(field) > 65535):
        raise ProxyHeaderError(f"PROXY v1 header with a bad port {field[:8]!r}")
    return int(field)


# ---- version 2: binary ----------------------------------------------------------------

def _parse_v2(data: bytes) -> Optional[ProxyHeader]:
    if len(data) < V2_FIXED_LENGTH:
        if len(data) > 12:
            _v2_version_and_command(data[12])
        return None
    command = _v2_version_and_command(data[12])
    family, transport = data[13] >> 4, data[13] & 0x0F
    (address_length,) = struct.unpack_from("!H", data, 14)
    length = V2_FIXED_LENGTH + address_length
    if length > V2_MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes; at most "
                               f"{V2_MAX_LENGTH} are accepted")
    if family not in V2_ADDRESS_LENGTH:
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")
    if transport not in (V2_TRANSPORT_UNSPEC, V2_TRANSPORT_STREAM):
        raise ProxyHeaderError("PROXY v2 header for a datagram (or unknown) transport on a "
                               "stream server")
    if len(data) < length:
        return None
    block = data[V2_FIXED_LENGTH:length]
    if command == V2_COMMAND_LOCAL:
        # The balancer's own connection (a health check): no address to use, even if
        # the block has one; the connection's peer stands.
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, length)
    needed = V2_ADDRESS_LENGTH[family]
    if address_length < needed:
        raise ProxyHeaderError(f"PROXY v2 header with {address_length} bytes for addresses "
                               f"that take {needed}")
    _check_tlvs(block[needed:])
    if family == V2_FAMILY_UNSPEC or transport == V2_TRANSPORT_UNSPEC:
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, length)
    if family in V2_IP_LAYOUTS:
        layout, address_type, name = V2_IP_LAYOUTS[family]
        source_ip, destination_ip, source_port, destination_port = struct.unpack_from(
            layout, block)
        return ProxyHeader(2, "PROXY", name, (str(address_type(source_ip)), source_port),
                           (str(address_type(destination_ip)), destination_port), length)
    source = (_unix_path(block[:V2_UNIX_PATH_LENGTH]), 0)
    destination = (_unix_path(block[V2_UNIX_PATH_LENGTH:2 * V2_UNIX_PATH_LENGTH]), 0)
    return ProxyHeader(2, "PROXY", "UNIX", source, destination, length)


def _v2_version_and_command(byte: int) -> int:
    if byte >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 signature with version {byte >> 4}, not 2")
    command = byte & 0x0F
    if command not in (V2_COMMAND_LOCAL, V2_COMMAND_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    return command


def _check_tlvs(tlvs: bytes) -> None:
    """The TLVs after the addresses (type, 16-bit length, value) must fill their space
    exactly; their contents are not used."""
    offset = 0
    while offset < len(tlvs):
        if offset + 3 > len(tlvs):
            raise ProxyHeaderError("PROXY v2 header with a truncated TLV")
        (value_length,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += 3 + value_length
        if offset > len(tlvs):
            raise ProxyHeaderError("PROXY v2 header with a TLV longer than the header")


def _unix_path(field: bytes) -> str:
    return os.fsdecode(field.split(b"\0", 1)[0])
