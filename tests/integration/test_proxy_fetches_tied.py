"""Proxy mode (#12): a node's TFTP and HTTP boot fetches reach its timeline, not only the server log.

bootforge's DHCP did not lease the address, so it is learnt from the proxy exchange (the client's
port-4011 request, or its REQUEST to the site's server) and the ramdisk's kernel and initrd URLs carry
the MAC. Real packets through the proxy core with the conductor's view, real TFTP and HTTP boot servers
on 127.0.0.1 feeding the product's composition (cli.netboot.Netboot), the node's timeline read back."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from pathlib import Path

import httpx
from sqlalchemy import update
from support.service import InProcess
from support.timeline import timeline, until

from bootforge.cli.netboot import Netboot
from bootforge.conductor import states
from bootforge.conductor.netboot import BootEndpoints, EventSink, NetbootView, RamdiskSource
from bootforge.db.models import Node
from bootforge.netboot import dhcp
from bootforge.netboot.boot import scripts
from bootforge.netboot.tftp import FileSystemSource, Opcode, Request, encode_packet
from bootforge.servers.http_boot import HttpBootServer, HttpFetchEvent
from bootforge.servers.tftp import TftpEvent, TftpServer

MAC = "52:54:00:aa:dd:01"
SERVER = IPv4Address("10.9.0.1")
ETH0 = dhcp.Interface("eth0", SERVER, mtu=1500)
PXE_X64 = b"PXEClient:Arch:00007:UNDI:003000"
ENDPOINTS = BootEndpoints(SERVER, "http://10.9.0.1:8080", "http://10.9.0.1:8080/boot/ipxe?mac={mac}")


def packet(message_type: int, ciaddr: bytes = bytes(4), **options: bytes) -> bytes:
    opts = {53: bytes([message_type]), 93: b"\x00\x07", 60: PXE_X64, 97: bytes(17)}
    opts |= {int(k[1:]): v for k, v in options.items()}
    return dhcp.encode(
        dhcp.DhcpPacket(
            op=dhcp.BOOTREQUEST, xid=0x4242, chaddr=bytes.fromhex(MAC.replace(":", "")), flags=0x8000,
            ciaddr=ciaddr, options=opts,
        )
    )  # fmt: skip


async def setup(bf: InProcess) -> tuple[Netboot, str]:
    node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "px"})).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": MAC})
    assert r.status_code == 201, r.text
    async with bf.conductor.db.write() as s:
        await s.execute(
            update(Node).where(Node.uuid == node["uuid"]).values(provision_state=states.DEPLOYWAIT)
        )
        await s.commit()
    ramdisk = RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd")
    view = NetbootView(bf.conductor.db, ENDPOINTS, ramdisk)
    await view.refresh()
    return Netboot(view, EventSink(bf.conductor.db, "test")), str(node["uuid"])


async def test_tftp_fetch_from_the_address_seen_in_the_proxy_exchange_is_on_the_timeline(
    bf: InProcess, tmp_path: Path
) -> None:
    nb, uuid = await setup(bf)
    core = dhcp.DhcpCore(dhcp.DhcpConfig(dhcp.Mode.PROXY, ("eth0",)), nb.view, nb.view)
    here = socket.inet_aton("127.0.0.1")  # the address the node took from the site's DHCP server
    exchange = [
        core.receive(packet(1), ETH0, 1.0),  # DISCOVER: the proxy offers the boot file
        core.receive(packet(3, o50=here, o54=bytes([10, 9, 0, 3])), ETH0, 2.0),  # to the site server
        core.receive(packet(3, ciaddr=here), ETH0, 3.0, src=("127.0.0.1", 4011), port=4011),  # BINL
    ]
    assert [len(o.replies) for o in exchange] == [1, 0, 1]
    for outcome in exchange:
        for event in outcome.events:
            nb.on_dhcp(event)
    (tmp_path / "ipxe.efi").write_bytes(b"MZ" + bytes(3000))
    seen: list[TftpEvent] = []

    def on_event(e: TftpEvent) -> None:
        seen.append(e)
        nb.on_tftp(e)

    async with TftpServer(FileSystemSource(tmp_path), "127.0.0.1", port=0, on_event=on_event) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.sendto(
                encode_packet(Request(Opcode.RRQ, "ipxe.efi", "octet", {"tsize": "0"})), srv.local_address
            )
            await until(lambda: len(seen) == 1)
    await nb.sink.flush()
    events = await timeline(bf, uuid, "tftp")
    assert len(events) == 1 and "tftp ipxe.efi" in events[0], events
    dhcp_events = await timeline(bf, uuid, "dhcp")
    assert any("dhcp.proxy_seen" in e and "127.0.0.1" in e for e in dhcp_events), dhcp_events


async def test_kernel_and_initrd_urls_carry_the_mac_and_their_fetches_reach_the_timeline(
    bf: InProcess, tmp_path: Path
) -> None:
    nb, uuid = await setup(bf)
    plan = nb.view.plan_for({"mac": MAC}, "http://10.9.0.1:8080/boot/ipxe?mac=" + MAC, "127.0.0.1")
    assert isinstance(plan, scripts.RamdiskBoot)
    assert plan.kernel_url == f"http://10.9.0.1:8080/bootforge/vmlinuz?mac={MAC}"
    assert plan.initrd_url == f"http://10.9.0.1:8080/bootforge/initrd?mac={MAC}"
    (tmp_path / "bootforge").mkdir()
    (tmp_path / "bootforge/vmlinuz").write_bytes(b"kernel" * 100)
    (tmp_path / "bootforge/initrd").write_bytes(b"initrd" * 100)
    seen: list[HttpFetchEvent] = []

    def on_event(e: HttpFetchEvent) -> None:
        seen.append(e)
        nb.on_http(e)

    # No DHCP at all taught an address: the MAC in the URL alone ties the fetches to the node.
    async with HttpBootServer(tmp_path, port=0, on_event=on_event) as srv:
        host, port = srv.local_address
        async with httpx.AsyncClient() as client:
            for url in (plan.kernel_url, plan.initrd_url):
                r = await client.get(url.replace("10.9.0.1:8080", f"{host}:{port}"))
                assert r.status_code == 200
    await until(lambda: len(seen) == 2)
    await nb.sink.flush()
    events = await timeline(bf, uuid, "http")
    assert [e.split(" 200")[0] for e in events] == [
        "http GET /bootforge/vmlinuz",
        "http GET /bootforge/initrd",
    ]
