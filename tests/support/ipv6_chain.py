"""What an IPv6 network boot in the lab leaves on the node's timeline, checked the same way by the
IPv6 lab test and by the firmware matrix's IPv6 modes (`lab up --ipv6`: fd77::/64 on br0, no DHCPv4)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from bootforge.lab.lab import VmRecord
from support.lab import LabHandle

# How each firmware fetches iPXE: OVMF PXE by TFTP, OVMF HTTP boot by HTTP.
LOADER_FETCH = {
    "uefi": ("tftp", re.compile(r"^tftp ipxe\.efi completed")),
    "uefi-http": ("http", re.compile(r"^http GET /ipxe\.efi 200")),
}


def when(event: dict[str, Any]) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def first_event(h: LabHandle, rec: VmRecord, pattern: str) -> tuple[dt.datetime, str]:
    found = [(when(e), e["event"]) for e in h.history(rec) if re.search(pattern, e["event"])]
    assert found, f"no {pattern!r} event on {rec.name}'s timeline"
    return min(found)


def assert_fetches(h: LabHandle, rec: VmRecord, firmware: str) -> None:
    """iPXE fetched over the firmware's protocol, then its script, kernel and initrd over HTTP."""
    kind, pattern = LOADER_FETCH[firmware]
    assert any(pattern.search(e["event"]) for e in h.history(rec, kind)), h.history(rec, kind)
    http = [e["event"] for e in h.history(rec, "http")]
    for path in ("/boot/ipxe", "/bootforge/vmlinuz", "/bootforge/initrd"):
        assert any(e.startswith(f"http GET {path} 200") for e in http), (path, http)


def assert_ipv6_chain(h: LabHandle, rec: VmRecord, firmware: str) -> None:
    """bootforge's DHCPv6 (full): the firmware's and iPXE's exchanges, tied to the node by the MAC in
    their EUI-64 link-local addresses (both send a DUID-UUID), with an address from the pool; nothing
    over DHCPv4."""
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    assert any(re.match(rf"dhcp6\.reply {rec.mac} fd77::1[0-9a-f]{{3}} on br0", e) for e in dhcp), dhcp
    assert not any(e.startswith("dhcp.") for e in dhcp), dhcp
    assert_fetches(h, rec, firmware)


def assert_ipv6_proxy_chain(h: LabHandle, rec: VmRecord, firmware: str) -> None:
    """Proxy mode beside the lab's Kea: bootforge only advertised boot options (addresses are Kea's
    job, its pool fd77::2000-2fff); PXE firmware then asks bootforge for its boot URL (edk2's
    ProxyBinl, port 4011) from the address Kea bound, and that REQUEST to Kea, seen and not answered,
    names the address its TFTP fetch comes from."""
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    assert any(e.startswith(f"dhcp6.proxy_advertise {rec.mac}") for e in dhcp), dhcp
    assert not any(e.startswith(("dhcp6.reply", "dhcp6.advertise", "dhcp.")) for e in dhcp), dhcp
    if firmware == "uefi":
        for kind in ("proxy_reply", "site_request"):
            pattern = rf"dhcp6\.{kind} {rec.mac} fd77::2[0-9a-f]{{3}} on br0"
            assert any(re.match(pattern, e) for e in dhcp), (kind, dhcp)
    assert_fetches(h, rec, firmware)
    leases = (Path(h.lab.state.dir) / "kea-leases6.csv").read_text()
    assert "fd77::2" in leases, leases
