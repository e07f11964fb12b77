"""A real DHCP client (busybox udhcpc) announcing ARM64 UEFI (architecture 0x0b) to bootforge's DHCP
server in a network namespace, when bootforge lacks ipxe-arm64.efi (#12): it is leased an address
without a boot file, the drop is counted and the node is told."""

from __future__ import annotations

import socket
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from support.netns import Lan
from test_dhcp_netns import BOOT, LAN, blocks, env_script, need, reservations, run_in

from bootforge.netboot.boot.loaders import how_to_provide
from bootforge.netboot.dhcp import LOADER_MISSING, DhcpConfig, InMemoryLeaseStore, Mode, NodeEvent
from bootforge.servers.dhcp import DhcpServer

pytestmark = pytest.mark.netns
AAVMF = "PXEClient:Arch:00011:UNDI:003000"  # edk2's vendor class on arm64


async def test_udhcpc_as_arm64_gets_an_address_and_no_boot_file(netns_lan: Lan, tmp_path: Path) -> None:
    busybox = need("busybox", "busybox")
    client = netns_lan.client
    events: list[NodeEvent] = []
    boot = replace(BOOT, missing_loaders={"ipxe-arm64.efi": how_to_provide("ipxe-arm64.efi")})
    server = DhcpServer(
        DhcpConfig(Mode.FULL, ("eth0",), (LAN,)), boot, reservations(client), InMemoryLeaseStore(),
        socket_factory=lambda: netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM),
        on_event=events.append,
    )  # fmt: skip
    await server.start()
    out = tmp_path / "udhcpc.env"
    try:
        argv = [busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                "-s", str(env_script(out)), "-V", AAVMF, "-x", "0x5d:000b"]  # fmt: skip
        result = await run_in(client, argv)
        assert result.returncode == 0, result.stderr
        drops = dict(server.drops)
    finally:
        await server.close()
    bound = [b for b in blocks(out) if b["@"].startswith("bound")]
    assert bound, blocks(out)
    assert IPv4Address(bound[0]["ip"]) in LAN.network
    assert "boot_file" not in bound[0], bound[0]  # udhcpc exports boot_file only when one is sent
    assert drops.get(LOADER_MISSING, 0) >= 2  # the OFFER and the ACK each left it out
    told = [e for e in events if e.kind == "dhcp.no_boot_file"]
    assert told and "ipxe-arm64.efi" in told[0].detail and "netboot.loader_dirs" in told[0].detail
