"""DHCPv6 codec: encode -> parse is the identity (hypothesis), real client messages decode as what
their clients meant, and every malformed option is left out and named."""

from __future__ import annotations

import struct

import pytest
from dhcp6_samples import (
    CAPTURED_MAC,
    CAPTURED_SERVER_DUID,
    DHCLIENT_RELEASE,
    DHCLIENT_REQUEST,
    DHCLIENT_SOLICIT,
    MAC,
    SMBIOS_UUID,
    dhclient_solicit,
    duid_llt,
    information_request,
    ipxe_solicit,
    opt,
    ovmf_solicit,
    relay_forw,
)
from hypothesis import given
from hypothesis import strategies as st

from bootforge.netboot import dhcp6
from bootforge.netboot.dhcp6 import Opt6

# Options whose length rules the parser enforces get valid values; others any bytes.
_VALID: dict[int, st.SearchStrategy[bytes]] = {
    Opt6.CLIENTID: st.binary(min_size=4, max_size=130),
    Opt6.SERVERID: st.binary(min_size=4, max_size=130),
    Opt6.ELAPSED_TIME: st.binary(min_size=2, max_size=2),
    Opt6.PREFERENCE: st.binary(min_size=1, max_size=1),
    Opt6.RAPID_COMMIT: st.just(b""),
    Opt6.ORO: st.lists(st.integers(0, 0xFFFF), max_size=8).map(lambda c: struct.pack(f"!{len(c)}H", *c)),
    Opt6.CLIENT_ARCH_TYPE: st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4).map(
        lambda c: struct.pack(f"!{len(c)}H", *c)
    ),
    Opt6.DNS_SERVERS: st.lists(st.binary(min_size=16, max_size=16), max_size=3).map(b"".join),
    Opt6.BOOTFILE_URL: st.text(min_size=1, max_size=60).map(str.encode).filter(lambda b: len(b) <= 1024),
    Opt6.STATUS_CODE: st.binary(min_size=2, max_size=40),
    Opt6.VENDOR_CLASS: st.binary(min_size=4, max_size=40),
    Opt6.INTERFACE_ID: st.binary(min_size=1, max_size=40),
    Opt6.CLIENT_LINKLAYER_ADDR: st.binary(min_size=3, max_size=22),
    Opt6.IA_NA: st.binary(min_size=12, max_size=60),
    Opt6.USER_CLASS: st.binary(max_size=40),
    Opt6.BOOTFILE_PARAM: st.binary(max_size=40),
    Opt6.RELAY_MSG: st.binary(max_size=60),
}


@st.composite
def options(draw: st.DrawFn) -> tuple[tuple[int, bytes], ...]:
    codes = draw(st.lists(st.sampled_from(sorted(_VALID)), max_size=12, unique=True))
    extra = draw(st.lists(st.tuples(st.integers(100, 0xFFFF), st.binary(max_size=30)), max_size=3))
    return tuple((c, draw(_VALID[c])) for c in codes) + tuple(extra)


@given(st.integers(1, 11), st.integers(0, (1 << 24) - 1), options())
def test_message_round_trip(msg_type: int, xid: int, opts: tuple[tuple[int, bytes], ...]) -> None:
    message = dhcp6.Message(msg_type, xid, opts)
    parsed = dhcp6.parse(dhcp6.encode(message))
    assert parsed == message and parsed.defects == ()


@given(st.sampled_from([12, 13]), st.integers(0, 255), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16), options())  # fmt: skip
def test_relay_round_trip(
    msg_type: int, hops: int, link: bytes, peer: bytes, opts: tuple[tuple[int, bytes], ...]
) -> None:
    relay = dhcp6.RelayMessage(msg_type, hops, link, peer, opts)
    assert dhcp6.parse(dhcp6.encode(relay)) == relay


