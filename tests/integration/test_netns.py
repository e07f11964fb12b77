"""bootforge.lab.netns and the namespace LAN fixtures, against the real kernel."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from ipaddress import IPv4Address
from typing import Any, cast

import pytest
from support.netns import TEST_PREFIX_BASE, Lan, RelayedSubnet

from bootforge.lab.netns import (
    Namespace,
    NetnsError,
    SocketFactory,
    Topology,
    list_namespaces,
    open_socket_in,
    sweep,
    unique_prefix,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_available")]


def host_link_names() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return [str(link["ifname"]) for link in json.loads(out.stdout)]


def leftovers(prefix: str) -> list[str]:
    names = list_namespaces() + host_link_names()
    return [n for n in names if n.startswith(prefix)]


def ping(src: Namespace, dst: IPv4Address) -> subprocess.CompletedProcess[str]:
    if shutil.which("ping") is None:
        pytest.skip("needs ping (Debian package iputils-ping)")
    return src.run(["ping", "-c", "1", "-W", "5", str(dst)], check=False)


def udp_roundtrip(sender: socket.socket, receiver: socket.socket, dst: tuple[str, int]) -> bytes:
    receiver.settimeout(10)
    sender.sendto(b"bootforge", dst)
    data, _ = receiver.recvfrom(64)
    return data


def test_lan_has_the_documented_shape(netns_lan: Lan) -> None:
    assert str(netns_lan.server.address) == "10.213.0.1/24"
    assert netns_lan.client.address is None
    out = netns_lan.client.ns.ip("-j", "addr", "show", "dev", "eth0").stdout
    inet = [a for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"]
    assert inet == []
    for host in (netns_lan.server, netns_lan.client):
        assert host.ns.link_info("eth0")["operstate"] in {"UP", "UNKNOWN"}
        assert host.name.startswith(netns_lan.topo.prefix)
    assert netns_lan.topo.prefix.startswith(f"{TEST_PREFIX_BASE}-")


def test_ping_across_bridge(netns_lan: Lan) -> None:
    client = netns_lan.client
    client.ns.ip("addr", "add", "10.213.0.50/24", "dev", client.ifname)
    result = ping(client.ns, netns_lan.server.ip)
    assert result.returncode == 0, result.stdout + result.stderr


def test_broadcast_reaches_server_like_dhcp(netns_lan: Lan) -> None:
    # A DHCP client has no address yet: it sends from 0.0.0.0 to the broadcast address.
    server = netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = netns_lan.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind(("0.0.0.0", 6767))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        assert udp_roundtrip(client, server, ("255.255.255.255", 6767)) == b"bootforge"


def test_open_socket_in_binds_namespace_only_address(netns_lan: Lan) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError):
        outside.bind(("10.213.0.1", 0))  # the host has no such address
    inside = open_socket_in(netns_lan.server.name, socket.AF_INET, socket.SOCK_DGRAM)
    with inside:
        inside.bind(("10.213.0.1", 0))
        netns_lan.client.ns.ip("addr", "add", "10.213.0.60/24", "dev", "eth0")
        with netns_lan.client.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            assert udp_roundtrip(sender, inside, inside.getsockname()) == b"bootforge"


def test_calling_thread_stays_in_host_namespace(netns_lan: Lan) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    assert os.readlink("/proc/thread-self/ns/net") == before
    assert os.stat(netns_lan.server.ns.path).st_ino != os.stat("/proc/thread-self/ns/net").st_ino


def test_more_clients(netns_lan: Lan) -> None:
    second = netns_lan.add_client()
    assert len(netns_lan.clients) == 2
    assert second.name != netns_lan.client.name
    assert second.mac != netns_lan.client.mac
    second.ns.ip("addr", "add", "10.213.0.70/24", "dev", "eth0")
    assert ping(second.ns, netns_lan.server.ip).returncode == 0


def test_relay_routes_between_subnets(netns_relayed_lan: RelayedSubnet) -> None:
    seg = netns_relayed_lan
    assert str(seg.subnet) == "10.213.1.0/24"
    assert str(seg.downstream.address) == "10.213.1.1/24"
    assert seg.upstream.ip in seg.lan.subnet
    assert seg.client.address is None
    # What a DHCP client does after a relayed lease: address plus default route via giaddr.
    seg.client.ns.ip("addr", "add", "10.213.1.100/24", "dev", "eth0")
    seg.client.ns.ip("route", "add", "default", "via", str(seg.downstream.ip))
    result = ping(seg.client.ns, seg.lan.server.ip)
    assert result.returncode == 0, result.stdout + result.stderr


def test_teardown_removes_everything() -> None:
    with Topology(unique_prefix(TEST_PREFIX_BASE)) as topo:
        prefix = topo.prefix
        lan = Lan.build(topo)
        lan.add_relay()
        topo.tap(lan.switch, "tap0", lan.bridge)
        proc = lan.server.ns.popen(["sleep", "600"])
        assert len(leftovers(prefix)) == 5  # switch, server, client, relay, r1client
    assert proc.poll() is not None
    assert leftovers(prefix) == []


def test_teardown_after_failure_removes_everything() -> None:
    prefix = unique_prefix(TEST_PREFIX_BASE)
    with pytest.raises(NetnsError), Topology(prefix) as topo:
        ns = topo.namespace("a")
        topo.attach(topo.bridge(ns), ns, "eth0", "10.213.0.1/24")
        topo.attach(topo.bridge(ns, "br1"), ns, "eth0")  # duplicate name: ip fails
    assert leftovers(prefix) == []


def test_sweep_removes_leftovers_of_a_dead_run() -> None:
    prefix = unique_prefix(TEST_PREFIX_BASE)
    other = unique_prefix(TEST_PREFIX_BASE)
    dead = Topology(prefix)  # never closed, as if its process had been killed
    keep = Topology(other)
    try:
        Lan.build(dead)
        keep.namespace("alive")
        removed = sweep(prefix)
        assert sorted(removed) == sorted(ns.name for ns in dead.namespaces)
        assert leftovers(prefix) == []
        assert leftovers(other) == [f"{other}alive"]
    finally:
        keep.close()
        dead.close()


@pytest.mark.parametrize("prefix", ["", "bf", "bf-", "bf-1", "../x-", "a b-"])
def test_sweep_refuses_broad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        sweep(prefix)


async def test_asyncio_server_serves_inside_namespace(netns_lan: Lan) -> None:
    # How the DHCP/TFTP tests run an in-process server: hand the loop a socket made in the ns.
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # 3.11's selector datagram transport does not subclass DatagramTransport.
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            self.transport.sendto(data.upper(), addr)

    sock = netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("10.213.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
    try:
        netns_lan.client.ns.ip("addr", "add", "10.213.0.80/24", "dev", "eth0")
        client = netns_lan.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        with client:
            await loop.sock_sendto(client, b"ping", sock.getsockname())
            reply = await asyncio.wait_for(loop.sock_recv(client, 64), timeout=10)
        assert reply == b"PING"
    finally:
        transport.close()


def test_socket_factory_makes_sockets_inside(netns_lan: Lan) -> None:
    with SocketFactory(netns_lan.server.name) as factory:
        socks = [factory.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for sock in socks:
            with sock:
                sock.bind(("10.213.0.1", 0))  # exists only inside the server namespace
    with pytest.raises(RuntimeError, match="closed"):
        factory.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_missing_namespace_is_a_clear_error() -> None:
    missing = f"{unique_prefix(TEST_PREFIX_BASE)}missing"
    with pytest.raises(FileNotFoundError, match=missing):
        open_socket_in(missing, socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(FileNotFoundError, match=missing):
        SocketFactory(missing)
