"""Who a DHCPv6 client is and what it boots: the v4 boot vocabulary (arch table, `NoBootFile`,
`Reservations` keyed by MAC) applied to DHCPv6's options.

DHCPv6 has no chaddr. The MAC comes from the client's DUID when it is a DUID-LL or DUID-LLT of an
Ethernet address, else from the Client Link-Layer Address option (79) a relay adds (RFC 6939). A
DUID-UUID or DUID-EN client that is not relayed has no MAC: it is an unknown client.

The boot file is a URL in both cases (option 59, RFC 5970): `tftp://[addr]/loader` for PXE firmware,
`http://...` for UEFI HTTP boot, and the iPXE script URL once iPXE runs (never a loader again: that
is the endless chainload).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Protocol

from bootforge.netboot.boot.arch import Arch, arch_from_vendor_class, lookup_arch
from bootforge.netboot.dhcp import LOADER_MISSING, NoBootFile

from ._codec import (
    Dhcp6ParseError,
    Duid,
    Message,
    Opt6,
    decode_client_arch,
    decode_string_list,
    decode_vendor_class,
)

__all__ = ["Boot6Source", "Client6Info", "StaticBoot6Source", "choose_boot6", "classify6", "is_netboot6"]


@dataclass(frozen=True, slots=True)
class Client6Info:
    mac: str | None  # "52:54:00:12:34:56"; None when neither DUID nor relay names one
    duid: Duid
    arch_code: int | None
    arch: Arch | None
    vendor_classes: tuple[bytes, ...]
    user_classes: tuple[bytes, ...]
    pxe: bool  # vendor class data starts with "PXEClient"
    http_boot: bool  # ... with "HTTPClient"
    ipxe: bool  # user class "iPXE"
    interface: str


def is_netboot6(message: Message) -> bool:
    """Option 61 is sent by PXE and HTTP-boot firmware (RFC 5970); iPXE says so in its user class."""
    if message.get(Opt6.CLIENT_ARCH_TYPE) is not None:
        return True
    try:
        return b"iPXE" in _user_classes(message) or any(
            v.startswith((b"PXEClient", b"HTTPClient")) for v in _vendor_classes(message)
        )
    except Dhcp6ParseError:
        return False


def _vendor_classes(message: Message) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for value in message.all(Opt6.VENDOR_CLASS):
        out.extend(decode_vendor_class(value).data)
    return tuple(out)


def _user_classes(message: Message) -> tuple[bytes, ...]:
    value = message.get(Opt6.USER_CLASS)
    return decode_string_list(value) if value is not None else ()


def classify6(message: Message, duid: Duid, mac: str | None, interface: str) -> Client6Info:
    """Raises Dhcp6ParseError when option 61, 15 or 16 is malformed."""
    vendor = _vendor_classes(message)
    users = _user_classes(message)
    raw_arch = message.get(Opt6.CLIENT_ARCH_TYPE)
    arch_code: int | None = decode_client_arch(raw_arch)[0] if raw_arch is not None else None
    if arch_code is None:
        for data in vendor:
            arch_code = arch_from_vendor_class(data)
            if arch_code is not None:
                break
    return Client6Info(
        mac=mac,
        duid=duid,
        arch_code=arch_code,
        arch=lookup_arch(arch_code) if arch_code is not None else None,
        vendor_classes=vendor,
        user_classes=users,
        pxe=any(v.startswith(b"PXEClient") for v in vendor),
        http_boot=any(v.startswith(b"HTTPClient") for v in vendor),
        ipxe=b"iPXE" in users,
        interface=interface,
    )


class Boot6Source(Protocol):
    def boot_for(self, client: Client6Info, node_id: str | None) -> str | NoBootFile | None:
        """A boot file URL; None: nothing to boot; NoBootFile: nothing, counted and told."""
        ...


def choose_boot6(
    client: Client6Info,
    *,
    tftp_address: IPv6Address,
    http_base: str,
    ipxe_script_url: str,
    missing: Callable[[str], str | None] | None = None,
) -> str | NoBootFile | None:
    """The v4 chain (`bootforge.netboot.dhcp.choose_boot`) with URLs: firmware gets iPXE by TFTP or
    HTTP, iPXE gets its script by HTTP."""
    if client.ipxe:
        return ipxe_script_url.format(mac=client.mac or "")
    arch = client.arch
    if arch is None or arch.loader is None:
        return None
    how = missing(arch.loader) if missing is not None else None
    if how is not None:
        return NoBootFile(
            LOADER_MISSING,
            f"no boot file offered to this {arch.name} client (DHCPv6 architecture 0x{arch.code:02x}): "
            f"its boot loader {arch.loader} is missing; {how}",
        )
    if client.http_boot or arch.http:
        return f"{http_base.rstrip('/')}/{arch.loader}"
    return f"tftp://[{tftp_address}]/{arch.loader}"


@dataclass(frozen=True)
class StaticBoot6Source:
    """`choose_boot6` for every client, or only for `macs` when given."""

    tftp_address: IPv6Address
    http_base: str  # "http://[fd00::1]:8080/boot"
    ipxe_script_url: str  # may contain "{mac}"
    macs: frozenset[str] | None = None
    missing_loaders: Mapping[str, str] | None = None

    def boot_for(self, client: Client6Info, node_id: str | None) -> str | NoBootFile | None:
        if self.macs is not None and client.mac not in self.macs:
            return None
        return choose_boot6(
            client,
            tftp_address=self.tftp_address,
            http_base=self.http_base,
            ipxe_script_url=self.ipxe_script_url,
            missing=self.missing_loaders.get if self.missing_loaders is not None else None,
        )
