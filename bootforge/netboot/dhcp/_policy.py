"""Pure decisions about one request: what kind of client sent it and where the reply goes.

Nothing here keeps state. `classify` turns the options a netboot client sends into a
`ClientInfo`; `reply_destination` is RFC 2131 section 4.1 as a function.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address

from bootforge.netboot.boot.arch import Arch, arch_from_vendor_class, lookup_arch

from ._options import (
    DhcpParseError,
    MessageType,
    Opt,
    RelayAgentInfo,
    decode_client_arch,
    decode_guid,
    decode_user_class,
)
from ._packet import ZERO4, DhcpPacket

__all__ = [
    "BROADCAST",
    "ClientInfo",
    "Destination",
    "classify",
    "is_netboot_client",
    "reply_destination",
]

BROADCAST = "255.255.255.255"
CLIENT_PORT = 68
SERVER_PORT = 67


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a boot policy needs to know about the requesting machine."""

    mac: str  # "52:54:00:12:34:56"
    arch_code: int | None
    arch: Arch | None  # None when the code is not in the table
    vendor_class: bytes
    user_classes: tuple[bytes, ...]
    pxe: bool  # option 60 starts with "PXEClient"
    http_boot: bool  # option 60 starts with "HTTPClient" (UEFI HTTP boot)
    ipxe: bool  # iPXE is running: it must get a script URL, never a loader again
    uuid: uuid.UUID | None
    guid_raw: bytes | None  # option 97 as received, echoed in PXE replies
    relay: RelayAgentInfo | None
    interface: str
    # The address that locates the client's link: link selection, giaddr, ciaddr, else the address of
    # the interface it came in on (set by the core; discovery serves unknown machines by it).
    link: IPv4Address | None = None


def is_netboot_client(packet: DhcpPacket) -> bool:
    """PXE and HTTP-boot firmware announce themselves in option 60; iPXE in 77 or 175."""
    options = packet.options
    vendor = options.get(Opt.VENDOR_CLASS, b"")
    return (
        vendor.startswith((b"PXEClient", b"HTTPClient"))
        or Opt.CLIENT_ARCH in options
        or Opt.IPXE_ENCAP in options
    )


def classify(packet: DhcpPacket, relay: RelayAgentInfo | None, interface: str) -> ClientInfo:
    options = packet.options
    vendor = options.get(Opt.VENDOR_CLASS, b"")
    raw_arch = options.get(Opt.CLIENT_ARCH)
    # Option 93 is authoritative; option 60 carries the same code for clients that omit 93.
    arch_code = decode_client_arch(raw_arch)[0] if raw_arch else arch_from_vendor_class(vendor)
    raw_user = options.get(Opt.USER_CLASS)
    user_classes = decode_user_class(raw_user) if raw_user else ()
    guid_raw = options.get(Opt.CLIENT_GUID)
    try:
        client_uuid = decode_guid(guid_raw) if guid_raw is not None else None
    except DhcpParseError:
        # Some ROMs send a malformed 97; Pixiecore accepts them too. Just don't echo it.
        guid_raw, client_uuid = None, None
    return ClientInfo(
        mac=format_mac(packet.chaddr),
        arch_code=arch_code,
        arch=lookup_arch(arch_code) if arch_code is not None else None,
        vendor_class=vendor,
        user_classes=user_classes,
        pxe=vendor.startswith(b"PXEClient"),
        http_boot=vendor.startswith(b"HTTPClient"),
        ipxe=b"iPXE" in user_classes or Opt.IPXE_ENCAP in options,
        uuid=client_uuid,
        guid_raw=guid_raw,
        relay=relay,
        interface=interface,
    )


def format_mac(chaddr: bytes) -> str:
    return chaddr.hex(":")


# Not frozen, like DhcpPacket (_packet.py): built for every datagram or reply.
@dataclass(slots=True)
class Destination:
    address: str
    port: int


def reply_destination(request: DhcpPacket, reply_type: int) -> Destination:
    """RFC 2131 4.1. A client without an address can only receive a unicast if we first add
    an ARP entry for it; like Pixiecore we broadcast instead. Firmware sets the broadcast flag
    anyway, and udhcpc/dhclient listen on raw sockets, so they see either."""
    if request.giaddr != ZERO4:
        return Destination(socket.inet_ntoa(request.giaddr), SERVER_PORT)
    if reply_type == MessageType.NAK:
        return Destination(BROADCAST, CLIENT_PORT)
    if request.ciaddr != ZERO4:
        return Destination(socket.inet_ntoa(request.ciaddr), CLIENT_PORT)
    return Destination(BROADCAST, CLIENT_PORT)
