"""The MAC of a DHCPv6 client that sends a DUID-UUID (iPXE, OVMF): read from its EUI-64 link-local
address, the source of its message or, relayed, the innermost relay's peer-address."""

from __future__ import annotations

import pytest
from dhcp6_fuzz import BOOT6, KNOWN, full_config
from dhcp6_samples import ovmf_solicit, relay_forw

from bootforge.netboot import dhcp, dhcp6


@pytest.mark.parametrize(
    ("address", "mac"),
    [
        ("fe80::5054:ff:fe12:3456", "52:54:00:12:34:56"),
        ("fe80::5054:ff:fe12:3456%eth0", "52:54:00:12:34:56"),
        ("fe80::200:ff:fe00:1", "00:00:00:00:00:01"),  # the universal/local bit flips back
        ("fe80::1", None),  # not EUI-64
        ("fe80::5054:ff:fd12:3456", None),  # no ff:fe in the middle
        ("fd00::5054:ff:fe12:3456", None),  # not link-local: may be anything
        ("not an address", None),
    ],
)
def test_eui64_mac(address: str, mac: str | None) -> None:
    got = dhcp6.eui64_mac(address)
    assert (got.hex(":") if got is not None else None) == mac


def ignoring_unknown() -> dhcp6.Dhcp6Core:
    return dhcp6.Dhcp6Core(full_config(unknown_clients=dhcp.UnknownClients.IGNORE), BOOT6, KNOWN)


def test_a_duid_uuid_client_is_known_by_its_eui64_link_local_source() -> None:
    outcome = ignoring_unknown().receive(ovmf_solicit(7), "eth0", 1.0, src=("fe80::5054:ff:fe12:3456", 546))
    assert outcome.dropped is None, outcome
    (event,) = [e for e in outcome.events if e.kind == "dhcp6.advertise"]
    assert (event.node_id, event.mac) == ("node-1", "52:54:00:12:34:56")


def test_a_duid_uuid_client_from_a_random_link_local_address_stays_unknown() -> None:
    core = ignoring_unknown()
    assert core.receive(ovmf_solicit(7), "eth0", 1.0, src=("fe80::1c3a:9bd2:44e0:71", 546)).dropped == (
        "unknown_client"
    )


def test_relayed_the_client_is_named_by_the_relays_peer_address_not_by_the_relay() -> None:
    # No option 79 from the relay; its peer-address is the client's EUI-64 link-local address.
    relayed = relay_forw(ovmf_solicit(7), mac=None)
    outcome = ignoring_unknown().receive(relayed, "eth0", 1.0, src=("fd00::1:1", 547))
    assert outcome.dropped is None, outcome
    assert [e.mac for e in outcome.events] == ["52:54:00:12:34:56"]
