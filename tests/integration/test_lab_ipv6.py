"""IPv6 network boot in the lab (`lab up --ipv6`): an IPv6-only bridge (fd77::/64, no DHCPv4),
router advertisements with the Managed flag, bootforge's DHCPv6 in full mode, TFTP/HTTP boot and the
API on [fd77::1]. OVMF PXE over IPv6 boots the real deploy ramdisk to inspection: DHCPv6 SOLICIT with
vendor class "PXEClient:Arch:00007" and arch 7, option 59 tftp://[fd77::1]/ipxe.efi, TFTP over IPv6,
then iPXE asks DHCPv6 itself (it runs no DHCPv4 here) and gets its script by http://[fd77::1]:8080,
which names kernel, initrd and the API on IPv6; the ramdisk's /init waits for a SLAAC address since the
API is an IPv6 literal, and the agent looks itself up with its boot token from that address.

Debian's ipxe.efi (1.0.0+git-20190125) has IPv6 and DHCPv6 built in, so the chain stays
firmware -> iPXE -> script -> ramdisk on IPv6 as on IPv4. OVMF HTTP boot over IPv6 and both firmwares
in proxy mode beside Kea are the firmware matrix's IPv6 modes (test_firmware_matrix.py), with the same
timeline checks (support/ipv6_chain.py). Marked qemu, netns, slow; run under the lab lock.
"""

from __future__ import annotations

import re
import time

import pytest
from support.ipv6_chain import assert_ipv6_chain, first_event
from support.lab import RAMDISK_TIMEOUT, LabFactory

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


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
