"""bootforge's DHCPv6 server (bootforge.servers.dhcp6) against ISC `dhclient -6`, a client bootforge
did not write, in network namespaces: an address from the pool with the node's event, the lease
durable in its file (a restarted server gives the same client the same address back), and a flood
from one address held to the rate limit while another client is still served.

dhclient runs with `-sf /bin/true`: its script would rewrite /etc/resolv.conf, which a namespace
shares with the host.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
from support.daemons import stop_daemon
from support.netns import Host, Lan, link_local_ready
from support.tools import need

from bootforge.netboot import dhcp, dhcp6
from bootforge.servers.dhcp6 import Dhcp6Server, FileLease6Store

pytestmark = pytest.mark.netns

PREFIX = IPv6Network("fd00:215::/64")
SERVER = "fd00:215::1"


def server_for(host: Host, store: FileLease6Store, events: list[dhcp.NodeEvent], mac: str) -> Dhcp6Server:
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, dhcp6.duid_ll(bytes.fromhex("02aabbccdd01")), PREFIX,
        pool_first=IPv6Address("fd00:215::1000"), pool_last=IPv6Address("fd00:215::10ff"),
    )  # fmt: skip
    boot = dhcp6.StaticBoot6Source(IPv6Address(SERVER), f"http://[{SERVER}]:8080", "x")
    reservations = dhcp.StaticReservations({mac: dhcp.Reservation(node_id="node-1")})
    return Dhcp6Server(
        config,
        boot,
        reservations,
        store,
        [host.ifname],
        socket_factory=lambda: host.socket(socket.AF_INET6, socket.SOCK_DGRAM),
        on_event=events.append,
        rate=5.0,
        burst=10,
    )


async def run_dhclient(client: Host, tmp_path: Path, *extra: str) -> None:
    """One exchange of dhclient's. Once bound it forks into the background to renew; that daemon is
    ours, so it is stopped here by the PID it wrote (it would outlive the test and its namespace)."""
    dhclient = need("dhclient", "isc-dhcp-client")
    pidfile = tmp_path / "dhclient6.pid"
    argv = [dhclient, "-6", "-1", "-v", "-sf", "/bin/true"]
    argv += ["-lf", str(tmp_path / "dhclient6.leases"), "-pf", str(pidfile)]
    got = None
    try:
        got = await asyncio.to_thread(client.ns.run, [*argv, *extra, client.ifname], check=False, timeout=40)
    finally:
        # Bound, it forks and the child writes its PID file a moment after the parent returned.
        await asyncio.to_thread(stop_daemon, pidfile, got is not None and got.returncode == 0)
    assert got.returncode == 0, got.stderr


async def test_dhclient_leases_from_the_server_and_the_lease_survives_a_restart(
    netns_lan: Lan, tmp_path: Path
) -> None:
    need("dhclient", "isc-dhcp-client")
    server_host, client = netns_lan.server, netns_lan.client
    server_host.ns.ip("-6", "addr", "add", f"{SERVER}/64", "dev", "eth0", "nodad")
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    path = tmp_path / "leases6.json"
    events: list[dhcp.NodeEvent] = []
    server = server_for(server_host, FileLease6Store(path), events, client.mac)
    await server.start()
    try:
        await run_dhclient(client, tmp_path)
    finally:
        await server.close()
    rows = json.loads(path.read_text())
    bound = [r for r in rows if r["state"] == "bound"]
    assert len(bound) == 1, rows
    address = bound[0]["ip"]
    assert IPv6Address(address) in PREFIX
    assert bound[0]["mac"] == client.mac and bound[0]["node_id"] == "node-1"
    assert f"iaaddr {address}" in (tmp_path / "dhclient6.leases").read_text()
    assert [e.kind for e in events][:2] == ["dhcp6.advertise", "dhcp6.reply"]
    assert events[1].node_id == "node-1" and events[1].ip == address
    assert server.drops == {} or set(server.drops) <= {"unhandled_message"}, server.drops

    # A new server process reads the file: the same client (same DUID and IAID) asks afresh
    # (dhclient's lease file cut down to its DUID) and gets the same address, not another one.
    client_leases = tmp_path / "dhclient6.leases"
    duid_lines = [line for line in client_leases.read_text().splitlines() if line.startswith("default-duid")]
    assert duid_lines, client_leases.read_text()
    client_leases.write_text("\n".join(duid_lines) + "\n")
    events.clear()
    again = server_for(server_host, FileLease6Store(path), events, client.mac)
    await again.start()
    try:
        await run_dhclient(client, tmp_path)
    finally:
        await again.close()
    replies = [e for e in events if e.kind == "dhcp6.reply"]
    assert replies and replies[0].ip == address, events


async def test_a_flood_from_one_address_is_rate_limited_and_counted(netns_lan: Lan, tmp_path: Path) -> None:
    server_host, client = netns_lan.server, netns_lan.client
    server_host.ns.ip("-6", "addr", "add", f"{SERVER}/64", "dev", "eth0", "nodad")
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    events: list[dhcp.NodeEvent] = []
    server = server_for(server_host, FileLease6Store(tmp_path / "leases6.json"), events, client.mac)
    await server.start()
    sock = client.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        index = int(client.ns.link_info(client.ifname)["ifindex"])
        solicit = dhcp6.encode(
            dhcp6.Message(
                dhcp6.MsgType.SOLICIT,
                0x010203,
                ((dhcp6.Opt6.CLIENTID, dhcp6.duid_ll(bytes.fromhex(client.mac.replace(":", "")))),),
            )
        )
        for _ in range(200):  # bounded: 200 datagrams to the server's link only
            sock.sendto(solicit, ("ff02::1:2", 547, 0, index))
        for _ in range(200):  # until all 200 are answered or dropped, at most 10 s
            if server.drops["rate_limited"] + sum(server.sent.values()) >= 200:
                break
            await asyncio.sleep(0.05)
        assert server.drops["rate_limited"] >= 150, server.drops
        assert 10 <= sum(server.sent.values()) <= 60, server.sent
    finally:
        sock.close()
        await server.close()


async def test_dhclient_behind_isc_dhcrelay_gets_an_address_from_the_server(
    netns_lan: Lan, tmp_path: Path
) -> None:
    """RELAY-FORW in, RELAY-REPL out to the relay's global address on port 547 (the server's socket
    is pinned to eth0; the reply is routed to the relay on that link)."""
    need("dhclient", "isc-dhcp-client")
    dhcrelay = need("dhcrelay", "isc-dhcp-relay")
    segment = netns_lan.add_relay()
    server_host, relay, client = netns_lan.server, segment.relay, segment.client
    server_host.ns.ip("-6", "addr", "add", f"{SERVER}/64", "dev", "eth0", "nodad")
    relay.ip("-6", "addr", "add", "fd00:215::2/64", "dev", "eth0", "nodad")
    relay.ip("-6", "addr", "add", "fd00:216::1/64", "dev", "eth1", "nodad")
    relay.set_sysctl("net.ipv6.conf.all.forwarding", "1")
    server_host.ns.ip("-6", "route", "add", "fd00:216::/64", "via", "fd00:215::2")
    deadline = time.monotonic() + 20
    for host in (server_host, client, segment.downstream, segment.upstream):
        await link_local_ready(host, deadline)
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, dhcp6.duid_ll(bytes.fromhex("02aabbccdd01")), IPv6Network("fd00:216::/64"),
        pool_first=IPv6Address("fd00:216::1000"), pool_last=IPv6Address("fd00:216::10ff"),
    )  # fmt: skip
    events: list[dhcp.NodeEvent] = []
    server = Dhcp6Server(
        config,
        dhcp6.StaticBoot6Source(IPv6Address(SERVER), f"http://[{SERVER}]:8080", "x"),
        dhcp.StaticReservations({client.mac: dhcp.Reservation(node_id="node-2")}),
        FileLease6Store(tmp_path / "leases6.json"),
        [server_host.ifname],
        socket_factory=lambda: server_host.socket(socket.AF_INET6, socket.SOCK_DGRAM),
        on_event=events.append,
    )
    await server.start()
    argv = [
        dhcrelay,
        "-6",
        "-d",
        "-q",
        "-pf",
        str(tmp_path / "relay.pid"),
        "-l",
        "eth1",
        "-u",
        f"{SERVER}%eth0",
    ]
    relay_proc = relay.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await run_dhclient(client, tmp_path)
    finally:
        relay_proc.terminate()
        relay_proc.wait(10)
        await server.close()
    replies = [e for e in events if e.kind == "dhcp6.reply"]
    assert replies and replies[0].node_id == "node-2", events
    assert IPv6Address(replies[0].ip or "") in IPv6Network("fd00:216::/64")
    assert f"iaaddr {replies[0].ip}" in (tmp_path / "dhclient6.leases").read_text()
    assert server.sent["reply"] >= 1 and not server.shell_drops, server.shell_drops
