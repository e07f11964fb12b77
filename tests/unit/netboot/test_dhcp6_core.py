"""Dhcp6Core against real clients' messages: full mode (addresses from the pool, boot URLs by
architecture, leases through their states), proxy-style mode, relays, and the drops."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from dhcp6_fuzz import BOOT6, KNOWN, PREFIX, SERVER, full_config
from dhcp6_samples import (
    MAC,
    SERVER_DUID,
    UNKNOWN_MAC,
    dhclient_message,
    dhclient_solicit,
    duid_ll,
    duid_llt,
    ia_na,
    information_request,
    ipxe_solicit,
    ovmf_request,
    ovmf_solicit,
    relay_forw,
)

from bootforge.netboot import dhcp, dhcp6
from bootforge.netboot.dhcp6 import MsgType, Opt6

CLIENT = ("fe80::5054:ff:fe12:3456", 546)


def core(**overrides: object) -> dhcp6.Dhcp6Core:
    return dhcp6.Dhcp6Core(full_config(**overrides), BOOT6, KNOWN)


def proxy() -> dhcp6.Dhcp6Core:
    return dhcp6.Dhcp6Core(dhcp6.Dhcp6Config(dhcp6.Mode6.PROXY, SERVER_DUID, PREFIX), BOOT6, KNOWN)


def answer(outcome: dhcp6.Outcome6) -> dhcp6.Message:
    assert outcome.dropped is None, outcome
    (reply,) = outcome.replies
    message = dhcp6.parse(reply.data)
    assert isinstance(message, dhcp6.Message)
    return message


def address_of(message: dhcp6.Message) -> bytes:
    (ia,) = [dhcp6.decode_ia_na(v) for v in message.all(Opt6.IA_NA)]
    (address,) = ia.addresses()
    return address.address


def url_of(message: dhcp6.Message) -> str | None:
    raw = message.get(Opt6.BOOTFILE_URL)
    return raw.decode() if raw is not None else None


@pytest.mark.parametrize(
    ("arch", "url"),
    [
        (0x07, "tftp://[fd00::1]/ipxe.efi"),
        (0x09, "tftp://[fd00::1]/ipxe.efi"),
        (0x10, "http://[fd00::1]:8080/boot/ipxe.efi"),
        (0x0B, "tftp://[fd00::1]/ipxe-arm64.efi"),
        (0x13, "http://[fd00::1]:8080/boot/ipxe-arm64.efi"),
    ],
)
def test_solicit_gets_an_address_from_the_pool_and_the_boot_url_for_its_arch(arch: int, url: str) -> None:
    server = core()
    outcome = server.receive(ovmf_solicit(arch, duid_ll()), "eth0", 100.0, src=CLIENT)
    advertise = answer(outcome)
    assert advertise.msg_type == MsgType.ADVERTISE and advertise.transaction_id == 0x3A1F02
    assert advertise.get(Opt6.SERVERID) == SERVER_DUID and advertise.get(Opt6.CLIENTID) == duid_ll()
    assert IPv6Address(address_of(advertise)) in PREFIX
    assert url_of(advertise) == url
    assert outcome.replies[0].address == CLIENT[0] and outcome.replies[0].port == 546
    assert not outcome.hold and outcome.records == ()  # an advertisement is not durable
    (event,) = outcome.events
    assert (event.node_id, event.mac, event.kind, event.boot_file) == (
        "node-1",
        MAC.hex(":"),
        "dhcp6.advertise",
        url,
    )


def test_the_dora_of_dhcpv6_binds_renews_releases() -> None:
    server = core()
    advertised = address_of(answer(server.receive(dhclient_solicit(), "eth0", 100.0, src=CLIENT)))
    outcome = server.receive(dhclient_message(3, advertised), "eth0", 101.0, src=CLIENT)
    reply = answer(outcome)
    assert reply.msg_type == MsgType.REPLY and address_of(reply) == advertised
    assert outcome.hold and [r.state for r in outcome.records] == [dhcp6.Lease6State.BOUND]
    assert dhcp6.decode_addresses(reply.get(Opt6.DNS_SERVERS) or b"") == (SERVER.packed,)
    assert url_of(reply) is None  # dhclient is not a netboot client
    ia = dhcp6.decode_ia_na(reply.all(Opt6.IA_NA)[0])
    assert (ia.t1, ia.t2) == (1800, 2880)
    renewed = server.receive(dhclient_message(5, advertised), "eth0", 2000.0, src=CLIENT)
    assert address_of(answer(renewed)) == advertised and renewed.records[0].expires == 2000.0 + 7200
    rebound = server.receive(dhclient_message(6, advertised, None), "eth0", 2100.0, src=CLIENT)
    assert address_of(answer(rebound)) == advertised
    released = server.receive(dhclient_message(8, advertised), "eth0", 2200.0, src=CLIENT)
    assert dhcp6.decode_status(answer(released).get(Opt6.STATUS_CODE) or b"")[0] == dhcp6.Status.SUCCESS
    assert released.records[0].state is dhcp6.Lease6State.RELEASED
    # A RENEW after the release: NoBinding in the IA, no address.
    after = answer(server.receive(dhclient_message(5, advertised), "eth0", 2300.0, src=CLIENT))
    ia = dhcp6.decode_ia_na(after.all(Opt6.IA_NA)[0])
    assert ia.addresses() == [] and dhcp6.decode_status(dict(ia.options)[Opt6.STATUS_CODE])[0] == 3


def test_rapid_commit_binds_at_once_and_is_held_for_the_store() -> None:
    store = dhcp6.InMemoryLease6Store()
    server = core()
    outcome = server.receive(dhclient_solicit(rapid=True), "eth0", 100.0, src=CLIENT)
    reply = answer(outcome)
    assert reply.msg_type == MsgType.REPLY and reply.get(Opt6.RAPID_COMMIT) == b""
    assert outcome.hold
    store.commit(outcome.records)
    # A restarted server keeps the binding it committed.
    again = dhcp6.Dhcp6Core(full_config(), BOOT6, KNOWN, store.load())
    renewed = answer(again.receive(dhclient_message(5, address_of(reply)), "eth0", 200.0, src=CLIENT))
    assert address_of(renewed) == address_of(reply)


def test_a_declined_address_is_not_offered_again() -> None:
    server = core()
    first = address_of(answer(server.receive(dhclient_solicit(), "eth0", 100.0, src=CLIENT)))
    answer(server.receive(dhclient_message(3, first), "eth0", 101.0, src=CLIENT))
    declined = server.receive(dhclient_message(9, first), "eth0", 102.0, src=CLIENT)
    assert declined.records[0].state is dhcp6.Lease6State.DECLINED
    second = address_of(answer(server.receive(dhclient_solicit(), "eth0", 103.0, src=CLIENT)))
    assert second != first


def test_confirm_says_whether_the_addresses_are_on_link() -> None:
    server = core()
    on = answer(
        server.receive(dhclient_message(4, IPv6Address("fd00::99").packed, None), "eth0", 1.0, src=CLIENT)
    )
    off = answer(
        server.receive(dhclient_message(4, IPv6Address("2001:db8::1").packed, None), "eth0", 1.0, src=CLIENT)
    )
    assert dhcp6.decode_status(on.get(Opt6.STATUS_CODE) or b"")[0] == dhcp6.Status.SUCCESS
    assert dhcp6.decode_status(off.get(Opt6.STATUS_CODE) or b"")[0] == dhcp6.Status.NOT_ON_LINK


def test_ipxe_gets_its_script_url_never_a_loader() -> None:
    advertise = answer(core().receive(ipxe_solicit(), "eth0", 1.0, src=CLIENT))
    assert url_of(advertise) == "http://[fd00::1]:8080/ipxe/52:54:00:12:34:56"


def test_information_request_gets_boot_url_and_dns_without_an_address() -> None:
    reply = answer(core().receive(information_request(), "eth0", 1.0, src=CLIENT))
    assert reply.all(Opt6.IA_NA) == [] and url_of(reply) == "http://[fd00::1]:8080/boot/ipxe.efi"
    assert reply.get(Opt6.DNS_SERVERS) == SERVER.packed


def test_proxy_mode_answers_netboot_clients_with_boot_options_only() -> None:
    server = proxy()
    advertise = answer(server.receive(ovmf_solicit(7, duid_ll()), "eth0", 1.0, src=CLIENT))
    assert advertise.all(Opt6.IA_NA) == [] and url_of(advertise) == "tftp://[fd00::1]/ipxe.efi"
    # edk2's "ProxyBinl" offer: vendor class 343 "PXEClient" (PxeBcParseDhcp6Packet); seen in the
    # lab beside Kea: without it OVMF never asked for the boot URL.
    vendor = advertise.get(Opt6.VENDOR_CLASS)
    assert vendor is not None and dhcp6.decode_vendor_class(vendor) == dhcp6.VendorClass(343, (b"PXEClient",))
    reply = answer(server.receive(information_request(), "eth0", 1.0, src=CLIENT))
    assert url_of(reply) == "http://[fd00::1]:8080/boot/ipxe.efi"
    assert server.receive(dhclient_solicit(), "eth0", 1.0, src=CLIENT).dropped == "not_netboot"
    assert (
        server.receive(dhclient_message(5, bytes(16)), "eth0", 1.0, src=CLIENT).dropped == "unhandled_message"
    )
    # A REQUEST that is not a netboot client's (the site server's business) gets nothing from us.
    assert server.receive(dhclient_message(3, bytes(16)), "eth0", 1.0, src=CLIENT).dropped == "not_netboot"


def test_proxy_mode_answers_edk2s_boot_service_request_on_port_4011() -> None:
    """edk2's ProxyBinl path: once the site server bound an address, the firmware sends its REQUEST
    (our Server ID, IA and all) to the host of our boot URL on port 4011 and wants the URL back."""
    server = proxy()
    site_address = bytes.fromhex("fd000000000000000000000000001234")
    outcome = server.receive(ovmf_request(site_address), "eth0", 1.0, src=("fd00::1234", 4011))
    reply = answer(outcome)
    assert reply.msg_type == MsgType.REPLY and url_of(reply) == "tftp://[fd00::1]/ipxe.efi"
    assert reply.all(Opt6.IA_NA) == []  # the address is the site server's to give
    assert (outcome.replies[0].address, outcome.replies[0].port) == ("fd00::1234", 4011)
    # Sent from the address the site server bound: that ties the node's TFTP/HTTP fetches to it.
    assert [(e.kind, e.ip) for e in outcome.events] == [("dhcp6.proxy_reply", "fd00::1234")]
    kea = ovmf_request(site_address, server_duid=b"\x00\x03\x00\x01" + bytes(6))
    other = server.receive(kea, "eth0", 1.0, src=("fd00::1234", 4011))
    assert other.dropped == "other_server" and other.replies == ()


def test_proxy_mode_learns_the_address_a_node_requests_from_the_site_server() -> None:
    """The REQUEST to Kea is multicast: proxy mode sees it, answers nothing, and notes the address
    (the lab showed edk2 sending its port-4011 request from another address than its TFTP one)."""
    kea = b"\x00\x03\x00\x01" + bytes(6)
    site_address = bytes.fromhex("fd000000000000000000000000002001")
    outcome = proxy().receive(ovmf_request(site_address, server_duid=kea), "eth0", 1.0, src=CLIENT)
    assert outcome.dropped == "other_server" and outcome.replies == ()
    assert [(e.kind, e.ip, e.node_id) for e in outcome.events] == [
        ("dhcp6.site_request", "fd00::2001", "node-1")
    ]
    # Not a netboot client's (dhclient's), or in full mode: dropped with no event.
    assert proxy().receive(dhclient_message(3, site_address, kea), "eth0", 1.0, src=CLIENT).events == ()
    assert core().receive(ovmf_request(site_address, server_duid=kea), "eth0", 1.0, src=CLIENT).events == ()


def test_a_missing_loader_gets_no_boot_url_and_a_timeline_line() -> None:
    boot = dhcp6.StaticBoot6Source(SERVER, BOOT6.http_base, BOOT6.ipxe_script_url,
                                   missing_loaders={"ipxe-arm64.efi": "set netboot.loader_dirs"})  # fmt: skip
    full = dhcp6.Dhcp6Core(full_config(), boot, KNOWN)
    outcome = full.receive(ovmf_solicit(0x0B, duid_ll()), "eth0", 1.0, src=CLIENT)
    assert url_of(answer(outcome)) is None and full.no_boot_file["loader_missing"] == 1
    assert "ipxe-arm64.efi is missing; set netboot.loader_dirs" in outcome.events[-1].detail
    prox = dhcp6.Dhcp6Core(dhcp6.Dhcp6Config(dhcp6.Mode6.PROXY, SERVER_DUID, PREFIX), boot, KNOWN)
    refused = prox.receive(ovmf_solicit(0x0B, duid_ll()), "eth0", 1.0, src=CLIENT)
    assert refused.dropped == "loader_missing" and "missing" in refused.events[0].detail


def test_relayed_solicit_is_answered_through_the_relay_and_known_by_option_79() -> None:
    server = core()
    relay_src = ("fd00::1:1", 547)
    # OVMF's DUID-UUID names no MAC: the relay's option 79 does.
    outcome = server.receive(relay_forw(ovmf_solicit(7)), "eth0", 1.0, src=relay_src)
    assert outcome.dropped is None
    (reply,) = outcome.replies
    assert (reply.address, reply.port) == relay_src
    outer = dhcp6.parse(reply.data)
    assert isinstance(outer, dhcp6.RelayMessage) and outer.msg_type == MsgType.RELAY_REPL
    assert outer.get(Opt6.INTERFACE_ID) == b"eth1/7"
    inner = dhcp6.parse(outer.get(Opt6.RELAY_MSG) or b"")
    assert isinstance(inner, dhcp6.Message) and inner.msg_type == MsgType.ADVERTISE
    assert url_of(inner) == "tftp://[fd00::1]/ipxe.efi" and outcome.events[0].node_id == "node-1"
    # Two relays: two RELAY-REPL wrappings.
    twice = server.receive(
        relay_forw(relay_forw(ovmf_solicit(7, duid_ll())), hops=1, mac=None), "eth0", 1.0, src=relay_src
    )
    outer = dhcp6.parse(twice.replies[0].data)
    assert isinstance(outer, dhcp6.RelayMessage)
    middle = dhcp6.parse(outer.get(Opt6.RELAY_MSG) or b"")
    assert isinstance(middle, dhcp6.RelayMessage) and middle.msg_type == MsgType.RELAY_REPL


def test_nested_relays_are_bounded() -> None:
    server = core()
    datagram = ovmf_solicit(7, duid_ll())
    for hops in range(9):
        datagram = relay_forw(datagram, hops=hops)
    assert server.receive(datagram, "eth0", 1.0, src=("fd00::1:1", 547)).dropped == "too_many_hops"
    assert server.drops["too_many_hops"] == 1


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (dhclient_message(3, bytes(16), b"\x00\x03\x00\x01" + bytes(6)), "other_server"),
        (dhclient_message(5, bytes(16), None), "other_server"),  # RENEW needs our id
        (
            dhclient_solicit()[:4] + b"\x00\x02\x00\x0a" + SERVER_DUID + dhclient_solicit()[4:],
            "server_id_not_allowed",
        ),
        (dhclient_solicit()[:4] + dhclient_solicit()[4 + 4 + 14 :], "no_client_id"),
        (b"\x02\x00\x00\x01", "not_request"),  # an ADVERTISE sent to the server
        (b"\x0d" + bytes(33), "not_request"),  # a RELAY-REPL
        (b"\x0c\x00" + bytes(32), "relay_without_message"),
        (bytes(3), "too_short"),
    ],
)
def test_what_is_not_for_us_is_dropped_and_counted(datagram: bytes, reason: str) -> None:
    server = core()
    outcome = server.receive(datagram, "eth0", 1.0, src=CLIENT)
    assert outcome.dropped == reason and outcome.replies == () and server.drops == {reason: 1}


def test_unknown_clients_can_be_ignored_and_the_lease_table_is_bounded() -> None:
    ignoring = core(unknown_clients=dhcp.UnknownClients.IGNORE)
    assert ignoring.receive(dhclient_solicit(), "eth0", 1.0, src=CLIENT).dropped == "unknown_client"
    assert ignoring.receive(ovmf_solicit(7, duid_ll()), "eth0", 1.0, src=CLIENT).dropped is None
    small = core(max_leases=3)
    for n in range(3):
        duid = duid_llt(UNKNOWN_MAC[:5] + bytes((n,)))
        assert small.receive(ovmf_solicit(7, duid), "eth0", 1.0, src=CLIENT).dropped is None
    assert small.receive(dhclient_solicit(), "eth0", 2.0, src=CLIENT).dropped == "lease_table_full"
    # Advertisements expire: their rows are reclaimed for new clients.
    assert small.receive(dhclient_solicit(), "eth0", 1000.0, src=CLIENT).dropped is None


def test_pool_exhaustion_and_sweep() -> None:
    server = core(pool_last=IPv6Address("fd00::1:0:0:1001"))
    for n in range(2):
        assert (
            server.receive(ovmf_solicit(7, duid_llt(bytes(5) + bytes((n,)))), "eth0", 1.0, src=CLIENT).dropped
            is None
        )
    assert server.receive(dhclient_solicit(), "eth0", 2.0, src=CLIENT).dropped == "pool_exhausted"
    swept = server.sweep(1000.0)
    assert swept.records == ()  # advertisements expire without a write
    assert server.receive(dhclient_solicit(), "eth0", 1000.0, src=CLIENT).dropped is None


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="pool_first"):
        full_config(pool_first=IPv6Address("2001:db8::1"))
    with pytest.raises(ValueError, match="server_duid"):
        full_config(server_duid=b"\x00")


def test_a_request_refused_for_room_binds_nothing() -> None:
    """Two IAs, room for one: refused before either is bound (no lease in memory the store never saw)."""
    server = core(max_leases=1)
    request = dhclient_message(3, bytes(16)) + ia_na(7)
    outcome = server.receive(request, "eth0", 1.0, src=CLIENT)
    assert outcome.dropped == "lease_table_full" and outcome.records == ()
    assert (
        server.binding(duid_llt(UNKNOWN_MAC), 0xFF) is None
        and server.binding(duid_llt(UNKNOWN_MAC), 7) is None
    )


def test_relays_whose_wrapping_cannot_fit_a_reply_are_refused_before_anything_is_bound() -> None:
    """Five relays with 250-byte Interface-IDs: the RELAY-REPL could not fit in 1232 bytes, so the
    REQUEST is dropped up front rather than after binding an address no reply announces."""
    server = core()
    datagram = dhclient_message(3, IPv6Address("fd00::1:0:0:1000").packed)
    for hops in range(5):
        datagram = relay_forw(datagram, hops=hops, interface_id=bytes(250))
    outcome = server.receive(datagram, "eth0", 1.0, src=("fd00::1:1", 547))
    assert outcome.dropped == "relay_too_large" and outcome.records == ()
    assert server.binding(duid_llt(UNKNOWN_MAC), 0xFF) is None


def test_http_boot_offers_echo_the_httpclient_vendor_class() -> None:
    """edk2 (HttpBootParseDhcp6Packet) takes an offer as an HTTP-boot offer only when option 16 says
    "HTTPClient"; seen in the lab: without it OVMF ignored the URL and never sent its REQUEST."""
    advertise = answer(core().receive(ovmf_solicit(0x10, duid_ll()), "eth0", 1.0, src=CLIENT))
    assert url_of(advertise) == "http://[fd00::1]:8080/boot/ipxe.efi"
    vendor = advertise.get(Opt6.VENDOR_CLASS)
    assert vendor is not None and vendor[4:6] == b"\x00\x0a" and vendor[6:16] == b"HTTPClient"
    assert dhcp6.decode_vendor_class(vendor) == dhcp6.VendorClass(343, (b"HTTPClient",))
    # Full mode: a PXE offer with an address stays a plain one (with "PXEClient" edk2 would go on
    # to ask port 4011, which only proxy mode serves).
    pxe = answer(core().receive(ovmf_solicit(7, duid_ll()), "eth0", 1.0, src=CLIENT))
    assert pxe.get(Opt6.VENDOR_CLASS) is None
