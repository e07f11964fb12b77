"""Namespace LANs for tests: a DHCP/TFTP server and clients on one private L2 segment.

Layout of :class:`Lan` (namespace names carry the run prefix ``bft-<pid>-<n>-``); every
``eth*`` is one end of a veth pair whose other end is a port of a bridge in the "switch" ns:

* br0 (the server LAN, no address on the bridge):
  server ``eth0`` 10.213.0.1/24, client ``eth0`` with no address (DHCP configures it), more
  clients from :meth:`Lan.add_client`, and each relay's upstream ``eth0`` 10.213.0.<k+1>/24;
* br<k> (one per :meth:`Lan.add_relay`): the relay's ``eth1`` 10.213.<k>.1/24 (the gateway) and
  client ``eth0`` with no address in ns ``r<k>client``. The relay ns forwards IPv4 and the server
  has a route to 10.213.<k>.0/24 via the relay.

The bridges live in a separate "switch" namespace so the server sees a plain Ethernet port, as it
would on a real network, and a test can capture on ``br0`` without touching the server.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from bootforge.lab.netns import (
    Bridge,
    Endpoint,
    Namespace,
    NetnsError,
    NetnsUnavailable,
    Topology,
    check_available,
    open_socket_in,
    stale_prefixes,
    sweep,
    unique_prefix,
)

TEST_PREFIX_BASE = "bft"
SERVER_SUBNET = IPv4Network("10.213.0.0/24")
SERVER_ADDRESS = IPv4Interface("10.213.0.1/24")


@dataclass(frozen=True)
class Host:
    """One namespace with one interface on a LAN segment."""

    ns: Namespace
    ifname: str
    mac: str
    address: IPv4Interface | None

    @classmethod
    def from_endpoint(cls, ep: Endpoint) -> Host:
        return cls(ep.ns, ep.ifname, ep.mac, ep.address)

    @property
    def name(self) -> str:
        return self.ns.name

    @property
    def ip(self) -> IPv4Address:
        if self.address is None:
            raise ValueError(f"{self.name}/{self.ifname} has no address")
        return self.address.ip

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """A socket created inside this host's namespace."""
        return open_socket_in(self.ns.name, family, type, proto)


@dataclass
class RelayedSubnet:
    """A subnet behind a router ("relay" ns) whose upstream side sits on the server LAN.

    Forwarding is on and the server has a route to ``subnet`` via ``upstream``; the relay agent
    itself (dhcrelay) is the test's to start, e.g. ``relay.popen(["dhcrelay", ...])``.
    """

    lan: Lan
    relay: Namespace
    upstream: Host  # on the server LAN
    downstream: Host  # gateway address of ``subnet`` (the giaddr a relay agent uses)
    bridge: Bridge
    subnet: IPv4Network
    clients: list[Host] = field(default_factory=list)

    @property
    def client(self) -> Host:
        return self.clients[0]

    def add_client(self) -> Host:
        return self.lan.add_client(self.bridge, role=f"r{self.subnet.network_address.packed[2]}client")


@dataclass
class Lan:
    """Server, clients and optional relayed subnets, built on a :class:`Topology`."""

    topo: Topology
    switch: Namespace
    bridge: Bridge
    server: Host
    subnet: IPv4Network = SERVER_SUBNET
    clients: list[Host] = field(default_factory=list)
    relays: list[RelayedSubnet] = field(default_factory=list)
    _counts: dict[str, itertools.count[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, topo: Topology) -> Lan:
        switch = topo.namespace("switch")
        bridge = topo.bridge(switch, "br0")
        server = Host.from_endpoint(topo.attach(bridge, topo.namespace("server"), "eth0", SERVER_ADDRESS))
        lan = cls(topo, switch, bridge, server)
        lan.add_client()
        return lan

    @property
    def client(self) -> Host:
        return self.clients[0]

    def _role(self, base: str) -> str:
        n = next(self._counts.setdefault(base, itertools.count()))
        return base if n == 0 else f"{base}{n}"

    def add_client(self, bridge: Bridge | None = None, role: str = "client") -> Host:
        """A new namespace with ``eth0`` (no address) on ``bridge`` (default: the server LAN)."""
        ns = self.topo.namespace(self._role(role))
        host = Host.from_endpoint(self.topo.attach(bridge or self.bridge, ns, "eth0"))
        if bridge is None or bridge == self.bridge:
            self.clients.append(host)
        return host

    def add_relay(self) -> RelayedSubnet:
        """Router ns with eth0 on the server LAN and eth1 as gateway of 10.213.<k>.0/24."""
        k = len(self.relays) + 1
        subnet = IPv4Network(f"10.213.{k}.0/24")
        ns = self.topo.namespace(self._role("relay"))
        up = self.topo.attach(self.bridge, ns, "eth0", f"10.213.0.{k + 1}/24")
        seg_bridge = self.topo.bridge(self.switch, f"br{k}")
        down = self.topo.attach(seg_bridge, ns, "eth1", IPv4Interface(f"10.213.{k}.1/24"))
        ns.set_sysctl("net.ipv4.ip_forward", "1")
        upstream = Host.from_endpoint(up)
        # The server answers a relayed request by unicast to giaddr, so it needs this route.
        self.server.ns.ip("route", "add", str(subnet), "via", str(upstream.ip))
        seg = RelayedSubnet(self, ns, upstream, Host.from_endpoint(down), seg_bridge, subnet)
        seg.clients.append(seg.add_client())
        self.relays.append(seg)
        return seg


def netns_unavailable_reason() -> str | None:
    """Why namespaces can't be used here (for pytest.skip), or None; sweeps dead test runs."""
    try:
        check_available()
        for prefix in stale_prefixes(TEST_PREFIX_BASE):
            sweep(prefix)
        with Topology(unique_prefix(TEST_PREFIX_BASE)) as topo:
            topo.namespace("probe")
    except NetnsUnavailable as exc:
        return f"needs {exc}"
    except NetnsError as exc:
        return f"needs working network namespaces ({exc})"
    return None


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip unless we are root, have `ip`, and can create a namespace."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def netns_topology(netns_available: None) -> Iterator[Topology]:
    """An empty :class:`Topology` (prefix ``bft-<pid>-<n>-``), torn down after the test."""
    with Topology(unique_prefix(TEST_PREFIX_BASE)) as topo:
        yield topo


@pytest.fixture
def netns_lan(netns_topology: Topology) -> Lan:
    """Server ns (eth0 10.213.0.1/24) and one client ns (eth0, no address) on bridge br0."""
    return Lan.build(netns_topology)


@pytest.fixture
def netns_relayed_lan(netns_lan: Lan) -> RelayedSubnet:
    """``netns_lan`` plus a relay ns routing to 10.213.1.0/24, with one client there."""
    return netns_lan.add_relay()


async def link_local_ready(host: Host, deadline: float) -> str:
    """The host's link-local address once duplicate address detection has finished with it (bounded
    by `deadline`, a time.monotonic() value)."""
    while True:
        out = host.ns.ip("-6", "-o", "addr", "show", "dev", host.ifname, "scope", "link").stdout
        if out and "tentative" not in out:
            return str(out.split()[3].split("/")[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}: no usable IPv6 link-local address: {out!r}")
        await asyncio.sleep(0.05)
