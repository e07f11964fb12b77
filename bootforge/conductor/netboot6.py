"""The conductor's answers to the DHCPv6 server: the `NetbootView`'s known MACs, with URLs on IPv6.

What a machine boots is decided as for DHCPv4 (every known machine gets iPXE, and iPXE its script,
which says what the node boots now), with boot file URLs (option 59) on netboot.address6:
`tftp://[addr]/ipxe.efi` for PXE firmware, `http://[addr]:port/ipxe.efi` for UEFI HTTP boot, the
script URL for iPXE. The per-packet path reads only the view's in-memory maps.

Not offered over IPv6: the Secure Boot chain (shim -> signed GRUB). Debian's signed GRUB reads its
config by TFTP from the address it booted from, and that path is proven on IPv4 only here; such a
node is told so on its timeline instead of being offered an iPXE it would refuse to run.
"""

from __future__ import annotations

from bootforge.conductor.netboot import BootEndpoints6, NetbootView
from bootforge.netboot import dhcp
from bootforge.netboot.dhcp6 import Client6Info, choose_boot6

__all__ = ["SECURE_BOOT_V6", "Netboot6Source"]

SECURE_BOOT_V6 = "secure_boot_over_ipv6"


class Netboot6Source:
    """dhcp6.Boot6Source and dhcp.Reservations over a NetbootView."""

    def __init__(self, view: NetbootView, endpoints: BootEndpoints6) -> None:
        self.view = view
        self.endpoints = endpoints

    def reservation_for(self, mac: str) -> dhcp.Reservation | None:
        return self.view.reservation_for(mac)

    def boot_for(self, client: Client6Info, node_id: str | None) -> str | dhcp.NoBootFile | None:
        known = self.view.by_mac.get(client.mac or "")
        if known is None and node_id is None:
            return None  # unknown machines are not served (as on IPv4)
        secure = self.view.secure_boot_always or (known is not None and known.secure_boot)
        if secure and not client.ipxe:
            return dhcp.NoBootFile(
                SECURE_BOOT_V6,
                "no boot file offered over DHCPv6 to this Secure Boot node: the signed chain "
                "(shim -> GRUB) is offered over IPv4 only; boot it over IPv4 (DHCPv4 on its port)",
            )
        e = self.endpoints
        return choose_boot6(
            client,
            tftp_address=e.tftp_server,
            http_base=e.http_base,
            ipxe_script_url=e.ipxe_script_url,
            missing=self.view.missing_loaders.get,
        )
