"""The conductor's DHCP answers when a loader is missing (#12): an ARM64 node without ipxe-arm64.efi
and without the signed arm64 chain, and a Secure Boot node without shim/GRUB, get no boot file, and
their timelines say what is missing and how to provide it. DhcpCore -> NetbootView ->
Netboot.on_dhcp -> EventSink -> the node's history."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from support.service import InProcess
from test_netboot_view import ENDPOINTS, client

from bootforge.cli.netboot import Netboot
from bootforge.conductor.netboot import SECURE_BOOT_LOADER_MISSING, EventSink, NetbootView
from bootforge.netboot import dhcp
from bootforge.netboot.boot.loaders import how_to_provide

ETH0 = dhcp.Interface("eth0", IPv4Address("10.9.0.1"), mtu=1500)
LAN = dhcp.Subnet(
    IPv4Network("10.9.0.0/24"), (dhcp.Pool(IPv4Address("10.9.0.100"), IPv4Address("10.9.0.150")),)
)


def missing(*names: str) -> dict[str, str]:
    return {n: how_to_provide(n) for n in names}


def discover(mac: str, arch: int) -> bytes:
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:003000".encode()
    options = {53: b"\x01", 93: arch.to_bytes(2, "big"), 60: vendor, 97: bytes(17)}
    packet = dhcp.DhcpPacket(
        op=dhcp.BOOTREQUEST,
        xid=0x1234,
        chaddr=bytes.fromhex(mac.replace(":", "")),
        flags=0x8000,
        options=options,
    )
    return dhcp.encode(packet)


async def enrol(bf: InProcess, mac: str, name: str, properties: dict[str, object] | None = None) -> str:
    body: dict[str, object] = {"driver": "fake-hardware", "name": name}
    if properties is not None:
        body["properties"] = properties
    node = (await bf.client.post("/v1/nodes", json=body)).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": mac})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


async def history(bf: InProcess, uuid: str) -> list[dict[str, str]]:
    got = (await bf.client.get(f"/v1/nodes/{uuid}/history?detail=true")).json()["history"]
    return [e for e in got if e["event_type"] == "dhcp"]


async def test_arm64_node_gets_an_address_no_boot_file_and_a_timeline_event(bf: InProcess) -> None:
    mac = "52:54:00:aa:cc:01"
    uuid = await enrol(bf, mac, "arm1")
    view = NetbootView(
        bf.conductor.db, ENDPOINTS, missing_loaders=missing("ipxe-arm64.efi", "ipxe-i386.efi", "shimaa64.efi")
    )
    await view.refresh()
    sink = EventSink(bf.conductor.db, "test")
    netboot = Netboot(view, sink)
    core = dhcp.DhcpCore(dhcp.DhcpConfig(dhcp.Mode.FULL, ("eth0",), (LAN,)), view, view)
    outcome = core.receive(discover(mac, 0x0B), ETH0, 100.0)
    (reply,) = outcome.replies
    offer = dhcp.parse(reply.data)
    assert offer.yiaddr != bytes(4) and offer.file.rstrip(b"\0") == b"" and 67 not in offer.options
    assert core.drops[dhcp.LOADER_MISSING] == 1
    for event in outcome.events:
        netboot.on_dhcp(event)
    await sink.flush()
    warnings = [e for e in await history(bf, uuid) if e["severity"] == "warning"]
    assert len(warnings) == 1
    text = warnings[0]["event"]
    assert "arm64-uefi" in text and "ipxe-arm64.efi" in text and "netboot.loader_dirs" in text
    assert "shimaa64.efi" in text and "ramdisk build --arch arm64" in text
    # x64 UEFI on the same view still gets its iPXE.
    assert view.boot_for(client(mac, 7), None) == dhcp.BootDecision("ipxe.efi", IPv4Address("10.9.0.1"))


async def test_the_timeline_event_is_rate_limited_like_other_netboot_events(bf: InProcess) -> None:
    mac = "52:54:00:aa:cc:02"
    uuid = await enrol(bf, mac, "arm2")
    view = NetbootView(bf.conductor.db, ENDPOINTS, missing_loaders=missing("ipxe-arm64.efi", "grubaa64.efi"))
    await view.refresh()
    sink = EventSink(bf.conductor.db, "test", burst=3, window=3600.0)
    netboot = Netboot(view, sink)
    core = dhcp.DhcpCore(dhcp.DhcpConfig(dhcp.Mode.PROXY, ("eth0",)), view, view)
    for i in range(50):  # firmware retrying, or a stranger replaying its MAC
        outcome = core.receive(discover(mac, 0x0B), ETH0, float(i))
        assert outcome.dropped == dhcp.LOADER_MISSING and outcome.replies == ()
        for event in outcome.events:
            netboot.on_dhcp(event)
    await sink.flush()
    assert core.drops[dhcp.LOADER_MISSING] == 50
    assert len(await history(bf, uuid)) == 3 and sink.suppressed == 47


async def test_secure_boot_node_without_shim_gets_no_boot_file(bf: InProcess) -> None:
    secure, plain = "52:54:00:aa:cc:03", "52:54:00:aa:cc:04"
    await enrol(bf, secure, "sb", {"capabilities": "boot_mode:uefi,secure_boot:true"})
    await enrol(bf, plain, "plain", {"capabilities": {"secure_boot": "false"}})
    view = NetbootView(bf.conductor.db, ENDPOINTS, missing_loaders=missing("shimx64.efi"))
    await view.refresh()
    refused = view.boot_for(client(secure, 7), None)
    assert isinstance(refused, dhcp.NoBootFile) and refused.reason == SECURE_BOOT_LOADER_MISSING
    assert "Secure Boot" in refused.message and "shimx64.efi" in refused.message
    assert "grubx64.efi" not in refused.message and "netboot.loader_dirs" in refused.message
    http = view.boot_for(client(secure, 16, http=True), None)
    assert isinstance(http, dhcp.NoBootFile)
    # A node that does not ask for Secure Boot, and iPXE already running, are not affected.
    assert view.boot_for(client(plain, 7), None) == dhcp.BootDecision("ipxe.efi", IPv4Address("10.9.0.1"))
    chained = view.boot_for(client(secure, 7, ipxe=True), None)
    assert isinstance(chained, dhcp.BootDecision) and chained.is_url
    # With the chain present, the Secure Boot node is offered a boot file as before.
    complete = NetbootView(bf.conductor.db, ENDPOINTS, missing_loaders=missing("ipxe-arm64.efi"))
    await complete.refresh()
    assert isinstance(complete.boot_for(client(secure, 7), None), dhcp.BootDecision)
