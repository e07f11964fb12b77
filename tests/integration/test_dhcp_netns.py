"""bootforge's DHCP server in network namespaces against real clients, a real relay and a
competing DHCP server. The server runs in this test's event loop with sockets created inside
the server namespace; the clients run as processes inside theirs."""

from __future__ import annotations

import asyncio
import functools
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from support.netns import Host, Lan, RelayedSubnet
from support.tools import need

from bootforge.netboot.dhcp import (
    DhcpConfig,
    DhcpPacket,
    InMemoryLeaseStore,
    LeaseRecord,
    LeaseState,
    Mode,
    NodeEvent,
    Pool,
    Reservation,
    StaticBootSource,
    StaticReservations,
    Subnet,
    encode,
    parse,
)
from bootforge.servers.dhcp import DhcpServer

pytestmark = pytest.mark.netns

A = IPv4Address
SERVER = A("10.213.0.1")
BOOT = StaticBootSource(SERVER, "http://10.213.0.1:8080/boot", "http://10.213.0.1:8080/ipxe/{mac}")
LAN = Subnet(
    IPv4Network("10.213.0.0/24"), (Pool(A("10.213.0.100"), A("10.213.0.150")),),
    routers=(SERVER,), dns_servers=(SERVER,), lease_time=600,
)  # fmt: skip
RELAYED = Subnet(
    IPv4Network("10.213.1.0/24"), (Pool(A("10.213.1.100"), A("10.213.1.150")),),
    routers=(A("10.213.1.1"),), lease_time=600,
)  # fmt: skip
PXE_X64 = "PXEClient:Arch:00007:UNDI:003000"


def reservations(*hosts: Host) -> StaticReservations:
    return StaticReservations({h.mac: Reservation(f"node-{h.name[-8:]}") for h in hosts})


async def serve(
    lan: Lan, mode: Mode, known: StaticReservations, events: list[NodeEvent]
) -> AsyncIterator[tuple[DhcpServer, InMemoryLeaseStore]]:
    subnets = (LAN, RELAYED) if mode is Mode.FULL else ()
    config = DhcpConfig(mode, ("eth0",), subnets)
    store = InMemoryLeaseStore()
    server = DhcpServer(
        config, BOOT, known, store,
        socket_factory=lambda: lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM),
        on_event=events.append,
    )  # fmt: skip
    await server.start()
    try:
        yield server, store
    finally:
        await server.close()