@given(st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))  # fmt: skip
def test_ia_na_and_address_round_trip(
    iaid: int, addr: bytes, t1: int, t2: int, pref: int, valid: int
) -> None:
    address = dhcp6.IaAddress(addr, pref, valid, ((Opt6.STATUS_CODE, dhcp6.encode_status(0, "ok")),))
    ia = dhcp6.IaNa(iaid, t1, t2, ((Opt6.IAADDR, dhcp6.encode_ia_address(address)),))
    back = dhcp6.decode_ia_na(dhcp6.encode_ia_na(ia))
    assert back == ia and back.addresses() == [address]


@given(st.integers(0, 2**32 - 1), st.lists(st.binary(max_size=40), max_size=5))
def test_vendor_and_user_class_round_trip(enterprise: int, data: list[bytes]) -> None:
    vendor = dhcp6.VendorClass(enterprise, tuple(data))
    assert dhcp6.decode_vendor_class(dhcp6.encode_vendor_class(vendor)) == vendor
    assert dhcp6.decode_string_list(dhcp6.encode_string_list(data)) == tuple(data)


@given(st.binary(min_size=6, max_size=6), st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16),
       st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=100))  # fmt: skip
def test_duids_round_trip(mac: bytes, time: int, uuid: bytes, enterprise: int, ident: bytes) -> None:
    assert dhcp6.decode_duid(dhcp6.duid_llt(mac, time)) == dhcp6.Duid(dhcp6.duid_llt(mac, time), 1, mac)
    assert dhcp6.decode_duid(dhcp6.duid_ll(mac)).mac == mac
    assert dhcp6.decode_duid(dhcp6.duid_uuid(uuid)) == dhcp6.Duid(b"\x00\x04" + uuid, 4, None)
    en = dhcp6.duid_en(enterprise, ident)
    assert dhcp6.decode_duid(en) == dhcp6.Duid(en, 2, None)


def test_ovmf_pxe_solicit_decodes_as_ovmf_meant_it() -> None:
    message = dhcp6.parse(ovmf_solicit(7))
    assert isinstance(message, dhcp6.Message)
    assert message.msg_type == dhcp6.MsgType.SOLICIT and message.transaction_id == 0x3A1F02
    assert message.defects == ()
    assert dhcp6.decode_oro(message.get(Opt6.ORO) or b"") == (59, 60, 23, 24)
    duid = dhcp6.decode_duid(message.get(Opt6.CLIENTID) or b"")
    assert duid.duid_type == 4 and duid.raw[2:] == SMBIOS_UUID and duid.mac is None
    assert dhcp6.decode_client_arch(message.get(Opt6.CLIENT_ARCH_TYPE) or b"") == (7,)
    vendor = dhcp6.decode_vendor_class(message.get(Opt6.VENDOR_CLASS) or b"")
    assert vendor == dhcp6.VendorClass(343, (b"PXEClient:Arch:00007:UNDI:003016",))
    (ia,) = [dhcp6.decode_ia_na(v) for v in message.all(Opt6.IA_NA)]
    assert (ia.iaid, ia.t1, ia.t2, ia.addresses()) == (0x54003456, 0, 0, [])


def test_dhclient_ipxe_and_information_request_decode() -> None:
    solicit = dhcp6.parse(dhclient_solicit(rapid=True))
    assert isinstance(solicit, dhcp6.Message) and solicit.get(Opt6.RAPID_COMMIT) == b""
    ipxe = dhcp6.parse(ipxe_solicit())
    assert isinstance(ipxe, dhcp6.Message)
    assert dhcp6.decode_string_list(ipxe.get(Opt6.USER_CLASS) or b"") == (b"iPXE",)
    assert dhcp6.decode_duid(ipxe.get(Opt6.CLIENTID) or b"").mac == MAC
    info = dhcp6.parse(information_request())
    assert isinstance(info, dhcp6.Message) and info.msg_type == dhcp6.MsgType.INFORMATION_REQUEST


def test_relay_forw_keeps_the_client_message_raw() -> None:
    inner = ovmf_solicit(7)
    relay = dhcp6.parse(relay_forw(inner))
    assert isinstance(relay, dhcp6.RelayMessage) and relay.hop_count == 0
    assert relay.get(Opt6.RELAY_MSG) == inner and relay.get(Opt6.INTERFACE_ID) == b"eth1/7"
    assert dhcp6.decode_link_layer(relay.get(Opt6.CLIENT_LINKLAYER_ADDR) or b"") == (1, MAC)


