"""/metrics counts DHCPv6 like DHCPv4: ISC `dhclient -6` (a client bootforge did not write) leases
and releases an address from bootforge's DHCPv6 server in network namespaces, a few malformed or
misdirected datagrams follow, and the exposition, read back with prometheus_client's own parser,
shows the messages by type in and out, the drops by reason, the lease commits and the leases by state.
"""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.daemons import stop_daemon
from support.netns import Host, Lan, link_local_ready
from support.tools import need

from bootforge.netboot import dhcp, dhcp6
from bootforge.observe.metrics import Metrics
from bootforge.servers.dhcp6 import Dhcp6Server, FileLease6Store

pytestmark = pytest.mark.netns

PREFIX = IPv6Network("fd00:217::/64")
SERVER = "fd00:217::1"


async def dhclient(client: Host, tmp_path: Path, *extra: str) -> None:
    argv = [need("dhclient", "isc-dhcp-client"), "-6", "-1", "-v", "-sf", "/bin/true"]
    pidfile = tmp_path / "dhclient6.pid"
    argv += ["-lf", str(tmp_path / "dhclient6.leases"), "-pf", str(pidfile), *extra, client.ifname]
    got = None
    try:
        got = await asyncio.to_thread(client.ns.run, argv, check=False, timeout=40)
    finally:
        await asyncio.to_thread(stop_daemon, pidfile, got is not None and got.returncode == 0 and not extra)
    assert got.returncode == 0, got.stderr


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the exposition, parsed by prometheus_client: name -> labels -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples.items()}


async def test_dhcp6_messages_drops_and_leases_reach_metrics(netns_lan: Lan, tmp_path: Path) -> None:
    need("dhclient", "isc-dhcp-client")
    server_host, client = netns_lan.server, netns_lan.client
    server_host.ns.ip("-6", "addr", "add", f"{SERVER}/64", "dev", "eth0", "nodad")
    deadline = time.monotonic() + 20
    await link_local_ready(server_host, deadline)
    await link_local_ready(client, deadline)
    config = dhcp6.Dhcp6Config(
        dhcp6.Mode6.FULL, dhcp6.duid_ll(bytes.fromhex("02aabbccdd01")), PREFIX,
        pool_first=IPv6Address("fd00:217::1000"), pool_last=IPv6Address("fd00:217::10ff"),
    )  # fmt: skip
    server = Dhcp6Server(
        config,
        dhcp6.StaticBoot6Source(IPv6Address(SERVER), f"http://[{SERVER}]:8080", "x"),
        dhcp.StaticReservations({client.mac: dhcp.Reservation(node_id="node-1")}),
        FileLease6Store(tmp_path / "leases6.json"),
        [server_host.ifname],
        socket_factory=lambda: server_host.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    )
    metrics = Metrics()
    metrics.watch_netboot([server])
    await server.start()
    sock = client.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        before = scrape(metrics)
        assert set(by(before["bootforge_dhcp6_received_total"], "type").values()) == {0.0}
        assert "solicit" in by(before["bootforge_dhcp6_received_total"], "type")

        await dhclient(client, tmp_path)
        bound = scrape(metrics)
        received = by(bound["bootforge_dhcp6_received_total"], "type")
        assert received["solicit"] >= 1 and received["request"] >= 1, received
        replies = by(bound["bootforge_dhcp6_replies_total"], "kind")
        assert replies and sum(replies.values()) >= 2, replies
        assert by(bound["bootforge_dhcp6_leases"], "state") == {"bound": 1.0}, bound["bootforge_dhcp6_leases"]
        commits = bound["bootforge_dhcp6_lease_commits_total"][()]
        assert commits >= 1

        await dhclient(client, tmp_path, "-r")  # RELEASE the address
        for _ in range(100):  # until the release's commit has returned (the file written): at most 5 s
            released = scrape(metrics)
            if released["bootforge_dhcp6_lease_commits_total"][()] > commits:
                break
            await asyncio.sleep(0.05)
        assert by(released["bootforge_dhcp6_leases"], "state") == {"released": 1.0}, released
        assert by(released["bootforge_dhcp6_received_total"], "type")["release"] >= 1
        assert released["bootforge_dhcp6_lease_commits_total"][()] > commits

        # Strangers' datagrams: a type no DHCPv6 message has, a server's ADVERTISE, a truncated relay.
        index = int(client.ns.link_info(client.ifname)["ifindex"])
        junk = [b"\xff\x00\x00\x01", dhcp6.encode(dhcp6.Message(dhcp6.MsgType.ADVERTISE, 7, ())), b"\x0c\x00"]
        drops_before = sum(by(released.get("bootforge_dhcp6_drops_total", {}), "reason").values())
        for datagram in junk:
            sock.sendto(datagram, ("ff02::1:2", 547, 0, index))
        for _ in range(100):  # until all three are counted, at most 5 s
            after = scrape(metrics)
            drops = by(after.get("bootforge_dhcp6_drops_total", {}), "reason")
            if sum(drops.values()) >= drops_before + 3:
                break
            await asyncio.sleep(0.05)
        assert sum(drops.values()) == drops_before + 3, drops
        assert drops.get("not_request", 0) >= 1, drops
        received = by(after["bootforge_dhcp6_received_total"], "type")
        assert received["unknown"] == 1 and received["advertise"] == 1 and received["relay_forw"] >= 1, (
            received
        )
        assert sum(by(after["bootforge_dhcp6_replies_total"], "kind").values()) == sum(
            by(released["bootforge_dhcp6_replies_total"], "kind").values()
        )
    finally:
        sock.close()
        await server.close()
