"""The PROXY protocol v1/v2 header parser (simpletcp.proxyprotocol): every form the
specification allows, every beginning of one (needs more), the bounds (107 bytes for
v1, 4096 for v2), malformed headers, and fuzzing with truncated, oversized and garbage
input (hypothesis)."""
import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simpletcp.proxyprotocol import (V1_MAX_LENGTH, V2_MAX_LENGTH, V2_SIGNATURE, ProxyHeader,
                                     ProxyHeaderError, parse_header)
from support import proxy_v1 as v1, proxy_v2 as v2, proxy_tlv as tlv


# ---- the parser --------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (v1(), ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.7", 51000), ("198.51.100.1", 443), 45)),
    (v1(("2001:db8::7", 1), ("2001:db8::1", 65535)),
     ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::7", 1), ("2001:db8::1", 65535), 44)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 15)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
     ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 35)),
    (v2(), ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.7", 51000), ("198.51.100.1", 443), 28)),
    (v2(("2001:db8::7", 2), ("2001:db8::1", 3)),
     ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::7", 2), ("2001:db8::1", 3), 52)),
    (v2(("/run/client.sock", 0), ("/run/app.sock", 0), family=3),
     ProxyHeader(2, "PROXY", "UNIX", ("/run/client.sock", 0), ("/run/app.sock", 0), 232)),
    (v2(command=0), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 28)),
    (v2(command=0, addresses=b"", family=0, transport=0),
     ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 16)),
    (v2(addresses=b"", family=0, transport=0), ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 16)),
    (v2(tlvs=tlv(0x05, b"unique-id") + tlv(0x04, b"") + tlv(0x20, b"\x01" * 40)),
     ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.7", 51000), ("198.51.100.1", 443), 86)),
])
def test_headers_are_parsed_and_what_follows_is_not_taken(header, expected):
    assert parse_header(header) == expected
    assert parse_header(header + b"GET / HTTP/1.1\r\n") == expected
    assert expected.length == len(header)


@pytest.mark.parametrize("header", [v1(), v2(), b"PROXY UNKNOWN\r\n",
                                    v2(("2001:db8::7", 2), ("2001:db8::1", 3))])
def test_every_beginning_of_a_header_needs_more(header):
    for cut in range(len(header)):
        assert parse_header(header[:cut]) is None, cut


def test_a_v1_header_may_take_107_bytes_and_no_more():
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(longest) == V1_MAX_LENGTH
    assert parse_header(longest).length == V1_MAX_LENGTH
    with pytest.raises(ProxyHeaderError, match="without CRLF in its first 107 bytes"):
        parse_header(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n")
    with pytest.raises(ProxyHeaderError, match="without CRLF"):
        parse_header(b"PROXY TCP4 " + b"1" * 200)


def test_an_oversized_v2_header_is_refused_from_its_first_16_bytes():
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH - 16 + 1)
    with pytest.raises(ProxyHeaderError, match="at most 4096"):
        parse_header(fixed)
    largest = v2(tlvs=tlv(0x04, b"\0" * (V2_MAX_LENGTH - 16 - 12 - 3)))
    assert len(largest) == V2_MAX_LENGTH
    assert parse_header(largest).length == V2_MAX_LENGTH


@pytest.mark.parametrize("data, words", [
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "fields"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "fields"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare CR or LF"),
    (b"PROXY UNKNOWN \r\r\n", "bare CR or LF"),  # as its first 16 bytes are
    (b"PROXY UNKNOWN \n\r\n", "bare CR or LF"),
    (b"PROXY\r\n", "not a PROXY protocol header"),
    (b"PROXY \r\n", "protocol b''"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c", "version 1, not 2"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c", "unknown command 2"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "unknown address family 4"),
    (V2_SIGNATURE + b"\x21\x12\x00\x0c", "datagram"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, "take 12"),
    (v2(tlvs=b"\x05\x00"), "truncated TLV"),
    (v2(tlvs=b"\x05\x00\x09abc"), "TLV longer than the header"),
])
def test_malformed_headers_are_refused(data, words):
    with pytest.raises(ProxyHeaderError, match=words):
        parse_header(data)


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=5).map(
    lambda items: b"".join(tlv(kind, value) for kind, value in items))


