"""Client messages rebuilt byte by byte from the values captured in the lab (lab-recipe.md §3,
protocols-perf-libs.md §0). They are assembled by hand, not with our encoder, so the codec is
checked against an independent construction."""

from __future__ import annotations

import struct

COOKIE = bytes.fromhex("63825363")
MAC = bytes.fromhex("525400123456")
ZERO_GUID = bytes(17)
# SMBIOS UUID 00112233-4455-6677-8899-aabbccddeeff as OVMF sends it (first 3 fields LE).
OVMF_GUID = bytes.fromhex("0033221100554477668899aabbccddeeff")


def tlv(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def header(
    xid: int, mac: bytes = MAC, *, flags: int = 0x8000, ciaddr: bytes = bytes(4),
    giaddr: bytes = bytes(4), hops: int = 0,
) -> bytes:  # fmt: skip
    return struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", 1, 1, len(mac), hops, xid, 4, flags, ciaddr, bytes(4),
        bytes(4), giaddr, mac, b"", b"",
    ) + COOKIE  # fmt: skip


def message(options: list[bytes], *, pad_to: int = 0, **kw: object) -> bytes:
    data = header(**kw) + b"".join(options) + b"\xff"  # type: ignore[arg-type]
    return data + bytes(max(0, pad_to - len(data)))


def ovmf_pxe_discover(xid: int = 0x0BADCAFE, guid: bytes = ZERO_GUID) -> bytes:
    """OVMF (edk2 2022.11) native PXE: 347 bytes, broadcast flag, no option 61, 57=1472."""
    return message(
        [
            tlv(53, b"\x01"),
            tlv(57, struct.pack("!H", 1472)),
            tlv(
                55,
                bytes(
                    [
                        1,
                        2,
                        3,
                        4,
                        5,
                        6,
                        12,
                        13,
                        15,
                        17,
                        18,
                        22,
                        23,
                        28,
                        40,
                        41,
                        42,
                        43,
                        50,
                        51,
                        54,
                        58,
                        59,
                        60,
                        66,
                        67,
                        97,
                        128,
                        129,
                        130,
                        131,
                        132,
                        133,
                        134,
                        135,
                    ]
                ),
            ),
            tlv(97, guid),
            tlv(94, b"\x01\x03\x00"),
            tlv(93, b"\x00\x07"),
            tlv(60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
        pad_to=347,
        xid=xid,
    )


def ovmf_pxe_request(server: bytes, yiaddr: bytes, xid: int = 0x0BADCAFE) -> bytes:
    """OVMF's REQUEST: note 57=65280, which must not make us build larger replies."""
    return message(
        [
            tlv(53, b"\x03"),
            tlv(54, server),
            tlv(50, yiaddr),
            tlv(57, struct.pack("!H", 65280)),
            tlv(97, ZERO_GUID),
            tlv(94, b"\x01\x03\x00"),
            tlv(93, b"\x00\x07"),
            tlv(60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
        xid=xid,
    )


IPXE_REQUEST_LIST = bytes(
    [1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135,
     175, 203]
)  # fmt: skip
# Bus id and version as captured, then feature flags HTTP, TFTP, DNS, EFI, menu, NFS.
IPXE_FEATURES = bytes.fromhex("b105011af41000eb0301130101150101170101240101270101290101")


def ipxe_discover(arch: int = 7, undi: str = "003010", xid: int = 0x1D1D1D1D) -> bytes:
    """iPXE (snponly.efi on UEFI, or QEMU's iPXE ROM under SeaBIOS with arch 0): raw "iPXE" in
    option 77, option 175 features, option 61."""
    return message(
        [
            tlv(53, b"\x01"),
            tlv(57, struct.pack("!H", 1472)),
            tlv(93, struct.pack("!H", arch)),
            tlv(94, b"\x01\x03\x0a" if arch else b"\x01\x02\x01"),
            tlv(60, f"PXEClient:Arch:{arch:05d}:UNDI:{undi}".encode()),
            tlv(77, b"iPXE"),
            tlv(55, IPXE_REQUEST_LIST),
            tlv(175, IPXE_FEATURES),
            tlv(61, b"\x01" + MAC),
            tlv(97, ZERO_GUID),
        ],
        xid=xid,
    )


def http_boot_discover(arch: int = 16, xid: int = 0x48545450) -> bytes:
    """OVMF UEFI HTTP boot: HTTPClient in option 60, arch 0x10 (x64) or 0x13 (ARM64)."""
    return message(
        [
            tlv(53, b"\x01"),
            tlv(57, struct.pack("!H", 1472)),
            tlv(55, bytes([1, 3, 6, 15, 43, 60, 66, 67])),
            tlv(97, OVMF_GUID),
            tlv(94, b"\x01\x03\x00"),
            tlv(93, struct.pack("!H", arch)),
            tlv(60, f"HTTPClient:Arch:{arch:05d}:UNDI:003000".encode()),
        ],
        xid=xid,
    )


def udhcpc_discover(mac: bytes, xid: int = 0x55DC) -> bytes:
    """busybox udhcpc in the ramdisk: no broadcast flag, vendor class "lab-agent"."""
    return message(
        [tlv(53, b"\x01"), tlv(61, b"\x01" + mac), tlv(60, b"lab-agent"),
         tlv(12, b"node-1"), tlv(55, bytes([1, 3, 6, 12, 15, 28, 42, 51, 54, 58, 59]))],
        mac=mac, flags=0, xid=xid,
    )  # fmt: skip
