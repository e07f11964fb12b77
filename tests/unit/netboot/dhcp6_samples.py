"""DHCPv6 client messages: three captured from ISC dhclient, the rest assembled byte by byte.

The assembled ones are not captures: each is written out from the client's own option list, in
its order. OVMF's PXE and HTTP-boot SOLICITs follow EDK2 (NetworkPkg UefiPxeBcDxe / HttpBootDxe:
ORO asking for 59/60/23/24, a DUID-UUID client id when SMBIOS has a UUID, one IA_NA with zero
T1/T2, elapsed time, option 61, option 62 (UNDI 3.16), vendor class with enterprise 343 and
"PXEClient:Arch:00007:UNDI:003016").
dhclient -6 sends a DUID-LLT, elapsed time, ORO and an IA_NA; iPXE adds user class "iPXE". The
relayed one wraps OVMF's SOLICIT in a RELAY-FORW with an Interface-ID and RFC 6939 option 79, as a
relay implementing RFC 6939 sends it (ISC dhcrelay 4.4, as started in
tests/integration/test_dhcp6_dhclient.py, adds no option 79). Helpers return bytes; none uses the
codec under test.
"""

from __future__ import annotations

import struct

MAC = bytes.fromhex("525400123456")
UNKNOWN_MAC = bytes.fromhex("5254000000ff")
SMBIOS_UUID = bytes.fromhex("8c2b6d5f1a2e4f7a9b3c0d1e2f304152")
SERVER_DUID = bytes.fromhex("00030001") + bytes.fromhex("020000000001")  # DUID-LL of the server
LINK_LOCAL = bytes.fromhex("fe80000000000000505400fffe123456")
RELAY_LINK = bytes.fromhex("fd00000000000001" + "0000000000000001")  # a global address of the relay's link


def opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def header(msg_type: int, xid: int) -> bytes:
    return bytes((msg_type,)) + xid.to_bytes(3, "big")


def strings(*entries: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(e)) + e for e in entries)


def duid_uuid(uuid: bytes = SMBIOS_UUID) -> bytes:
    return b"\x00\x04" + uuid


def duid_llt(mac: bytes = MAC, time: int = 0x2B6C_1A00) -> bytes:
    return struct.pack("!HHI", 1, 1, time) + mac


def duid_ll(mac: bytes = MAC) -> bytes:
    return struct.pack("!HH", 3, 1) + mac


def ia_na(iaid: int, *addresses: bytes, t1: int = 0, t2: int = 0) -> bytes:
    inner = b"".join(opt(5, a + struct.pack("!II", 0, 0)) for a in addresses)
    return opt(3, struct.pack("!III", iaid, t1, t2) + inner)


def ovmf_solicit(arch: int = 7, duid: bytes | None = None, xid: int = 0x3A1F02) -> bytes:
    http = arch in (0x0F, 0x10, 0x13)
    kind = b"HTTPClient" if http else b"PXEClient"
    vendor = kind + b":Arch:%05d:UNDI:003016" % arch
    return (
        header(1, xid)
        + opt(6, struct.pack("!4H", 59, 60, 23, 24))
        + opt(1, duid if duid is not None else duid_uuid())
        + ia_na(0x5400_3456)
        + opt(8, b"\x00\x00")
        + opt(61, struct.pack("!H", arch))
        + opt(62, b"\x01\x03\x10")
        + opt(16, struct.pack("!I", 343) + strings(vendor))
    )


def ovmf_request(
    address: bytes, server_duid: bytes = SERVER_DUID, arch: int = 7, xid: int = 0x3A1F03
) -> bytes:
    vendor = b"PXEClient:Arch:%05d:UNDI:003016" % arch
    return (
        header(3, xid)
        + opt(6, struct.pack("!4H", 59, 60, 23, 24))
        + opt(1, duid_llt())
        + opt(2, server_duid)
        + ia_na(0x5400_3456, address)
        + opt(8, b"\x00\x64")
        + opt(61, struct.pack("!H", arch))
        + opt(16, struct.pack("!I", 343) + strings(vendor))
    )


def dhclient_solicit(xid: int = 0x9D1C44, rapid: bool = False) -> bytes:
    return (
        header(1, xid)
        + opt(1, duid_llt(UNKNOWN_MAC))
        + (opt(14, b"") if rapid else b"")
        + opt(8, b"\x00\x00")
        + opt(6, struct.pack("!3H", 23, 24, 39))
        + ia_na(0x0000_00FF)
    )


def dhclient_message(
    msg_type: int, address: bytes, server_duid: bytes | None = SERVER_DUID, xid: int = 0x9D1C45
) -> bytes:
    """REQUEST (3), RENEW (5), REBIND (6), RELEASE (8), DECLINE (9) or CONFIRM (4) for `address`."""
    sid = opt(2, server_duid) if server_duid is not None else b""
    return (
        header(msg_type, xid)
        + opt(1, duid_llt(UNKNOWN_MAC))
        + sid
        + opt(8, b"\x00\x00")
        + opt(6, struct.pack("!2H", 23, 24))
        + ia_na(0x0000_00FF, address, t1=1800, t2=2880)
    )