# Every fuzz test runs without hypothesis's deadline (200 ms per example, wall-clock), as
# test_property.py's do: they check the parser's verdicts, not its speed, and a busy
# machine that stops the process for 0.3 s failed one ("Unreliable test timings").
@st.composite
def headers(draw):
    """A valid header and the source it names."""
    source = draw(addresses)
    destination = draw(addresses.filter(lambda a: (":" in a[0]) == (":" in source[0])))
    if draw(st.booleans()):
        return v1(source, destination), source
    return v2(source, destination, tlvs=draw(tlvs)), source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), st.binary(max_size=64), st.data())
def test_fuzz_valid_headers_truncated_anywhere(header_and_source, tail, data):
    header, source = header_and_source
    parsed = parse_header(header + tail)
    assert parsed.length == len(header)
    assert parsed.source == (str(ipaddress.ip_address(source[0])), source[1])
    cut = data.draw(st.integers(0, len(header) - 1))
    assert parse_header(header[:cut]) is None


def decided(data):
    """What parse_header says of ``data``: a header, None (needs more) or "refused"."""
    try:
        return parse_header(data)
    except ProxyHeaderError:
        return "refused"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                        V2_SIGNATURE + b"\x21\x11", v1()[:-3], v2()[:-2], v1(), v2()]),
       st.binary(max_size=80) | st.lists(st.sampled_from(
           [b"\r", b"\n", b" ", b"\r\n", b"1", b".", b":", b"1.2.3.4", b"::1", b"TCP4"]),
           max_size=16).map(b"".join))
@example(b"PROXY UNKNOWN", b" \r\r\n")  # refused cut before its end, taken whole (fixed)
def test_fuzz_the_verdict_does_not_depend_on_how_the_bytes_were_cut(prefix, rest):
    """The server parses what it has read so far after every read, and goes by the first
    verdict that is not "needs more": that must be the verdict on all the bytes."""
    data = prefix + rest
    whole = decided(data)
    first = next((verdict for verdict in map(decided, (data[:cut] for cut in
                                                        range(len(data) + 1)))
                  if verdict is not None), None)
    assert first == whole


def assert_refused_or_bounded(data):
    """Whatever the bytes: a header, needs-more or ProxyHeaderError, never another
    exception; and needs-more only while short of the bounds (no unbounded buffering)."""
    try:
        parsed = parse_header(data)
    except ProxyHeaderError:
        return
    if parsed is None:
        assert len(data) < V2_MAX_LENGTH
        if not data.startswith(V2_SIGNATURE[:len(data)]):
            assert len(data) < V1_MAX_LENGTH
    else:
        assert 0 < parsed.length <= min(len(data), V2_MAX_LENGTH)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=V2_MAX_LENGTH + 200))
def test_fuzz_garbage_is_refused_or_bounded(data):
    assert_refused_or_bounded(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE,
                        V2_SIGNATURE + b"\x21\x11", V2_SIGNATURE + b"\x21\x21\x00\x24"]),
       st.binary(max_size=300))
def test_fuzz_garbage_after_a_valid_beginning(prefix, rest):
    assert_refused_or_bounded(prefix + rest)


@settings(max_examples=200, deadline=None)
@given(st.integers(V2_MAX_LENGTH - 16 + 1, 65535), st.integers(0, 255), st.integers(0, 255))
def test_fuzz_oversized_v2_lengths_are_refused_at_once(length, version_command, family):
    fixed = V2_SIGNATURE + bytes([version_command, family]) + struct.pack("!H", length)
    with pytest.raises(ProxyHeaderError):
        parse_header(fixed)
