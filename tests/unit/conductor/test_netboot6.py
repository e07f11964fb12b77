"""IPv6 boot answers: DHCPv6 boot URLs with bracketed literals, and boot scripts for a client that
asks over IPv6 naming the IPv6 endpoints and the IPv6 API; the netboot settings for DHCPv6."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from pydantic import ValidationError
from support.service import InProcess
from test_netboot_view import ENDPOINTS, enrol, set_state

from bootforge.conductor.netboot import BootEndpoints6, NetbootView, RamdiskSource
from bootforge.conductor.netboot6 import SECURE_BOOT_V6, Netboot6Source
from bootforge.config import NetbootSettings
from bootforge.netboot import dhcp, dhcp6
from bootforge.netboot.boot.arch import lookup_arch

ENDPOINTS6 = BootEndpoints6(
    IPv6Address("fd00:9::1"), "http://[fd00:9::1]:8080", "http://[fd00:9::1]:8080/boot/ipxe?mac={mac}"
)
MAC = "52:54:00:aa:bb:01"


def client6(arch: int, *, ipxe: bool = False, http: bool = False, mac: str = MAC) -> dhcp6.Client6Info:
    return dhcp6.Client6Info(
        mac=mac,
        duid=dhcp6.Duid(b"\x00\x04" + bytes(16), 4, None),
        arch_code=arch,
        arch=lookup_arch(arch),
        vendor_classes=(b"HTTPClient:Arch:00016",) if http else (b"PXEClient:Arch:00007",),
        user_classes=(b"iPXE",) if ipxe else (),
        pxe=not http,
        http_boot=http,
        ipxe=ipxe,
        interface="br0",
    )


async def test_boot_urls_over_dhcpv6(bf: InProcess) -> None:
    await enrol(bf, MAC)
    view = NetbootView(bf.conductor.db, ENDPOINTS, endpoints6=ENDPOINTS6)
    await view.refresh()
    source = Netboot6Source(view, ENDPOINTS6)
    assert source.boot_for(client6(7), None) == "tftp://[fd00:9::1]/ipxe.efi"
    assert source.boot_for(client6(16, http=True), None) == "http://[fd00:9::1]:8080/ipxe.efi"
    assert source.boot_for(client6(7, ipxe=True), None) == f"http://[fd00:9::1]:8080/boot/ipxe?mac={MAC}"
    assert source.boot_for(client6(7, mac="52:54:00:00:00:99"), None) is None  # unknown: nothing
    reservation = source.reservation_for(MAC)
    assert reservation is not None and reservation.node_id is not None


async def test_a_secure_boot_node_is_told_instead_of_offered_ipxe_over_ipv6(bf: InProcess) -> None:
    await enrol(bf, MAC)
    view = NetbootView(bf.conductor.db, ENDPOINTS, endpoints6=ENDPOINTS6, secure_boot_always=True)
    await view.refresh()
    refused = Netboot6Source(view, ENDPOINTS6).boot_for(client6(7), None)
    assert isinstance(refused, dhcp.NoBootFile) and refused.reason == SECURE_BOOT_V6


async def test_a_client_asking_over_ipv6_gets_ipv6_urls_and_the_ipv6_api(bf: InProcess) -> None:
    uuid = await enrol(bf, MAC)
    ramdisk = RamdiskSource(
        "http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", api_url6="http://[fd00:9::1]:6385"
    )
    view = NetbootView(bf.conductor.db, ENDPOINTS, ramdisk, endpoints6=ENDPOINTS6)
    await set_state(bf, uuid, "deploying")
    await view.refresh()
    over6 = view.ipxe_script({"mac": MAC}, "fd00:9::1000")
    assert f"kernel --name vmlinuz http://[fd00:9::1]:8080/bootforge/vmlinuz?mac={MAC}" in over6
    assert "bootforge.api=http://[fd00:9::1]:6385" in over6
    assert "10.9.0.1" not in over6
    over4 = view.ipxe_script({"mac": MAC}, "10.9.0.50")
    assert "bootforge.api=http://10.9.0.1:6385" in over4 and "fd00:9::1" not in over4
    # An IPv4-mapped address is an IPv4 client on a dual-stack socket.
    assert "fd00:9::1" not in view.ipxe_script({"mac": MAC}, "::ffff:10.9.0.50")


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"address6": "10.0.0.1"}, "netboot.address6"),
        ({"address6": "fe80::1"}, "netboot.address6"),
        ({"dhcp6": "full", "dhcp6_interfaces": ["br0"], "dhcp6_prefix": "fd00::/64"}, "netboot.address6"),
        ({"dhcp6": "full", "address6": "fd00::1", "dhcp6_prefix": "fd00::/64"}, "netboot.dhcp6_interfaces"),
        ({"dhcp6": "proxy", "address6": "fd00::1", "dhcp6_interfaces": ["br0"]}, "netboot.dhcp6_prefix"),
        (
            {
                "dhcp6": "full",
                "address6": "fd00::1",
                "dhcp6_interfaces": ["br0"],
                "dhcp6_prefix": "fd00::/64",
                "dhcp6_pool": "fd01::1-fd01::9",
            },
            "netboot.dhcp6_pool",
        ),
    ],
)
def test_dhcp6_settings_name_the_bad_field(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        NetbootSettings.model_validate(settings)


def test_dhcp6_full_settings_are_accepted() -> None:
    nb = NetbootSettings.model_validate(
        {"dhcp6": "full", "address6": "fd00::1", "dhcp6_interfaces": ["br0"], "dhcp6_prefix": "fd00::/64",
         "dhcp6_pool": "fd00::1000-fd00::1fff"}
    )  # fmt: skip
    assert nb.dhcp6 == "full"


async def test_dual_stack_lease_binding_holds_for_ipv4_and_not_for_ipv6(bf: InProcess) -> None:
    """With DHCPv4 in full mode the script goes only to a leased IPv4 address; an IPv6 client (its
    SLAAC address was leased by nobody) is served on the boot token alone."""
    uuid = await enrol(bf, MAC)
    ramdisk = RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd")
    view = NetbootView(bf.conductor.db, ENDPOINTS, ramdisk, endpoints6=ENDPOINTS6, bind_to_leases=True)
    await set_state(bf, uuid, "deploying")
    await view.refresh()
    assert "bootforge.node=" not in view.ipxe_script({"mac": MAC}, "10.9.0.50")  # no DHCPv4 lease
    view.note_dhcp("dhcp.ack", MAC, "10.9.0.50")
    assert f"bootforge.node={uuid}" in view.ipxe_script({"mac": MAC}, "10.9.0.50")
    assert f"bootforge.node={uuid}" in view.ipxe_script({"mac": MAC}, "fd00:9::5054:ff:feaa:bb01")
