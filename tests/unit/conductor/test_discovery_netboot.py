"""The netboot view with discovery: an unknown MAC on a discovery subnet gets the discovery ramdisk
with a token bound to its MAC; elsewhere, or without its own lease in full mode, the usual refusal."""

from __future__ import annotations

import dataclasses
import time
from ipaddress import IPv4Address

from support.service import InProcess
from test_netboot_view import ENDPOINTS, client

from bootforge.conductor.discovery import token_problem
from bootforge.conductor.discovery_boot import DiscoveryOffer
from bootforge.conductor.discovery_settings import DiscoverySettings
from bootforge.conductor.netboot import NetbootView, RamdiskSource
from bootforge.keys import load_or_create
from bootforge.netboot.boot import scripts

MAC = "52:54:00:dd:00:01"
RAMDISK = RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", ("console=ttyS0",))


def view(bf: InProcess, *, bind: bool = False) -> NetbootView:
    v = NetbootView(bf.conductor.db, ENDPOINTS, RAMDISK, bind_to_leases=bind)
    settings = DiscoverySettings(enabled=True, subnets=["10.9.0.0/24"])
    v.discovery = DiscoveryOffer(settings, bf.settings.secret_key_path)
    return v


async def test_dhcp_offers_unknown_machines_only_on_discovery_links(bf: InProcess) -> None:
    v = view(bf)
    await v.refresh()
    inside = dataclasses.replace(client(MAC, 7), link=IPv4Address("10.9.0.1"))
    outside = dataclasses.replace(client(MAC, 7), link=IPv4Address("10.8.0.1"))
    decision = v.boot_for(inside, None)
    assert decision is not None and decision.filename == "ipxe.efi"
    assert v.boot_for(outside, None) is None
    assert v.boot_for(client(MAC, 7), None) is None  # no link known: nothing


async def test_the_script_carries_a_token_bound_to_the_mac(bf: InProcess) -> None:
    v = view(bf)
    await v.refresh()
    plan = v.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.77")
    assert isinstance(plan, scripts.RamdiskBoot) and plan.purpose == "discovery"
    args = dict(plan.kernel_args)
    assert args["BOOTIF"] == MAC and args["bootforge.api"] == "http://10.9.0.1:6385"
    assert "bootforge.node" not in args and args["console"] == "ttyS0"
    assert plan.kernel_url == f"http://10.9.0.1:8080/boot/files/bootforge/vmlinuz?mac={MAC}"
    key = load_or_create(bf.settings.secret_key_path)
    boot, token = str(args["bootforge.discovery"]), str(args["bootforge.boot_token"])
    assert token_problem(key, MAC, boot, token, 3600, time.time()) is None
    assert token_problem(key, "52:54:00:dd:00:02", boot, token, 3600, time.time()) is not None
    assert "bootforge.discovery" in scripts.render_ipxe(plan)


async def test_refused_outside_the_subnets_and_without_a_lease(bf: InProcess) -> None:
    v = view(bf)
    await v.refresh()
    assert isinstance(v.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.8.0.77"), scripts.RefuseBoot)
    assert isinstance(v.plan_for({"mac": "nonsense"}, "http://x/boot/ipxe", "10.9.0.77"), scripts.RefuseBoot)
    bound = view(bf, bind=True)
    await bound.refresh()
    assert isinstance(bound.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.77"), scripts.RefuseBoot)
    bound.note_dhcp("dhcp.ack", MAC, "10.9.0.77")
    assert isinstance(bound.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.77"), scripts.RamdiskBoot)
    assert isinstance(bound.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.78"), scripts.RefuseBoot)


async def test_the_dhcp_servers_own_lease_counts(bf: InProcess) -> None:
    """No DHCP event reaches the view for an unknown MAC: the server's live table is asked."""
    v = view(bf, bind=True)
    await v.refresh()
    v.lease_of = lambda mac: "10.9.0.80" if mac == MAC else None
    assert isinstance(v.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.80"), scripts.RamdiskBoot)
    assert isinstance(v.plan_for({"mac": MAC}, "http://x/boot/ipxe", "10.9.0.81"), scripts.RefuseBoot)
