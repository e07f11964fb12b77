"""IPv6 network boot in the lab (`lab up --ipv6`): an IPv6-only bridge (fd77::/64, no DHCPv4),
router advertisements with the Managed flag, bootforge's DHCPv6 in full mode, TFTP/HTTP boot and the
API on [fd77::1]. Each VM is powered on through the API and its ramdisk must reach the API over IPv6:

- OVMF PXE over IPv6: DHCPv6 SOLICIT with vendor class "PXEClient:Arch:00007" and arch 7, option 59
  tftp://[fd77::1]/ipxe.efi, TFTP over IPv6, then iPXE asks DHCPv6 itself (it runs no DHCPv4 here)
  and gets its script by http://[fd77::1]:8080, which names kernel, initrd and the API on IPv6;
- OVMF HTTP boot over IPv6: "HTTPClient", http://[fd77::1]:8080/ipxe.efi, then the same;
- OVMF PXE over IPv6 in proxy mode beside Kea (kea-dhcp6 in its own namespace gives the addresses):
  the firmware takes Kea's address and bootforge's proxy offer, asks bootforge for the boot URL on
  port 4011 (edk2's ProxyBinl), fetches ipxe.efi by TFTP; iPXE has no proxy DHCPv6, so its script
  URL comes from the site's Kea (one client class, as a site would add: bootforge's URL with iPXE's
  ${netX/mac}).

Debian's ipxe.efi (1.0.0+git-20190125) has IPv6 and DHCPv6 built in, so the chain stays
firmware -> iPXE -> script -> ramdisk on IPv6 as on IPv4. Marked qemu, netns, slow; run under the
lab lock.

The OVMF PXE case boots the real deploy ramdisk (`bootforge ramdisk build`, as the deploy tests do)
through the inspect verb: its /init waits for a SLAAC address since the API is an IPv6 literal, and
the agent looks itself up with its boot token from that address; inspection ends `manageable`.
The other two boot the probe ramdisk (its chains differ only before iPXE's script).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

import pytest
from support.lab import BOOT_TIMEOUT, RAMDISK_TIMEOUT, LabFactory, LabHandle, console_offset, wait_console

from bootforge.lab.lab import VmRecord
from bootforge.lab.ramdisk import API_MARKER, FAIL_MARKER

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

LOADER_FETCH = {
    "uefi": ("tftp", re.compile(r"^tftp ipxe\.efi completed")),
    "uefi-http": ("http", re.compile(r"^http GET /ipxe\.efi 200")),
}


def boot_ramdisk(h: LabHandle, rec: VmRecord) -> tuple[float, str]:
    since = console_offset(rec)
    start = time.monotonic()
    h.power(rec, "power on")
    line = wait_console(rec, re.compile(f"{API_MARKER}|{FAIL_MARKER}"), BOOT_TIMEOUT, since)
    return time.monotonic() - start, line


def when(event: dict[str, Any]) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def first_event(h: LabHandle, rec: VmRecord, pattern: str) -> tuple[dt.datetime, str]:
    found = [(when(e), e["event"]) for e in h.history(rec) if re.search(pattern, e["event"])]
    assert found, f"no {pattern!r} event on {rec.name}'s timeline"
    return min(found)


def assert_ipv6_chain(h: LabHandle, rec: VmRecord, firmware: str) -> None:
    """The firmware's and iPXE's exchanges, tied to the node by the MAC in their EUI-64 link-local
    addresses (both send a DUID-UUID), with an address from the pool; nothing over DHCPv4."""
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    assert any(re.match(rf"dhcp6\.reply {rec.mac} fd77::1[0-9a-f]{{3}} on br0", e) for e in dhcp), dhcp
    assert not any(e.startswith("dhcp.") for e in dhcp), dhcp
    kind, pattern = LOADER_FETCH[firmware]
    assert any(pattern.search(e["event"]) for e in h.history(rec, kind)), h.history(rec, kind)
    http = [e["event"] for e in h.history(rec, "http")]
    for path in ("/boot/ipxe", "/bootforge/vmlinuz", "/bootforge/initrd"):
        assert any(e.startswith(f"http GET {path} 200") for e in http), (path, http)


def test_uefi_pxe_over_ipv6_boots_the_deploy_ramdisk_to_inspection(make_lab: LabFactory) -> None:
    h = make_lab(vms=1, firmware="uefi", memory_mib=768, ramdisk="agent", ipv6=True)
    rec = h.vms[0]
    start = time.monotonic()
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    took = time.monotonic() - start
    # boot_ramdisk's event right after the power-on it sent (the qemu driver writes none of its own)
    power_on, _ = first_event(h, rec, "network-booting the bootforge ramdisk")
    lookup, event = first_event(h, rec, "agent looked up from")
    print(
        f"\nuefi PXE over IPv6, deploy ramdisk: power on -> agent lookup "
        f"{(lookup - power_on).total_seconds():.1f} s, inspect verb -> manageable {took:.1f} s"
    )
    # The lookup (which needs this boot's token) came from the ramdisk's SLAAC address.
    assert re.search(r"from fd77:[0-9a-f:]+", event), event
    assert_ipv6_chain(h, rec, "uefi")
    inventory = h.api.get(f"/v1/nodes/{rec.node}/inventory").json()["inventory"]
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]


@pytest.mark.parametrize("firmware", ["uefi-http"])
def test_uefi_network_boot_over_ipv6_reaches_the_api(make_lab: LabFactory, firmware: str) -> None:
    h = make_lab(vms=1, firmware=firmware, ipv6=True)
    rec = h.vms[0]
    h.serve_ramdisk(rec)
    took, line = boot_ramdisk(h, rec)
    assert API_MARKER in line, line
    assert f"node={rec.node}" in line
    # The ramdisk's own address is IPv6 from the lab's prefix (SLAAC: it has no DHCPv6 client).
    assert re.search(r"ip=fd77:[0-9a-f:]+", line), line
    print(f"\n{firmware} over IPv6: power on -> ramdisk reached the API in {took:.1f} s")

    assert_ipv6_chain(h, rec, firmware)


def test_uefi_pxe_over_ipv6_in_proxy_mode_beside_kea(make_lab: LabFactory) -> None:
    h = make_lab(vms=1, firmware="uefi", dhcp="proxy", ipv6=True)
    rec = h.vms[0]
    h.serve_ramdisk(rec)
    took, line = boot_ramdisk(h, rec)
    assert API_MARKER in line, line
    assert f"node={rec.node}" in line
    print(f"\nuefi over IPv6, proxy beside Kea: power on -> ramdisk reached the API in {took:.1f} s")
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    assert any(e.startswith(f"dhcp6.proxy_advertise {rec.mac}") for e in dhcp), dhcp
    # The boot-service request came from the address Kea bound (its pool: fd77::2000-2fff).
    assert any(re.match(rf"dhcp6\.proxy_reply {rec.mac} fd77::2[0-9a-f]{{3}} on br0", e) for e in dhcp), dhcp
    assert not any(e.startswith(("dhcp6.reply", "dhcp6.advertise")) for e in dhcp), dhcp  # Kea's job
    # Its REQUEST to Kea, seen and not answered, names the address its TFTP fetch comes from.
    assert any(re.match(rf"dhcp6\.site_request {rec.mac} fd77::2[0-9a-f]{{3}} on br0", e) for e in dhcp), dhcp
    kind, pattern = LOADER_FETCH["uefi"]
    assert any(pattern.search(e["event"]) for e in h.history(rec, kind)), h.history(rec, kind)
    leases = (Path(h.lab.state.dir) / "kea-leases6.csv").read_text()
    assert "fd77::2" in leases, leases
