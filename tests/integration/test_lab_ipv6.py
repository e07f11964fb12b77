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
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support.lab import BOOT_TIMEOUT, LabFactory, LabHandle, console_offset, wait_console

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


@pytest.mark.parametrize("firmware", ["uefi", "uefi-http"])
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

    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    # The firmware's and iPXE's exchanges, tied to the node by the MAC in their EUI-64 link-local
    # addresses (both send a DUID-UUID), with an address from the pool.
    assert any(re.match(rf"dhcp6\.reply {rec.mac} fd77::1[0-9a-f]{{3}} on br0", e) for e in dhcp), dhcp
    assert not any(e.startswith("dhcp.") for e in dhcp), dhcp  # nothing over DHCPv4
    kind, pattern = LOADER_FETCH[firmware]
    assert any(pattern.search(e["event"]) for e in h.history(rec, kind)), h.history(rec, kind)
    http = [e["event"] for e in h.history(rec, "http")]
    for path in ("/boot/ipxe", "/bootforge/vmlinuz", "/bootforge/initrd"):
        assert any(e.startswith(f"http GET {path} 200") for e in http), (path, http)


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
