"""TFTP codecs and option negotiation: round trips, hostile bytes, RFC 2347 option rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.netboot.tftp import (
    Ack,
    Data,
    Error,
    MalformedPacket,
    OAck,
    Opcode,
    Packet,
    Request,
    encode_packet,
    negotiate,
    parse_packet,
)

# Wire strings: anything but NUL; surrogates only as produced by surrogateescape (raw bytes).
wire_text = (
    st.binary(max_size=40)
    .filter(lambda b: b"\0" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)
nonempty_text = wire_text.filter(bool)
option_names = nonempty_text.map(str.lower).filter(lambda s: s == s.lower())
options = st.dictionaries(option_names, wire_text, max_size=5)
u16 = st.integers(0, 0xFFFF)

packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(
        Request,
        st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
        nonempty_text,
        st.sampled_from(["octet", "netascii", "mail"]),
        options,
    ),
    st.builds(Data, u16, st.binary(max_size=1500)),
    st.builds(Ack, u16),
    st.builds(Error, u16, wire_text),
    st.builds(OAck, st.dictionaries(option_names, wire_text, min_size=1, max_size=5)),
)


@given(packets)
def test_parse_inverts_encode(packet: Packet) -> None:
    assert parse_packet(encode_packet(packet)) == packet


@given(packets)
def test_encode_inverts_parse_on_the_wire(packet: Packet) -> None:
    wire = encode_packet(packet)
    assert encode_packet(parse_packet(wire)) == wire


@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_malformed(data: bytes) -> None:
    try:
        packet = parse_packet(data)
    except MalformedPacket:
        return
    # Whatever parsed must encode again without error.
    encode_packet(packet)


@given(packets, st.data())
def test_truncated_packets_parse_or_raise_malformed(packet: Packet, data: st.DataObject) -> None:
    wire = encode_packet(packet)
    cut = data.draw(st.integers(0, len(wire)))
    try:
        parsed = parse_packet(wire[:cut])
    except MalformedPacket:
        return
    encode_packet(parsed)


def test_request_option_names_are_case_insensitive() -> None:
    wire = b"\0\x01pxelinux.0\0OCTET\0BlkSize\x001468\0TSIZE\x000\0"
    assert parse_packet(wire) == Request(Opcode.RRQ, "pxelinux.0", "octet", {"blksize": "1468", "tsize": "0"})


@pytest.mark.parametrize(
    "wire",
    [
        b"\0\x01file\0octet",  # missing final NUL
        b"\0\x01\0octet\0",  # empty filename
        b"\0\x01file\0octet\0blksize\0",  # option without value
        b"\0\x04\0\x01\0",  # ACK with a trailing byte
        b"\0\x09\0\0",  # unknown opcode
        b"\0\x05\0",  # short ERROR
    ],
)
def test_malformed_examples(wire: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_packet(wire)


def test_error_without_terminator_keeps_code_and_message() -> None:
    assert parse_packet(b"\0\x05\0\x08User aborted") == Error(8, "User aborted")


LIMITS = {"max_blksize": 1468, "max_windowsize": 64}


def test_no_options_means_no_oack() -> None:
    agreed = negotiate({}, 1000, **LIMITS)
    assert agreed.oack == {}
    assert (agreed.blksize, agreed.windowsize) == (512, 1)


def test_ovmf_request_is_answered_with_exactly_its_options() -> None:
    agreed = negotiate({"tsize": "0", "blksize": "1468", "windowsize": "4"}, 4242, **LIMITS)
    assert agreed.oack == {"tsize": "4242", "blksize": "1468", "windowsize": "4"}
    assert (agreed.blksize, agreed.windowsize) == (1468, 4)


def test_blksize_and_windowsize_are_capped() -> None:
    agreed = negotiate({"blksize": "65464", "windowsize": "1000"}, 1, **LIMITS)
    assert agreed.oack == {"blksize": "1468", "windowsize": "64"}


@pytest.mark.parametrize(
    "opts",
    [
        {"blksize": "7"},
        {"blksize": "x"},
        {"blksize": "+512"},
        {"windowsize": "0"},
        {"timeout": "0"},
        {"timeout": "256"},
        {"multicast": ""},
        {"utimeout": "1000"},
    ],
)
def test_unacceptable_options_are_left_out(opts: dict[str, str]) -> None:
    assert negotiate(opts, 1, **LIMITS).oack == {}


def test_timeout_option_is_echoed_and_used() -> None:
    agreed = negotiate({"timeout": "3"}, 1, **LIMITS)
    assert agreed.oack == {"timeout": "3"}
    assert agreed.timeout == 3.0


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6), st.integers(0))
def test_oack_only_ever_holds_requested_options(opts: dict[str, str], size: int) -> None:
    agreed = negotiate(opts, size, **LIMITS)
    assert set(agreed.oack) <= set(opts)
    assert 8 <= agreed.blksize <= 1468
    assert 1 <= agreed.windowsize <= 64
