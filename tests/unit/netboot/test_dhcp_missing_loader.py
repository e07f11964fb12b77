"""A client whose boot loader bootforge lacks gets no boot file (#12): no offer of a file the firmware
would fail to fetch, a counted drop, and the reason on the node's timeline.

Through the sans-IO core with captured-style packets: AAVMF (edk2 arm64) sends OVMF's PXE DISCOVER
with architecture 0x0b in options 93 and 60."""

from __future__ import annotations

from dataclasses import replace

from test_dhcp_core import BOOT, ETH0, KNOWN, LAN, MAC_STR, SERVER, dora, only_reply
from test_dhcp_samples import ovmf_pxe_discover

from bootforge.netboot.boot.loaders import how_to_provide
from bootforge.netboot.dhcp import (
    LOADER_MISSING,
    DhcpConfig,
    DhcpCore,
    Mode,
    StaticReservations,
    UnknownClients,
    encode,
    parse,
)

MISSING = {"ipxe-arm64.efi": how_to_provide("ipxe-arm64.efi")}
NO_ARM64 = replace(BOOT, missing_loaders=MISSING)


def aavmf_pxe_discover() -> bytes:
    sent = parse(ovmf_pxe_discover())
    options = dict(sent.options) | {93: b"\x00\x0b", 60: b"PXEClient:Arch:00011:UNDI:003000"}
    return encode(replace(sent, options=options))


def full_core() -> DhcpCore:
    return DhcpCore(DhcpConfig(Mode.FULL, ("eth0",), (LAN,)), NO_ARM64, KNOWN)


def test_full_mode_offers_the_address_without_the_missing_loader() -> None:
    core = full_core()
    offer, outcome = only_reply(core.receive(aavmf_pxe_discover(), ETH0, 100.0))
    assert offer.yiaddr != bytes(4)
    assert offer.file.rstrip(b"\0") == b"" and 67 not in offer.options  # no boot file at all
    assert b"ipxe-arm64.efi" not in outcome.replies[0].data
    assert core.drops[LOADER_MISSING] == 1
    kinds = [e.kind for e in outcome.events]
    assert kinds == ["dhcp.offer", "dhcp.no_boot_file"]
    told = outcome.events[1]
    assert told.node_id == "node-1" and told.boot_file is None
    assert "arm64-uefi" in told.detail and "0x0b" in told.detail
    assert "ipxe-arm64.efi" in told.detail and "netboot.loader_dirs" in told.detail
    # The REQUEST that follows is acknowledged, still without a boot file.
    ack, outcome = dora(full_core(), aavmf_pxe_discover())
    assert ack.file.rstrip(b"\0") == b"" and [e.kind for e in outcome.events][-1] == "dhcp.no_boot_file"


def test_proxy_mode_does_not_answer_and_tells_the_node() -> None:
    core = DhcpCore(DhcpConfig(Mode.PROXY, ("eth0",)), NO_ARM64, KNOWN)
    outcome = core.receive(aavmf_pxe_discover(), ETH0, 1.0)
    assert outcome.replies == () and outcome.dropped == LOADER_MISSING
    assert core.drops == {LOADER_MISSING: 1}
    (event,) = outcome.events
    assert event.kind == "dhcp.dropped" and event.node_id == "node-1"
    assert "ipxe-arm64.efi" in event.detail and "netboot.loader_dirs" in event.detail


def test_a_stranger_is_counted_but_never_on_a_timeline() -> None:
    config = DhcpConfig(Mode.PROXY, ("eth0",), unknown_clients=UnknownClients.DISCOVER)
    core = DhcpCore(config, NO_ARM64, StaticReservations({}))
    outcome = core.receive(aavmf_pxe_discover(), ETH0, 1.0)
    assert outcome.dropped == LOADER_MISSING and outcome.events == ()


def test_an_architecture_whose_loader_is_there_is_still_offered_it() -> None:
    offer, outcome = only_reply(full_core().receive(ovmf_pxe_discover(), ETH0, 100.0))
    assert offer.file.rstrip(b"\0") == b"ipxe.efi" and offer.siaddr == SERVER.packed
    assert [e.kind for e in outcome.events] == ["dhcp.offer"]
    assert MAC_STR in KNOWN.by_mac