@pytest.mark.parametrize(
    ("extra", "defect"),
    [
        (opt(8, b"\x00"), "bad_length_option"),  # elapsed time is 2 bytes
        (opt(14, b"x"), "bad_length_option"),  # rapid commit is empty
        (opt(61, b"\x00\x07\x00"), "bad_length_option"),
        (opt(1, duid_llt()), "duplicate_option"),  # a second client id
        (b"\x00\x3d\x00\x10\x00\x07", "truncated_option"),  # says 16 bytes, has 2
        (b"\x00\x08\x00", "truncated_option"),  # a header cut short
    ],
)
def test_a_bad_option_is_left_out_and_named(extra: bytes, defect: str) -> None:
    good = dhcp6.parse(ovmf_solicit(7, duid_llt()))
    bad = dhcp6.parse(ovmf_solicit(7, duid_llt()) + extra)
    assert bad.defects == (defect,)
    assert bad == good  # the options that were fine are all still there


def test_sizes_are_bounded() -> None:
    with pytest.raises(dhcp6.Dhcp6ParseError, match="too_long"):
        dhcp6.parse(b"\x01\x00\x00\x01" + opt(200, bytes(dhcp6.MAX_MESSAGE)))
    with pytest.raises(dhcp6.Dhcp6ParseError, match="too_short"):
        dhcp6.parse(b"\x01\x00")
    with pytest.raises(dhcp6.Dhcp6ParseError, match="too_short"):
        dhcp6.parse(b"\x0c\x00" + bytes(20))
    many = dhcp6.parse(b"\x01\x00\x00\x01" + opt(300, b"") * (dhcp6.MAX_OPTIONS + 5))
    assert len(many.options) == dhcp6.MAX_OPTIONS and many.defects == ("too_many_options",)
    with pytest.raises(dhcp6.Dhcp6ParseError, match="bad_duid"):
        dhcp6.decode_duid(b"\x00\x04" + bytes(15))
    with pytest.raises(dhcp6.Dhcp6ParseError):
        dhcp6.decode_string_list(b"\x00\x05abc")
    with pytest.raises(dhcp6.Dhcp6EncodeError):
        dhcp6.encode(dhcp6.Message(1, 1 << 24))


def test_captured_dhclient_messages_decode() -> None:
    solicit = dhcp6.parse(DHCLIENT_SOLICIT)
    assert isinstance(solicit, dhcp6.Message) and solicit.defects == ()
    assert solicit.msg_type == dhcp6.MsgType.SOLICIT and solicit.transaction_id == 0x99D991
    duid = dhcp6.decode_duid(solicit.get(Opt6.CLIENTID) or b"")
    assert duid.duid_type == 1 and duid.mac == CAPTURED_MAC
    assert dhcp6.decode_oro(solicit.get(Opt6.ORO) or b"") == (23, 24, 39, 31)
    (ia,) = [dhcp6.decode_ia_na(v) for v in solicit.all(Opt6.IA_NA)]
    assert (ia.iaid, ia.t1, ia.t2) == (0x43C7CFC6, 3600, 5400)
    request = dhcp6.parse(DHCLIENT_REQUEST)
    assert isinstance(request, dhcp6.Message) and request.get(Opt6.SERVERID) == CAPTURED_SERVER_DUID
    (ia,) = [dhcp6.decode_ia_na(v) for v in request.all(Opt6.IA_NA)]
    (address,) = ia.addresses()
    assert (address.address.hex(), address.preferred, address.valid) == (
        "fd0002130000000000000000000010ba", 7200, 7500)  # fmt: skip
    release = dhcp6.parse(DHCLIENT_RELEASE)
    assert isinstance(release, dhcp6.Message) and release.msg_type == dhcp6.MsgType.RELEASE
    assert dhcp6.encode(release) == DHCLIENT_RELEASE  # and back, byte for byte
