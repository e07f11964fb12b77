"""DHCP with discovery: unknown clients are served only when their link is inside discovery.subnets
(DhcpConfig.unknown_networks), and the boot source learns the client's link (ClientInfo.link)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from test_dhcp_core import ETH0, LAN, OTHER, RELAYED, dora
from test_dhcp_samples import ovmf_pxe_discover, udhcpc_discover

from bootforge.netboot.dhcp import (
    BootDecision,
    ClientInfo,
    DhcpConfig,
    DhcpCore,
    MessageType,
    Mode,
    StaticReservations,
    UnknownClients,
    encode,
    parse,
)

STRANGER = bytes.fromhex("0200000000ff")


class Recorder:
    """A boot source that remembers the clients it was asked about."""

    def __init__(self) -> None:
        self.seen: list[ClientInfo] = []

    def boot_for(self, client: ClientInfo, node_id: str | None) -> BootDecision | None:
        self.seen.append(client)
        return None


def core(networks: tuple[IPv4Network, ...], boot: Recorder | None = None) -> DhcpCore:
    config = DhcpConfig(
        Mode.FULL,
        ("eth0",),
        (LAN, RELAYED, OTHER),
        unknown_clients=UnknownClients.DISCOVER,
        unknown_networks=networks,
    )
    return DhcpCore(config, boot or Recorder(), StaticReservations({}))


def test_unknown_clients_only_on_discovery_links() -> None:
    inside = core((IPv4Network("10.213.0.0/24"),))
    ack, _ = dora(inside, udhcpc_discover(STRANGER))
    assert ack.message_type == MessageType.ACK
    outside = core((IPv4Network("10.213.1.0/24"),))
    outcome = outside.receive(udhcpc_discover(STRANGER), ETH0, 1.0)
    assert outcome.dropped == "unknown_client" and outcome.replies == ()


def test_a_relayed_unknown_client_is_placed_by_its_relay() -> None:
    relayed = replace(parse(udhcpc_discover(STRANGER)), giaddr=IPv4Address("10.213.1.1").packed, hops=1)
    inside = core((IPv4Network("10.213.1.0/24"),))
    assert inside.receive(encode(relayed), ETH0, 1.0).dropped is None
    outside = core((IPv4Network("10.213.0.0/24"),))
    assert outside.receive(encode(relayed), ETH0, 1.0).dropped == "unknown_client"


def test_the_boot_source_sees_the_link() -> None:
    boot = Recorder()
    core((), boot).receive(ovmf_pxe_discover(), ETH0, 1.0)  # its MAC is unknown here
    assert [c.link for c in boot.seen] == [IPv4Address("10.213.0.1")]
