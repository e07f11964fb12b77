"""The DHCPv6 core against peers bootforge did not write: ISC `dhclient -6` in a network namespace
gets an address from the core (SOLICIT/ADVERTISE/REQUEST/REPLY) over a veth and releases it; gets
one through ISC `dhcrelay -6` on a routed segment (RELAY-FORW/RELAY-REPL); and, stateless (`-S`),
gets the DNS servers by INFORMATION-REQUEST.

The server is a few lines of asyncio around `Dhcp6Core` in this test (bootforge has no DHCPv6 server
yet: wiring the core into `bootforge serve` is a later step), on a socket made inside the server
namespace, bound to [::]:547 and joined to ff02::1:2 on eth0. dhclient runs with `-sf /bin/true`:
its script would rewrite /etc/resolv.conf, which a namespace shares with the host.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import cast

import pytest
from support.daemons import stop_daemon
from support.netns import Host, Lan, link_local_ready
from support.tools import need

from bootforge.netboot import dhcp, dhcp6

pytestmark = pytest.mark.netns

PREFIX = IPv6Network("fd00:213::/64")
SERVER_DUID = bytes.fromhex("0003000102aabbccdd01")
ALL_SERVERS = "ff02::1:2"


class Server(asyncio.DatagramProtocol):
    def __init__(self, core: dhcp6.Dhcp6Core) -> None:
        self.core = core
        self.bound = asyncio.Event()
        self.released = asyncio.Event()
        self.kinds: list[str] = []
        self.bound_record: dhcp6.Lease6Record | None = None
        self.sent_to: list[tuple[str, int]] = []
        self.received: list[int] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int, int, int]) -> None:  # type: ignore[override]
        host, port, _, scope = addr
        self.received.append(data[0])
        outcome = self.core.receive(data, "eth0", time.monotonic(), src=(host.split("%")[0], port))
        for record in outcome.records:  # the in-test "store" commits at once
            if record.state is dhcp6.Lease6State.BOUND:
                self.bound_record = record
                self.bound.set()
            if record.state is dhcp6.Lease6State.RELEASED:
                self.released.set()
        assert self.transport is not None
        for reply in outcome.replies:
            self.kinds.append(reply.kind)
            self.sent_to.append((reply.address, reply.port))
            self.transport.sendto(reply.data, (reply.address, reply.port, 0, scope))


async def test_dhclient_gets_an_address_and_releases_it(netns_lan: Lan, tmp_path: Path) -> None:
    dhclient = need("dhclient", "isc-dhcp-client")
    server_host, client = netns_lan.server, netns_lan.client
    server_host.ns.ip("-6", "addr", "add", "fd00:213::1/64", "dev", "eth0", "nodad")
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, SERVER_DUID, PREFIX,
        pool_first=IPv6Address("fd00:213::1000"), pool_last=IPv6Address("fd00:213::10ff"),
        dns_servers=(IPv6Address("fd00:213::1"),),
    )  # fmt: skip
    boot = dhcp6.StaticBoot6Source(IPv6Address("fd00:213::1"), "http://[fd00:213::1]:8080/boot", "x")
    core = dhcp6.Dhcp6Core(config, boot, dhcp.StaticReservations({}))
    transport, server = await serve(server_host, core)
    leases, pidfile = tmp_path / "dhclient6.leases", tmp_path / "dhclient6.pid"
    argv = [dhclient, "-6", "-1", "-v", "-sf", "/bin/true", "-lf", str(leases), "-pf", str(pidfile)]
    try:
        got = await asyncio.to_thread(client.ns.run, [*argv, client.ifname], check=False, timeout=40)
        assert got.returncode == 0, got.stderr
        await asyncio.wait_for(server.bound.wait(), 5)
        text = leases.read_text()
        binding = server.bound_record
        assert binding is not None
        address = str(binding.ip)
        assert f"iaaddr {address}" in text, text
        assert IPv6Address(address) in PREFIX
        assert server.kinds[:2] == ["advertise", "reply"]
        released = await asyncio.to_thread(
            client.ns.run, [*argv, "-r", client.ifname], check=False, timeout=40
        )
        assert released.returncode == 0, released.stderr
        await asyncio.wait_for(server.released.wait(), 10)
        assert core.drops == {} or set(core.drops) <= {"unhandled_message"}, core.drops
    finally:
        transport.close()


async def serve(host: Host, core: dhcp6.Dhcp6Core) -> tuple[asyncio.DatagramTransport, Server]:
    sock = host.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", 547))
    ifindex = int(host.ns.link_info("eth0")["ifindex"])
    group = socket.inet_pton(socket.AF_INET6, ALL_SERVERS) + struct.pack("@I", ifindex)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: Server(core), sock=sock)
    return transport, server


async def test_dhclient_behind_isc_dhcrelay_gets_an_address_through_relay_repl(
    netns_lan: Lan, tmp_path: Path
) -> None:
    dhclient = need("dhclient", "isc-dhcp-client")
    dhcrelay = need("dhcrelay", "isc-dhcp-relay")
    segment = netns_lan.add_relay()
    server_host, relay, client = netns_lan.server, segment.relay, segment.client
    server_host.ns.ip("-6", "addr", "add", "fd00:213::1/64", "dev", "eth0", "nodad")
    relay.ip("-6", "addr", "add", "fd00:213::2/64", "dev", "eth0", "nodad")
    relay.ip("-6", "addr", "add", "fd00:214::1/64", "dev", "eth1", "nodad")
    relay.set_sysctl("net.ipv6.conf.all.forwarding", "1")
    server_host.ns.ip("-6", "route", "add", "fd00:214::/64", "via", "fd00:213::2")
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    await link_local_ready(segment.downstream, deadline)
    await link_local_ready(segment.upstream, deadline)
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, SERVER_DUID, IPv6Network("fd00:214::/64"),
        pool_first=IPv6Address("fd00:214::1000"), pool_last=IPv6Address("fd00:214::10ff"),
    )  # fmt: skip
    boot = dhcp6.StaticBoot6Source(IPv6Address("fd00:213::1"), "http://[fd00:213::1]:8080/boot", "x")
    core = dhcp6.Dhcp6Core(config, boot, dhcp.StaticReservations({}))
    transport, server = await serve(server_host, core)
    relay_proc = relay.popen(
        [dhcrelay, "-6", "-d", "-q", "-pf", str(tmp_path / "relay.pid"),
         "-l", "eth1", "-u", "fd00:213::1%eth0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    leases = tmp_path / "dhclient6.leases"
    argv = [
        dhclient,
        "-6",
        "-1",
        "-v",
        "-sf",
        "/bin/true",
        "-lf",
        str(leases),
        "-pf",
        str(tmp_path / "c.pid"),
    ]
    got: subprocess.CompletedProcess[str] | None = None
    try:
        got = await asyncio.to_thread(client.ns.run, [*argv, client.ifname], check=False, timeout=40)
        assert got.returncode == 0, got.stderr
        await asyncio.wait_for(server.bound.wait(), 5)
        binding = server.bound_record
        assert binding is not None
        address = str(binding.ip)
        assert f"iaaddr {address}" in leases.read_text()
        assert server.kinds[:2] == ["advertise", "reply"]
        # Both went back as RELAY-REPL to the relay's server-side address, port 547.
        assert server.sent_to[:2] == [("fd00:213::2", 547)] * 2
        assert binding.mac == client.mac  # from dhclient's DUID-LLT (dhcrelay adds no option 79)
    finally:
        # Bound, dhclient -1 forked into the background: stop it (its child writes c.pid just after).
        await asyncio.to_thread(stop_daemon, tmp_path / "c.pid", got is not None and got.returncode == 0)
        transport.close()
        relay_proc.terminate()
        relay_proc.wait(10)


async def test_dhclient_stateless_information_request_gets_the_dns_servers(
    netns_lan: Lan, tmp_path: Path
) -> None:
    """`dhclient -6 -S`: an INFORMATION-REQUEST, answered with the configured DNS server and no address."""
    dhclient = need("dhclient", "isc-dhcp-client")
    server_host, client = netns_lan.server, netns_lan.client
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, SERVER_DUID, PREFIX,
        pool_first=IPv6Address("fd00:213::1000"), pool_last=IPv6Address("fd00:213::10ff"),
        dns_servers=(IPv6Address("fd00:213::53"),),
    )  # fmt: skip
    boot = dhcp6.StaticBoot6Source(IPv6Address("fd00:213::1"), "http://[fd00:213::1]:8080/boot", "x")
    core = dhcp6.Dhcp6Core(config, boot, dhcp.StaticReservations({}))
    transport, server = await serve(server_host, core)
    # Stateless mode writes no lease file: what dhclient learnt reaches its script's environment.
    seen, script = tmp_path / "script.log", tmp_path / "script.sh"
    script.write_text(f'#!/bin/sh\necho "$reason $new_dhcp6_name_servers" >> {seen}\n')
    script.chmod(0o755)
    argv = [dhclient, "-6", "-S", "-1", "-v", "-sf", str(script), "-lf", str(tmp_path / "l"),
            "-pf", str(tmp_path / "p")]  # fmt: skip
    try:
        got = await asyncio.to_thread(client.ns.run, [*argv, client.ifname], check=False, timeout=40)
        assert got.returncode == 0, got.stderr
        assert server.kinds[:1] == ["reply"] and server.bound_record is None
        assert server.received[:1] == [dhcp6.MsgType.INFORMATION_REQUEST]
        assert "fd00:213::53" in seen.read_text()  # dhclient 4.4 calls this reason RENEW6
    finally:
        transport.close()
