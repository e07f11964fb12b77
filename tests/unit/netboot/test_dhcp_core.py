"""DhcpCore end to end without sockets: full-mode DORA and the rest of RFC 2131, relays,
proxyDHCP per firmware, boot-loop guard, unknown clients, reply sizing, events and drops."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dhcp_samples import (
    MAC,
    http_boot_discover,
    ipxe_discover,
    message,
    ovmf_pxe_discover,
    ovmf_pxe_request,
    tlv,
    udhcpc_discover,
)

from bootforge.netboot.dhcp import (
    MIN_REPLY_SIZE,
    BootDecision,
    ClientInfo,
    DhcpConfig,
    DhcpCore,
    DhcpPacket,
    Interface,
    LeaseState,
    MessageType,
    Mode,
    Outcome,
    Pool,
    Reservation,
    StaticBootSource,
    StaticReservations,
    Subnet,
    UnknownClients,
    encode,
    encode_relay_agent_info,
    parse,
)

A = IPv4Address
SERVER = A("10.213.0.1")
ETH0 = Interface("eth0", SERVER, mtu=1500)
MAC_STR = "52:54:00:12:34:56"
AGENT_MAC = bytes.fromhex("5254000000aa")
LAN = Subnet(
    IPv4Network("10.213.0.0/24"),
    (Pool(A("10.213.0.100"), A("10.213.0.199")),),
    routers=(SERVER,),
    dns_servers=(SERVER,),
    lease_time=3600,
)
RELAYED = Subnet(IPv4Network("10.213.1.0/24"), (Pool(A("10.213.1.100"), A("10.213.1.199")),))
OTHER = Subnet(IPv4Network("10.213.9.0/24"), (Pool(A("10.213.9.100"), A("10.213.9.199")),))
BOOT = StaticBootSource(SERVER, "http://10.213.0.1:8080/boot", "http://10.213.0.1:8080/ipxe/{mac}")
KNOWN = StaticReservations(
    {
        MAC_STR: Reservation("node-1", hostname="node-1"),
        "52:54:00:00:00:aa": Reservation("node-2", ip=A("10.213.0.42")),
    }
)


def full(**kw: object) -> DhcpCore:
    config = DhcpConfig(Mode.FULL, ("eth0",), (LAN, RELAYED, OTHER), **kw)  # type: ignore[arg-type]
    return DhcpCore(config, BOOT, KNOWN)


def proxy() -> DhcpCore:
    return DhcpCore(DhcpConfig(Mode.PROXY, ("eth0",)), BOOT, KNOWN)


def only_reply(outcome: Outcome) -> tuple[DhcpPacket, Outcome]:
    assert outcome.dropped is None, outcome.dropped
    assert len(outcome.replies) == 1
    return parse(outcome.replies[0].data), outcome


def dora(core: DhcpCore, discover: bytes, now: float = 100.0) -> tuple[DhcpPacket, Outcome]:
    """DISCOVER, then a REQUEST carrying the same client options (as real clients do)."""
    offer, _ = only_reply(core.receive(discover, ETH0, now))
    sent = parse(discover)
    options = dict(sent.options) | {53: b"\x03", 54: offer.options[54], 50: offer.yiaddr}
    request = encode(replace(sent, options=options))
    return only_reply(core.receive(request, ETH0, now + 1))


def wire_order(data: bytes) -> list[int]:
    """Option codes in the order they appear in the options field."""
    codes, i = [], 240
    while data[i] != 255:
        codes.append(data[i])
        i += 2 + data[i + 1]
    return codes


# -- full mode ----------------------------------------------------------------------------------


def test_ovmf_full_dora_offer_is_not_held_and_ack_waits_for_commit() -> None:
    core = full()
    offer, outcome = only_reply(core.receive(ovmf_pxe_discover(), ETH0, 100.0))
    assert offer.message_type == MessageType.OFFER and not outcome.hold and not outcome.records
    assert offer.yiaddr == A("10.213.0.100").packed
    assert offer.file == b"ipxe.efi" and offer.siaddr == SERVER.packed
    assert offer.options[54] == SERVER.packed and offer.options[12] == b"node-1"
    assert 60 not in offer.options  # with 60=PXEClient and no 43, edk2 would wait on port 4011
    reply = outcome.replies[0]
    assert (reply.address, reply.port) == ("255.255.255.255", 68)
    ack, outcome = only_reply(core.receive(ovmf_pxe_request(SERVER.packed, offer.yiaddr), ETH0, 101.0))
    assert ack.message_type == MessageType.ACK and outcome.hold
    assert [r.state for r in outcome.records] == [LeaseState.BOUND]
    assert [e.kind for e in outcome.events] == ["dhcp.ack"]
    assert outcome.events[0].node_id == "node-1" and outcome.events[0].ip == "10.213.0.100"


def test_reply_size_follows_option_57_but_not_beyond_the_mtu() -> None:
    core = full()
    offer = core.receive(ovmf_pxe_discover(), ETH0, 100.0).replies[0].data
    assert MIN_REPLY_SIZE <= len(offer) <= 1472 - 28
    # OVMF's REQUEST says 57=65280; a huge option must still be refused rather than sent big.
    small_mtu = Interface("eth0", SERVER, mtu=576)
    request = ovmf_pxe_request(SERVER.packed, A("10.213.0.100").packed)
    ack = core.receive(request, small_mtu, 101.0).replies[0].data
    assert MIN_REPLY_SIZE <= len(ack) <= 548


def test_udhcpc_known_agent_gets_its_reserved_address_and_no_boot_info() -> None:
    ack, outcome = dora(full(), udhcpc_discover(AGENT_MAC))
    assert ack.yiaddr == A("10.213.0.42").packed
    assert ack.file == b"" and 67 not in ack.options
    assert ack.options[61] == b"\x01" + AGENT_MAC  # RFC 6842 echo
    assert outcome.events[0].node_id == "node-2"


def test_unknown_mac_is_ignored_by_default_and_served_in_discovery_mode() -> None:
    stranger = bytes.fromhex("0200000000ff")
    core = full()
    assert core.receive(udhcpc_discover(stranger), ETH0, 1.0).dropped == "unknown_client"
    assert core.drops["unknown_client"] == 1
    ack, outcome = dora(full(unknown_clients=UnknownClients.DISCOVER), udhcpc_discover(stranger))
    assert ack.message_type == MessageType.ACK
    assert outcome.events == ()  # not tied to a node


def test_ipxe_gets_the_script_url_never_a_loader() -> None:
    ack, outcome = dora(full(), ipxe_discover())
    url = b"http://10.213.0.1:8080/ipxe/52:54:00:12:34:56"
    assert ack.file == url and ack.options[67] == url  # iPXE asks for 67
    assert "ipxe" in outcome.events[0].detail
    # no-pxedhcp: iPXE takes the offer at once instead of waiting ~3 s for ProxyDHCP offers.
    assert ack.options[175] == bytes([176, 1, 1])


def test_only_ipxe_is_told_not_to_wait_for_proxy_dhcp() -> None:
    # Firmware PXE and a plain client get no iPXE options.
    for discover in (ovmf_pxe_discover(), udhcpc_discover(AGENT_MAC)):
        ack, _ = dora(full(), discover)
        assert 175 not in ack.options


class TftpOnly:
    """A misconfigured policy that would send iPXE back to TFTP."""

    def boot_for(self, client: ClientInfo, node_id: str | None) -> BootDecision | None:
        return BootDecision("ipxe.efi", SERVER)


def test_loop_guard_drops_a_tftp_answer_to_ipxe() -> None:
    config = DhcpConfig(Mode.FULL, ("eth0",), (LAN,))
    core = DhcpCore(config, TftpOnly(), KNOWN)
    assert core.receive(ipxe_discover(), ETH0, 1.0).dropped == "boot_needs_url"
    assert core.receive(http_boot_discover(), ETH0, 1.0).dropped == "boot_needs_url"
    assert core.receive(ovmf_pxe_discover(), ETH0, 1.0).dropped is None
    dropped = core.receive(ipxe_discover(), ETH0, 2.0)
    assert [(e.node_id, e.kind, e.detail) for e in dropped.events] == [
        ("node-1", "dhcp.dropped", "boot_needs_url")
    ]


def test_uefi_http_boot_full_mode_echoes_httpclient_and_a_url() -> None:
    offer, _ = only_reply(full().receive(http_boot_discover(), ETH0, 1.0))
    assert offer.options[60] == b"HTTPClient"
    assert offer.options[67] == b"http://10.213.0.1:8080/boot/ipxe.efi"


def test_request_for_another_server_releases_nothing_and_is_silent() -> None:
    core = full()
    core.receive(ovmf_pxe_discover(), ETH0, 1.0)
    other = ovmf_pxe_request(bytes([10, 213, 0, 9]), A("10.213.0.100").packed)
    assert core.receive(other, ETH0, 2.0).dropped == "other_server"


def test_request_for_a_different_address_is_naked() -> None:
    core = full()
    core.receive(ovmf_pxe_discover(), ETH0, 1.0)
    bad = ovmf_pxe_request(SERVER.packed, A("10.213.0.150").packed)
    nak, outcome = only_reply(core.receive(bad, ETH0, 2.0))
    assert nak.message_type == MessageType.NAK and nak.yiaddr == bytes(4)
    assert outcome.replies[0].address == "255.255.255.255" and not outcome.records


def test_init_reboot_acks_a_known_binding_and_is_silent_for_strangers() -> None:
    core = full()
    ack, _ = dora(core, udhcpc_discover(AGENT_MAC))
    reboot = message([tlv(53, b"\x03"), tlv(50, ack.yiaddr)], mac=AGENT_MAC, xid=5, flags=0)
    again, outcome = only_reply(core.receive(reboot, ETH0, 500.0))
    assert again.message_type == MessageType.ACK and outcome.hold
    stranger = message([tlv(53, b"\x03"), tlv(50, ack.yiaddr)], mac=MAC, xid=6)
    assert core.receive(stranger, ETH0, 500.0).dropped == "unknown_binding"
    wrong_net = message([tlv(53, b"\x03"), tlv(50, bytes([192, 168, 1, 9]))], mac=MAC, xid=7)
    assert parse(core.receive(wrong_net, ETH0, 500.0).replies[0].data).message_type == 6


def test_renewal_unicasts_to_ciaddr_and_extends_the_lease() -> None:
    core = full()
    ack, _ = dora(core, udhcpc_discover(AGENT_MAC))
    renew = message([tlv(53, b"\x03")], mac=AGENT_MAC, xid=9, flags=0, ciaddr=ack.yiaddr)
    reply, outcome = only_reply(core.receive(renew, ETH0, 2000.0))
    assert reply.message_type == MessageType.ACK and reply.ciaddr == ack.yiaddr
    assert (outcome.replies[0].address, outcome.replies[0].port) == ("10.213.0.42", 68)
    assert outcome.records[0].expires == 2000.0 + 3600


def test_renewal_from_behind_a_relay_is_judged_by_ciaddr() -> None:
    core = full()
    discover = message([tlv(53, b"\x01")], mac=AGENT_MAC, xid=1, giaddr=GIADDR, hops=1)
    offer, _ = only_reply(core.receive(discover, ETH0, 1.0))
    request = message(
        [tlv(53, b"\x03"), tlv(54, SERVER.packed), tlv(50, offer.yiaddr)],
        mac=AGENT_MAC, xid=2, giaddr=GIADDR, hops=1,
    )  # fmt: skip
    assert only_reply(core.receive(request, ETH0, 2.0))[0].message_type == MessageType.ACK
    # T1: the client unicasts to us directly, no relay; it must not be NAKed for being off-LAN.
    renew = message([tlv(53, b"\x03")], mac=AGENT_MAC, xid=3, flags=0, ciaddr=offer.yiaddr)
    ack, outcome = only_reply(core.receive(renew, ETH0, 1000.0))
    assert ack.message_type == MessageType.ACK and ack.yiaddr == offer.yiaddr
    assert outcome.replies[0].address == str(IPv4Address(offer.yiaddr))


def test_release_and_decline() -> None:
    core = full()
    ack, _ = dora(core, udhcpc_discover(AGENT_MAC))
    server = tlv(54, SERVER.packed)
    release = message([tlv(53, b"\x07"), server], mac=AGENT_MAC, xid=2, ciaddr=ack.yiaddr)
    outcome = core.receive(release, ETH0, 300.0)
    assert outcome.replies == () and outcome.records[0].state is LeaseState.RELEASED
    assert [e.kind for e in outcome.events] == ["dhcp.release"]
    ack2, _ = dora(core, ovmf_pxe_discover(), now=400.0)
    decline = message([tlv(53, b"\x04"), server, tlv(50, ack2.yiaddr)], xid=3)
    outcome = core.receive(decline, ETH0, 401.0)
    assert outcome.records[0].state is LeaseState.DECLINED and outcome.records[0].mac == ""
    offer, _ = only_reply(core.receive(ovmf_pxe_discover(), ETH0, 402.0))
    assert offer.yiaddr != ack2.yiaddr  # the conflicting address is quarantined


def test_inform_answers_configuration_without_a_lease() -> None:
    ciaddr = bytes([10, 213, 0, 77])
    inform = message([tlv(53, b"\x08")], mac=AGENT_MAC, xid=4, flags=0, ciaddr=ciaddr)
    ack, outcome = only_reply(full().receive(inform, ETH0, 1.0))
    assert ack.message_type == MessageType.ACK and ack.yiaddr == bytes(4)
    assert 51 not in ack.options and ack.options[1] == bytes([255, 255, 255, 0])
    assert outcome.replies[0].address == "10.213.0.77" and not outcome.hold


def test_sweep_expires_bound_leases_with_a_node_event() -> None:
    core = full()
    dora(core, udhcpc_discover(AGENT_MAC), now=0.0)
    outcome = core.sweep(10_000.0)
    assert [r.state for r in outcome.records] == [LeaseState.EXPIRED]
    assert [e.kind for e in outcome.events] == ["dhcp.expired"]


# -- relays -------------------------------------------------------------------------------------

GIADDR = bytes([10, 213, 1, 1])
OPT82 = encode_relay_agent_info([(1, b"eth1"), (2, b"relay-1")])


@pytest.mark.parametrize(
    ("extra", "subnet_prefix"),
    [
        pytest.param([], b"\x0a\xd5\x01", id="by-giaddr"),
        pytest.param([tlv(118, bytes([10, 213, 9, 0]))], b"\x0a\xd5\x09", id="by-option-118"),
        pytest.param(
            [tlv(82, encode_relay_agent_info([(5, bytes([10, 213, 9, 0]))]))],
            b"\x0a\xd5\x09",
            id="by-82-link-selection",
        ),
    ],
)
def test_relayed_subnet_selection(extra: list[bytes], subnet_prefix: bytes) -> None:
    discover = message([tlv(53, b"\x01"), *extra], mac=AGENT_MAC, xid=1, giaddr=GIADDR, hops=1)
    offer, outcome = only_reply(full().receive(discover, ETH0, 1.0))
    assert offer.yiaddr[:3] == subnet_prefix and offer.giaddr == GIADDR
    assert (outcome.replies[0].address, outcome.replies[0].port) == ("10.213.1.1", 67)


def test_option_82_is_echoed_verbatim_and_last() -> None:
    discover = message([tlv(53, b"\x01"), tlv(82, OPT82)], mac=AGENT_MAC, xid=1, giaddr=GIADDR)
    data = full().receive(discover, ETH0, 1.0).replies[0].data
    assert wire_order(data)[-1] == 82
    assert parse(data).options[82] == OPT82


def test_relay_faults_are_counted_drops() -> None:
    core = full()
    hops = message([tlv(53, b"\x01")], mac=AGENT_MAC, xid=1, giaddr=GIADDR, hops=17)
    assert core.receive(hops, ETH0, 1.0).dropped == "too_many_hops"
    orphan82 = message([tlv(53, b"\x01"), tlv(82, OPT82)], mac=AGENT_MAC, xid=1)
    assert core.receive(orphan82, ETH0, 1.0).dropped == "relay_info_without_giaddr"
    nowhere = message([tlv(53, b"\x01")], mac=AGENT_MAC, xid=1, giaddr=bytes([192, 0, 2, 1]))
    assert core.receive(nowhere, ETH0, 1.0).dropped == "no_subnet"
    assert core.drops == {"too_many_hops": 1, "relay_info_without_giaddr": 1, "no_subnet": 1}


# -- proxyDHCP ----------------------------------------------------------------------------------


def test_proxy_offer_for_uefi_pxe_is_binl_and_then_acks_on_4011() -> None:
    core = proxy()
    offer, outcome = only_reply(core.receive(ovmf_pxe_discover(), ETH0, 1.0))
    assert offer.message_type == MessageType.OFFER and offer.yiaddr == bytes(4)
    assert offer.options[60] == b"PXEClient" and offer.options[97] == bytes(17)
    assert 43 not in offer.options and offer.file == b"ipxe.efi"
    assert outcome.events[0].kind == "dhcp.proxy_offer"
    binl = message(
        [tlv(53, b"\x03"), tlv(93, b"\x00\x07"), tlv(97, bytes(17)),
         tlv(60, b"PXEClient:Arch:00007:UNDI:003000")],
        ciaddr=bytes([10, 213, 0, 150]), xid=2,
    )  # fmt: skip
    outcome = core.receive(binl, ETH0, 2.0, src=("10.213.0.150", 4011), port=4011)
    ack, _ = only_reply(outcome)
    assert ack.message_type == MessageType.ACK and ack.file == b"ipxe.efi"
    assert ack.siaddr == SERVER.packed and ack.options[60] == b"PXEClient"
    assert (outcome.replies[0].address, outcome.replies[0].port) == ("10.213.0.150", 4011)


def test_proxy_offer_for_bios_bypasses_discovery() -> None:
    bios = message(
        [tlv(53, b"\x01"), tlv(93, b"\x00\x00"), tlv(60, b"PXEClient:Arch:00000:UNDI:002001")],
        xid=1,
    )
    offer, _ = only_reply(proxy().receive(bios, ETH0, 1.0))
    assert offer.options[43] == b"\x06\x01\x08\xff" and offer.file == b"undionly.kpxe"


def test_proxy_http_boot_offer_is_an_http_offer() -> None:
    offer, _ = only_reply(proxy().receive(http_boot_discover(19), ETH0, 1.0))
    assert offer.options[60] == b"HTTPClient" and 43 not in offer.options
    assert offer.options[67] == b"http://10.213.0.1:8080/boot/ipxe-arm64.efi"


def test_proxy_never_hands_out_addresses_and_ignores_other_clients() -> None:
    core = proxy()
    assert core.receive(udhcpc_discover(AGENT_MAC), ETH0, 1.0).dropped == "not_netboot"
    request = ovmf_pxe_request(bytes([10, 213, 0, 9]), bytes([10, 213, 0, 150]))
    seen = core.receive(request, ETH0, 1.0)  # for the site's server: noted, never answered
    assert seen.dropped == "other_server" and seen.replies == ()
    assert all(r.port != 68 or parse(r.data).yiaddr == bytes(4) for r in
               core.receive(ipxe_discover(), ETH0, 1.0).replies)  # fmt: skip


# -- nothing a peer sends escapes as an exception -----------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=600), st.sampled_from([67, 4011]))
def test_random_datagrams_end_as_counted_drops(data: bytes, port: int) -> None:
    for core in (full(unknown_clients=UnknownClients.DISCOVER), proxy()):
        outcome = core.receive(data, ETH0, 1.0, port=port)
        assert sum(core.drops.values()) == (outcome.dropped is not None)
        if outcome.dropped is not None:
            assert outcome.replies == () and outcome.records == ()


@settings(max_examples=200)
@given(st.data())
def test_mutated_real_messages_never_raise(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from([ovmf_pxe_discover(), ipxe_discover(),
                                        http_boot_discover(), udhcpc_discover(MAC)]))  # fmt: skip
    cut = data.draw(st.integers(0, len(sample)))
    noise = data.draw(st.binary(max_size=40))
    at = data.draw(st.integers(0, cut))
    mutated = sample[:at] + noise + sample[at:cut]
    for core in (full(unknown_clients=UnknownClients.DISCOVER), proxy()):
        core.receive(mutated, ETH0, 1.0)
        core.receive(mutated, ETH0, 2.0, src=("10.213.0.5", 4011), port=4011)
