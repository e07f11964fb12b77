"""Pure policy: the arch table per firmware, client classification, boot choice (no loops) and
RFC 2131 4.1 reply destinations, all as named tables."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from test_dhcp_samples import http_boot_discover, ipxe_discover, message, ovmf_pxe_discover, tlv

from bootforge.netboot.boot.arch import ARCHES, Firmware, arch_from_vendor_class, lookup_arch
from bootforge.netboot.dhcp import (
    BootDecision,
    DhcpPacket,
    MessageType,
    choose_boot,
    classify,
    is_netboot_client,
    parse,
    reply_destination,
)

TFTP = IPv4Address("10.213.0.1")
HTTP = "http://10.213.0.1:8080/boot/"
SCRIPT = "http://10.213.0.1:8080/ipxe/{mac}"


def boot(data: bytes) -> BootDecision | None:
    client = classify(parse(data), None, "eth0")
    return choose_boot(client, tftp_server=TFTP, http_base=HTTP, ipxe_script_url=SCRIPT)


@pytest.mark.parametrize(
    ("code", "name", "firmware", "http", "loader"),
    [
        pytest.param(0, "x86-bios", Firmware.BIOS, False, "undionly.kpxe", id="bios"),
        pytest.param(6, "ia32-uefi", Firmware.UEFI, False, "ipxe-i386.efi", id="uefi-ia32"),
        pytest.param(7, "x64-uefi", Firmware.UEFI, False, "ipxe.efi", id="uefi-x64"),
        pytest.param(9, "x64-uefi-legacy9", Firmware.UEFI, False, "ipxe.efi", id="uefi-x64-as-9"),
        pytest.param(11, "arm64-uefi", Firmware.UEFI, False, "ipxe-arm64.efi", id="uefi-arm64"),
        pytest.param(16, "x64-uefi-http", Firmware.UEFI, True, "ipxe.efi", id="http-x64"),
        pytest.param(19, "arm64-uefi-http", Firmware.UEFI, True, "ipxe-arm64.efi", id="http-arm64"),
    ],
)
def test_arch_table(code: int, name: str, firmware: Firmware, http: bool, loader: str) -> None:
    arch = lookup_arch(code)
    assert arch is not None
    assert (arch.name, arch.firmware, arch.http, arch.loader) == (name, firmware, http, loader)


def test_arch_table_keys_match_rows_and_deprecated_codes_are_absent() -> None:
    assert all(code == arch.code for code, arch in ARCHES.items())
    assert all(lookup_arch(code) is None for code in (1, 2, 3, 4, 5, 8))


def test_arch_from_vendor_class() -> None:
    assert arch_from_vendor_class(b"PXEClient:Arch:00007:UNDI:003000") == 7
    assert arch_from_vendor_class(b"HTTPClient:Arch:00016") == 16
    assert arch_from_vendor_class(b"PXEClient") is None
    assert arch_from_vendor_class(b"lab-agent") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(ovmf_pxe_discover(), BootDecision("ipxe.efi", TFTP), id="ovmf-pxe-x64"),
        pytest.param(
            message(
                [tlv(53, b"\x01"), tlv(93, b"\x00\x00"), tlv(60, b"PXEClient:Arch:00000:UNDI:002001")], xid=1
            ),
            BootDecision("undionly.kpxe", TFTP),
            id="bios-pxe-rom",
        ),
        pytest.param(
            message([tlv(53, b"\x01"), tlv(60, b"PXEClient:Arch:00011:UNDI:003000")], xid=1),
            BootDecision("ipxe-arm64.efi", TFTP),
            id="arm64-without-opt93",
        ),
        pytest.param(
            http_boot_discover(16),
            BootDecision("http://10.213.0.1:8080/boot/ipxe.efi"),
            id="uefi-http-x64",
        ),
        pytest.param(
            http_boot_discover(19),
            BootDecision("http://10.213.0.1:8080/boot/ipxe-arm64.efi"),
            id="uefi-http-arm64",
        ),
        pytest.param(
            ipxe_discover(7),
            BootDecision("http://10.213.0.1:8080/ipxe/52:54:00:12:34:56"),
            id="ipxe-on-uefi-gets-script",
        ),
        pytest.param(
            ipxe_discover(0, "002001"),
            BootDecision("http://10.213.0.1:8080/ipxe/52:54:00:12:34:56"),
            id="ipxe-rom-on-seabios-gets-script",
        ),
        pytest.param(message([tlv(53, b"\x01"), tlv(93, b"\x00\x0c")], xid=1), None, id="ppc-no-loader"),
        pytest.param(message([tlv(53, b"\x01"), tlv(93, b"\x00\x63")], xid=1), None, id="unknown-arch"),
    ],
)
def test_choose_boot(data: bytes, expected: BootDecision | None) -> None:
    assert boot(data) == expected


def test_rfc3004_ipxe_user_class_is_recognised_too() -> None:
    data = message([tlv(53, b"\x01"), tlv(93, b"\x00\x07"), tlv(77, b"\x04iPXE")], xid=1)
    assert classify(parse(data), None, "eth0").ipxe


def test_classify_ovmf() -> None:
    client = classify(parse(ovmf_pxe_discover()), None, "eth0")
    assert (client.pxe, client.http_boot, client.ipxe) == (True, False, False)
    assert client.arch is not None and client.arch.name == "x64-uefi"
    assert client.guid_raw == bytes(17) and client.uuid is None
    assert client.mac == "52:54:00:12:34:56"


def test_malformed_guid_is_not_echoed() -> None:
    data = message([tlv(53, b"\x01"), tlv(93, b"\x00\x07"), tlv(97, b"\x00" * 5)], xid=1)
    client = classify(parse(data), None, "eth0")
    assert client.guid_raw is None and client.uuid is None


@pytest.mark.parametrize(
    ("data", "netboot"),
    [
        pytest.param(ovmf_pxe_discover(), True, id="pxe"),
        pytest.param(http_boot_discover(), True, id="http-boot"),
        pytest.param(ipxe_discover(), True, id="ipxe"),
        pytest.param(message([tlv(53, b"\x01"), tlv(60, b"lab-agent")], xid=1), False, id="udhcpc"),
        pytest.param(message([tlv(53, b"\x01")], xid=1), False, id="plain"),
    ],
)
def test_is_netboot_client(data: bytes, netboot: bool) -> None:
    assert is_netboot_client(parse(data)) is netboot


REQ = DhcpPacket(1, 1, b"\x52\x54\x00\x00\x00\x01", options={53: b"\x03"})
RELAY = bytes([10, 213, 1, 1])
CLIENT = bytes([10, 213, 0, 50])


@pytest.mark.parametrize(
    ("request_", "reply_type", "destination"),
    [
        pytest.param(replace(REQ, giaddr=RELAY), MessageType.ACK, ("10.213.1.1", 67),
                     id="relayed-to-giaddr-port-67"),
        pytest.param(replace(REQ, giaddr=RELAY), MessageType.NAK, ("10.213.1.1", 67),
                     id="relayed-nak-to-giaddr"),
        pytest.param(replace(REQ, ciaddr=CLIENT), MessageType.NAK, ("255.255.255.255", 68),
                     id="nak-always-broadcast"),
        pytest.param(replace(REQ, ciaddr=CLIENT), MessageType.ACK, ("10.213.0.50", 68),
                     id="renewing-unicast-to-ciaddr"),
        pytest.param(replace(REQ, flags=0x8000), MessageType.OFFER, ("255.255.255.255", 68),
                     id="broadcast-flag"),
        pytest.param(REQ, MessageType.OFFER, ("255.255.255.255", 68),
                     id="no-address-no-arp-so-broadcast"),
    ],
)  # fmt: skip
def test_reply_destination(
    request_: DhcpPacket, reply_type: MessageType, destination: tuple[str, int]
) -> None:
    dest = reply_destination(request_, reply_type)
    assert (dest.address, dest.port) == destination
