"""Codec: golden client messages, option codecs, RFC 3396 split/join and overload, round trips,
and the parse invariant (a DhcpPacket or a DhcpParseError, nothing else)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dhcp_samples import (
    MAC,
    OVMF_GUID,
    http_boot_discover,
    ipxe_discover,
    message,
    ovmf_pxe_discover,
    tlv,
)

from bootforge.netboot.dhcp import (
    MIN_REPLY_SIZE,
    DhcpEncodeError,
    DhcpPacket,
    DhcpParseError,
    MessageType,
    decode_client_arch,
    decode_guid,
    decode_user_class,
    encode,
    encode_relay_agent_info,
    encode_user_class,
    parse,
    parse_relay_agent_info,
)

# -- golden messages ----------------------------------------------------------------------------


def test_ovmf_pxe_discover_parses_to_the_captured_values() -> None:
    data = ovmf_pxe_discover()
    assert len(data) == 347
    p = parse(data)
    assert p.message_type == MessageType.DISCOVER
    assert p.broadcast
    assert p.chaddr == MAC
    assert list(p.options) == [53, 57, 55, 97, 94, 93, 60]
    assert decode_client_arch(p.options[93]) == (7,)
    assert p.options[60] == b"PXEClient:Arch:00007:UNDI:003000"
    assert p.options[94] == b"\x01\x03\x00"
    assert decode_guid(p.options[97]) is None  # QEMU without -smbios uuid: all zero


def test_ovmf_guid_first_three_fields_are_little_endian() -> None:
    assert decode_guid(OVMF_GUID) == uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


def test_ipxe_discover_user_class_is_raw_text() -> None:
    p = parse(ipxe_discover())
    assert p.options[77] == b"iPXE"
    assert decode_user_class(p.options[77]) == (b"iPXE",)
    assert 175 in p.options and p.options[61] == b"\x01" + MAC


def test_http_boot_discover() -> None:
    p = parse(http_boot_discover())
    assert decode_client_arch(p.options[93]) == (16,)
    assert p.options[60].startswith(b"HTTPClient")


# -- option codecs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "entries"),
    [
        pytest.param(b"iPXE", (b"iPXE",), id="ipxe-raw-text"),
        pytest.param(b"\x04iPXE", (b"iPXE",), id="rfc3004-single"),
        pytest.param(b"\x04iPXE\x03foo", (b"iPXE", b"foo"), id="rfc3004-two"),
        pytest.param(b"\x09iPXE", (b"\x09iPXE",), id="length-overruns-so-raw"),
        pytest.param(b"\x00abc", (b"\x00abc",), id="zero-length-entry-so-raw"),
    ],
)
def test_user_class_both_forms(raw: bytes, entries: tuple[bytes, ...]) -> None:
    assert decode_user_class(raw) == entries


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_user_class_rfc3004_round_trip(entries: list[bytes]) -> None:
    assert decode_user_class(encode_user_class(entries)) == tuple(entries)


def test_client_arch_list_and_errors() -> None:
    assert decode_client_arch(b"\x00\x10\x00\x07") == (16, 7)
    for bad in (b"", b"\x00", b"\x00\x07\x00"):
        with pytest.raises(DhcpParseError):
            decode_client_arch(bad)


def test_guid_rejects_wrong_type_or_length() -> None:
    for bad in (bytes(16), b"\x01" + bytes(16), bytes(18)):
        with pytest.raises(DhcpParseError):
            decode_guid(bad)


def test_relay_agent_info_sub_options() -> None:
    raw = encode_relay_agent_info([(1, b"port-7"), (2, b"relay-a"), (5, bytes([10, 213, 9, 0]))])
    info = parse_relay_agent_info(raw)
    assert (info.circuit_id, info.remote_id) == (b"port-7", b"relay-a")
    assert info.link_selection == bytes([10, 213, 9, 0])
    assert info.raw == raw
    with pytest.raises(DhcpParseError):
        parse_relay_agent_info(b"\x01\x05abc")
    with pytest.raises(DhcpParseError):
        parse_relay_agent_info(b"\x05\x03abc")


# -- RFC 3396 and option overload ---------------------------------------------------------------


def test_long_option_is_split_and_joined() -> None:
    value = bytes(range(256)) * 2  # 512 bytes: three instances on the wire
    data = encode(DhcpPacket(1, 7, MAC, options={53: b"\x01", 77: value}))
    assert data.count(bytes((77, 255))) == 2
    assert parse(data).options[77] == value


def test_repeated_option_instances_concatenate_in_order() -> None:
    data = message([tlv(53, b"\x01"), tlv(60, b"PXE"), tlv(12, b"x"), tlv(60, b"Client")], xid=1)
    assert parse(data).options[60] == b"PXEClient"


def test_overloaded_file_and_sname_are_read_after_the_options_field() -> None:
    # Option 60 split across all three areas: options field, then file, then sname.
    head = bytearray(message([tlv(53, b"\x01"), tlv(52, b"\x03"), tlv(60, b"PXE")], xid=3))
    file_area = tlv(60, b"Client") + b"\xff"
    sname_area = tlv(60, b":Arch:00007") + b"\xff"
    head[108 : 108 + len(file_area)] = file_area
    head[44 : 44 + len(sname_area)] = sname_area
    p = parse(bytes(head))
    assert p.options[60] == b"PXEClient:Arch:00007"
    assert 52 not in p.options and p.file == b"" and p.sname == b""


def test_encoder_overloads_when_the_client_limit_requires_it() -> None:
    options = {53: b"\x05", 54: bytes(4)} | {200 + i: bytes([i]) * 60 for i in range(6)}
    packet = DhcpPacket(2, 9, MAC, options=options)
    data = encode(packet, max_size=548)
    assert len(data) <= 548
    assert data[240:].find(bytes((52, 1))) >= 0
    assert parse(data).options == options


def test_encoder_refuses_what_cannot_fit() -> None:
    packet = DhcpPacket(2, 9, MAC, file=b"f", sname=b"s", options={77: bytes(700)})
    with pytest.raises(DhcpEncodeError):
        encode(packet, max_size=548)


def test_short_replies_are_padded_to_300_and_option_82_is_last() -> None:
    data = encode(DhcpPacket(2, 1, MAC, options={82: b"\x01\x01x", 53: b"\x02", 54: bytes(4)}))
    assert len(data) == MIN_REPLY_SIZE
    end = data.index(b"\xff", 240)
    assert data[end - 5 : end] == b"\x52\x03\x01\x01x"


# -- round trips and the parse invariant --------------------------------------------------------

ADDR = st.binary(min_size=4, max_size=4)
NO_TRAILING_NUL = st.binary(max_size=64).map(lambda b: b.rstrip(b"\x00"))
OPTION_CODES = st.integers(1, 254).filter(lambda c: c != 52)
PACKETS = st.builds(
    DhcpPacket,
    op=st.sampled_from([1, 2]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=0, max_size=16),
    htype=st.integers(0, 255),
    hops=st.integers(0, 255),
    secs=st.integers(0, 65535),
    flags=st.integers(0, 65535),
    ciaddr=ADDR,
    yiaddr=ADDR,
    siaddr=ADDR,
    giaddr=ADDR,
    sname=NO_TRAILING_NUL,
    file=st.binary(max_size=128).map(lambda b: b.rstrip(b"\x00")),
    options=st.dictionaries(OPTION_CODES, st.binary(min_size=1, max_size=300), max_size=12),
)


@settings(max_examples=300)
@given(PACKETS)
def test_encode_parse_round_trip(packet: DhcpPacket) -> None:
    try:
        data = encode(packet, max_size=65000)
    except DhcpEncodeError:
        return
    assert len(data) >= MIN_REPLY_SIZE
    assert parse(data) == packet


@settings(max_examples=300)
@given(PACKETS, st.integers(548, 1472))
def test_round_trip_under_a_size_limit(packet: DhcpPacket, limit: int) -> None:
    try:
        data = encode(packet, max_size=limit)
    except DhcpEncodeError:
        return  # more options than fit in every area: refused, never truncated
    assert len(data) <= max(limit, MIN_REPLY_SIZE)
    assert parse(data) == packet


def _parse_or_error(data: bytes) -> None:
    try:
        packet = parse(data)
    except DhcpParseError:
        return
    assert isinstance(packet, DhcpPacket)


@settings(max_examples=500)
@given(st.binary(max_size=700))
def test_random_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    _parse_or_error(data)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=460))
def test_random_option_area_after_a_valid_header(tail: bytes) -> None:
    _parse_or_error(ovmf_pxe_discover()[:240] + tail)


@pytest.mark.parametrize(
    "sample", [ovmf_pxe_discover(), ipxe_discover(), http_boot_discover()], ids=["ovmf", "ipxe", "http"]
)
def test_every_truncation_and_single_byte_flip_is_safe(sample: bytes) -> None:
    for cut in range(len(sample)):
        _parse_or_error(sample[:cut])
    for i in range(236, len(sample)):
        for value in (0x00, 0x34, 0xFF):
            _parse_or_error(sample[:i] + bytes((value,)) + sample[i + 1 :])


def test_short_and_bad_cookie_reasons() -> None:
    with pytest.raises(DhcpParseError) as short:
        parse(b"\x01" * 100)
    assert short.value.reason == "too_short"
    bad = bytearray(ovmf_pxe_discover())
    bad[236] = 0
    with pytest.raises(DhcpParseError) as cookie:
        parse(bytes(bad))
    assert cookie.value.reason == "bad_cookie"
    hlen = bytearray(ovmf_pxe_discover())
    hlen[2] = 17
    with pytest.raises(DhcpParseError):
        parse(bytes(hlen))


def test_bad_overload_value_is_a_parse_error() -> None:
    with pytest.raises(DhcpParseError):
        parse(message([tlv(53, b"\x01"), tlv(52, b"\x07")], xid=1))