def ipxe_solicit(xid: int = 0x1A2B3C) -> bytes:
    return (
        header(1, xid)
        + opt(1, duid_ll())
        + opt(8, b"\x00\x00")
        + opt(6, struct.pack("!3H", 23, 59, 60))
        + ia_na(0x0000_0001)
        + opt(15, strings(b"iPXE"))
        + opt(61, struct.pack("!H", 7))
    )


def information_request(xid: int = 0x00BEEF, arch: int = 0x10) -> bytes:
    return (
        header(11, xid)
        + opt(1, duid_ll())
        + opt(8, b"\x00\x00")
        + opt(6, struct.pack("!2H", 59, 23))
        + opt(61, struct.pack("!H", arch))
        + opt(16, struct.pack("!I", 343) + strings(b"HTTPClient:Arch:%05d:UNDI:003016" % arch))
    )


def relay_forw(
    inner: bytes, *, hops: int = 0, mac: bytes | None = MAC, interface_id: bytes = b"eth1/7"
) -> bytes:
    options = opt(18, interface_id) + opt(9, inner)
    if mac is not None:
        options += opt(79, b"\x00\x01" + mac)
    return bytes((12, hops)) + RELAY_LINK + LINK_LOCAL + options


# Captured: isc-dhclient-4.4.3-P1 (`dhclient -6 -1`, then `-r`) in a network namespace, its eth0 MAC
# 5e:1c:43:c7:cf:c6, talking to Dhcp6Core (server DUID-LL 02:aa:bb:cc:dd:01) as in
# tests/integration/test_dhcp6_dhclient.py; the bytes each message carried, verbatim.
CAPTURED_MAC = bytes.fromhex("5e1c43c7cfc6")
CAPTURED_SERVER_DUID = bytes.fromhex("0003000102aabbccdd01")
DHCLIENT_SOLICIT = bytes.fromhex(
    "0199d9910001000e0001000132a99d235e1c43c7cfc600060008001700180027001f0008000200000003000c43c7"
    "cfc600000e1000001518"
)
DHCLIENT_REQUEST = bytes.fromhex(
    "031e28330001000e0001000132a99d235e1c43c7cfc60002000a0003000102aabbccdd0100060008001700180027"
    "001f0008000200000003002843c7cfc600000e100000151800050018fd0002130000000000000000000010ba0000"
    "1c2000001d4c"
)
DHCLIENT_RELEASE = bytes.fromhex(
    "082e90ee0001000e0001000132a99d235e1c43c7cfc60002000a0003000102aabbccdd0100060008001700180027"
    "001f0008000200000003002843c7cfc6000000000000000000050018fd0002130000000000000000000010ba0000"
    "000000000000"
)


def for_our_server(captured: bytes) -> bytes:
    """A captured message addressed to SERVER_DUID instead (the two DUIDs have the same length)."""
    return captured.replace(CAPTURED_SERVER_DUID, SERVER_DUID)


def seeds() -> list[tuple[str, bytes]]:
    addr = bytes.fromhex("fd000000000000010000000000001000")
    return [
        ("captured-dhclient-solicit", DHCLIENT_SOLICIT),
        ("captured-dhclient-request", for_our_server(DHCLIENT_REQUEST)),
        ("captured-dhclient-release", for_our_server(DHCLIENT_RELEASE)),
        ("ovmf-pxe-solicit", ovmf_solicit(7, duid_llt())),
        ("ovmf-pxe-solicit-uuid", ovmf_solicit(7)),
        ("ovmf-http-solicit", ovmf_solicit(0x10, duid_ll())),
        ("aavmf-pxe-solicit", ovmf_solicit(0x0B, duid_ll())),
        ("ovmf-request", ovmf_request(addr)),
        ("dhclient-solicit", dhclient_solicit()),
        ("dhclient-solicit-rapid", dhclient_solicit(rapid=True)),
        ("dhclient-request", dhclient_message(3, addr)),
        ("dhclient-renew", dhclient_message(5, addr)),
        ("dhclient-rebind", dhclient_message(6, addr, None)),
        ("dhclient-release", dhclient_message(8, addr)),
        ("dhclient-decline", dhclient_message(9, addr)),
        ("dhclient-confirm", dhclient_message(4, addr, None)),
        ("ipxe-solicit", ipxe_solicit()),
        ("information-request", information_request()),
        ("relayed-solicit", relay_forw(ovmf_solicit(7))),
        ("relayed-twice", relay_forw(relay_forw(ovmf_solicit(7, duid_ll())), hops=1, mac=None)),
    ]