def env_script(path: Path) -> Path:
    """A client hook script that appends its environment (one block per call) to a file."""
    script = path.with_suffix(".sh")
    script.write_text(f'#!/bin/sh\n{{ echo "=== $1 $reason"; env | grep -v "^_="; }} >> {path}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def blocks(path: Path) -> list[dict[str, str]]:
    """The env blocks written by `env_script`, each with its header under "@"."""
    out: list[dict[str, str]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("=== "):
            out.append({"@": line[4:].strip()})
        elif "=" in line and out:
            key, _, value = line.partition("=")
            out[-1][key] = value
    return out


def popen_logged(host: Host, argv: list[str], log: Path) -> subprocess.Popen[Any]:
    """Start inside the host's namespace (stopped by PID at teardown), output to `log`."""
    with log.open("w") as out:
        proc: subprocess.Popen[Any] = host.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return proc


async def run_in(host: Host, argv: list[str], timeout: float = 30) -> Any:
    return await asyncio.to_thread(host.ns.run, argv, check=False, timeout=timeout)


def udp_listening(host: Host, port: int) -> bool:
    """Whether a socket in the host's namespace is bound to UDP `port` (a DHCP server or relay ready)."""
    done = host.ns.run(["ss", "-H", "-uln", f"sport = :{port}"], check=False, timeout=10)
    return bool(done.stdout.strip())


async def wait_for(predicate: Callable[[], bool], seconds: float = 20.0) -> bool:
    for _ in range(int(seconds * 10)):
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


# -- full mode ----------------------------------------------------------------------------------


async def test_udhcpc_gets_a_lease_and_boot_information(netns_lan: Lan, tmp_path: Path) -> None:
    busybox = need("busybox", "busybox")
    client = netns_lan.client
    events: list[NodeEvent] = []
    out = tmp_path / "udhcpc.env"
    async for server, store in serve(netns_lan, Mode.FULL, reservations(client), events):
        argv = [busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                "-s", str(env_script(out)), "-V", PXE_X64, "-x", "0x5d:0007"]  # fmt: skip
        result = await run_in(client, argv)
        assert result.returncode == 0, result.stderr
        bound = [b for b in blocks(out) if b["@"].startswith("bound")]
        assert bound, blocks(out)
        assert A(bound[0]["ip"]) in LAN.network and bound[0]["router"] == "10.213.0.1"
        assert bound[0]["boot_file"] == "ipxe.efi" and bound[0]["siaddr"] == "10.213.0.1"
        lease = [r for r in store.records.values() if r.mac == client.mac]
        assert [r.state for r in lease] == [LeaseState.BOUND]
        assert str(lease[0].ip) == bound[0]["ip"]
        assert server.commits >= 1 and server.drops == {}
    assert [e.kind for e in events] == ["dhcp.offer", "dhcp.ack"]


async def test_dhclient_gets_a_lease_and_boot_information(netns_lan: Lan, tmp_path: Path) -> None:
    dhclient = need("dhclient", "isc-dhcp-client")
    client = netns_lan.client
    out = tmp_path / "dhclient.env"
    conf = tmp_path / "dhclient.conf"
    conf.write_text(
        "option pxe-arch code 93 = unsigned integer 16;\n"
        "send pxe-arch 7;\n"
        f'send vendor-class-identifier "{PXE_X64}";\n'
        "request subnet-mask, routers, domain-name-servers;\n"
    )
    events: list[NodeEvent] = []
    async for _, store in serve(netns_lan, Mode.FULL, reservations(client), events):
        argv = [dhclient, "-d", "-1", "-4", "-cf", str(conf), "-sf", str(env_script(out)),
                "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"), "eth0"]  # fmt: skip
        proc = popen_logged(client, argv, tmp_path / "dhclient.log")
        try:
            assert await wait_for(lambda: any(b.get("reason") == "BOUND" for b in blocks(out)))
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
        bound = next(b for b in blocks(out) if b.get("reason") == "BOUND")
        assert A(bound["new_ip_address"]) in LAN.network
        assert bound["new_filename"] == "ipxe.efi"
        assert bound["new_routers"] == "10.213.0.1"
        assert any(r.mac == client.mac and r.state is LeaseState.BOUND
                   for r in store.records.values())  # fmt: skip
    assert "dhcp.ack" in [e.kind for e in events]


async def test_relayed_exchange_through_dhcrelay(netns_relayed_lan: RelayedSubnet, tmp_path: Path) -> None:
    busybox = need("busybox", "busybox")
    dhcrelay = need("dhcrelay", "isc-dhcp-relay")
    seg = netns_relayed_lan
    out = tmp_path / "udhcpc.env"
    events: list[NodeEvent] = []
    async for server, _ in serve(seg.lan, Mode.FULL, reservations(seg.client), events):
        argv = [dhcrelay, "-d", "-4", "-a", "-iu", "eth0", "-id", "eth1", str(SERVER)]
        relay = Host(seg.relay, "eth0", "", None)
        popen_logged(relay, argv, tmp_path / "dhcrelay.log")
        assert await wait_for(functools.partial(udp_listening, relay, 67)), "dhcrelay did not bind port 67"
        argv = [busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "6", "-T", "1",
                "-s", str(env_script(out))]  # fmt: skip
        result = await run_in(seg.client, argv)
        assert result.returncode == 0, (result.stderr, (tmp_path / "dhcrelay.log").read_text())
        bound = [b for b in blocks(out) if b["@"].startswith("bound")]
        assert A(bound[0]["ip"]) in RELAYED.network, bound
        assert bound[0]["router"] == "10.213.1.1"
        assert server.drops == {}
    acks = [e for e in events if e.kind == "dhcp.ack"]
    assert acks and A(acks[0].ip or "0.0.0.0") in RELAYED.network


# -- proxyDHCP next to another DHCP server ------------------------------------------------------


class ScriptedPxeClient:
    """Replays what OVMF does against a proxyDHCP setup (protocols-perf-libs.md §0): DORA with
    the site server, then the BINL request to the proxy on port 4011 from port 4011."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.mac = bytes.fromhex(host.mac.replace(":", ""))
        self.sock = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        self.sock.bind(("0.0.0.0", 68))
        self.sock.setblocking(False)

    def message(self, xid: int, options: dict[int, bytes], ciaddr: bytes = bytes(4)) -> bytes:
        pxe = {93: b"\x00\x07", 94: b"\x01\x03\x00", 97: bytes(17), 60: PXE_X64.encode()}
        packet = DhcpPacket(1, xid, self.mac, flags=0x8000, ciaddr=ciaddr, options=options | pxe)
        return encode(packet)

    async def collect(
        self, sock: socket.socket, xids: int | set[int], seconds: float, want: int = 0
    ) -> list[DhcpPacket]:
        """Replies to `xids` until `want` arrived (0: all within `seconds`) or time is up."""
        wanted = {xids} if isinstance(xids, int) else xids
        loop = asyncio.get_running_loop()
        got: list[DhcpPacket] = []
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0 and not (want and len(got) >= want):
            try:
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), left)
            except TimeoutError:
                break
            packet = parse(data)
            if packet.op == 2 and packet.xid in wanted:
                got.append(packet)
        return got

    async def broadcast(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("255.255.255.255", 67))


async def test_proxy_answers_pxe_client_while_dnsmasq_leases(netns_lan: Lan, tmp_path: Path) -> None:
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    site = netns_lan.add_client(role="site")
    site.ns.ip("addr", "add", "10.213.0.3/24", "dev", "eth0")
    site.ns.popen(
        [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
         "--interface=eth0", "--bind-interfaces", "--no-ping", "--dhcp-range=10.213.0.50,10.213.0.60,10m",
         f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}", "--pid-file=", "--log-dhcp",
         "--log-facility=" + str(tmp_path / "dnsmasq.log")],
    )  # fmt: skip
    client = ScriptedPxeClient(netns_lan.client)
    events: list[NodeEvent] = []
    async for server, _ in serve(netns_lan, Mode.PROXY, reservations(netns_lan.client), events):
        assert await wait_for(lambda: udp_listening(site, 67)), "dnsmasq did not bind port 67"
        await client.broadcast(client.message(0x1111, {53: b"\x01", 57: b"\x05\xc0"}))
        offers = await client.collect(client.sock, 0x1111, 5.0, want=2)
        by_server = {bytes(o.options[54]): o for o in offers}
        site_offer = by_server[A("10.213.0.3").packed]
        proxy_offer = by_server[SERVER.packed]
        assert A(site_offer.yiaddr) in IPv4Network("10.213.0.48/28")
        assert proxy_offer.yiaddr == bytes(4) and proxy_offer.options[60] == b"PXEClient"
        assert proxy_offer.file == b"ipxe.efi" and proxy_offer.options[97] == bytes(17)

        request = {53: b"\x03", 54: site_offer.options[54], 50: site_offer.yiaddr}
        await client.broadcast(client.message(0x2222, request))
        replies = await client.collect(client.sock, 0x2222, 5.0, want=1)
        acks = [p for p in replies if p.options[53] == b"\x05"]
        assert [bytes(a.options[54]) for a in acks] == [A("10.213.0.3").packed]
        address = str(A(acks[0].yiaddr))

        netns_lan.client.ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
        binl = netns_lan.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        binl.bind((address, 4011))
        binl.setblocking(False)
        data = client.message(0x3333, {53: b"\x03"}, ciaddr=A(address).packed)
        await asyncio.get_running_loop().sock_sendto(binl, data, (str(SERVER), 4011))
        answers = await client.collect(binl, 0x3333, 5.0, want=1)
        binl.close()
        assert len(answers) == 1 and answers[0].options[53] == b"\x05"
        assert answers[0].file == b"ipxe.efi" and answers[0].siaddr == SERVER.packed
        assert server.drops.get("other_server", 0) >= 1  # the REQUEST meant for dnsmasq
    client.sock.close()
    assert [e.kind for e in events] == ["dhcp.proxy_offer", "dhcp.proxy_seen", "dhcp.proxy_ack"]
    # Both say which address the node took from dnsmasq: its TFTP and HTTP fetches come from it.
    assert events[1].ip == address and events[2].ip == address


# -- group commit: ACKs wait for the durable write ----------------------------------------------


class GatedStore(InMemoryLeaseStore):
    """Blocks every commit until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def commit(self, records: Sequence[LeaseRecord]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().commit(records)


async def test_acks_are_sent_only_after_one_grouped_commit(netns_lan: Lan) -> None:
    macs = [bytes([0x02, 0, 0, 0, 0, i]) for i in range(1, 6)]
    known = StaticReservations({m.hex(":"): Reservation(f"node-{i}") for i, m in enumerate(macs)})
    store = GatedStore()
    server = DhcpServer(
        DhcpConfig(Mode.FULL, ("eth0",), (LAN,)), BOOT, known, store,
        socket_factory=lambda: netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )  # fmt: skip
    await server.start()
    client = ScriptedPxeClient(netns_lan.client)
    try:
        offers = {}
        for i, mac in enumerate(macs):
            client.mac = mac
            await client.broadcast(client.message(100 + i, {53: b"\x01"}))
            (offers[mac],) = await client.collect(client.sock, 100 + i, 5.0, want=1)

        def request(i: int, mac: bytes) -> bytes:
            client.mac = mac
            options = {53: b"\x03", 54: SERVER.packed, 50: offers[mac].yiaddr}
            return client.message(200 + i, options)

        await client.broadcast(request(0, macs[0]))
        await asyncio.wait_for(store.entered.wait(), 5)
        for i, mac in enumerate(macs[1:], 1):
            await client.broadcast(request(i, mac))
        assert server.core is not None
        assert await wait_for(lambda: server.core is not None and server.core.sent["ack"] == 5)
        # Five ACKs are built, none may be on the wire while the first commit is still open.
        xids = set(range(200, 205))
        assert await client.collect(client.sock, xids, 0.5) == []
        store.gate.set()
        acks = await client.collect(client.sock, xids, 5.0, want=5)
        assert [a.options[53] for a in acks] == [b"\x05"] * 5
        assert store.batches == [1, 4]
    finally:
        client.sock.close()
        await server.close()
