"""The firmware matrix (#12 Verify): one lab per DHCP mode, one small VM per firmware, all powered on
at once, each to the deploy ramdisk's agent looking itself up (over IPv6 from its SLAAC address;
there the DHCPv6 / proxy exchanges and the fetches on each node's timeline are checked as well).
Modes: bootforge's DHCP (full), proxy beside the lab's site dnsmasq, bootforge's DHCPv6, proxy beside
Kea. Each case's power on ->
reached time is printed as a table and written to matrix-<mode>.json in the test's tmp dir; cases
the firmware or lab cannot do are in the table as skipped with the reason.

The code is bench/firmware_matrix.py's (which also runs the cases one at a time for the README's
times). Marked qemu, netns, slow; run under the lab lock. Here each iPXE chain's exchanges and
fetches are checked in every mode, and over IPv6 the inspection runs to manageable with the NIC in
its inventory. Beside dnsmasq (which names bootforge as next-server, as a site must for signed GRUB)
the Secure Boot and arm64 signed chains are checked too: bootforge's proxy answer named shim, and
shim, GRUB, the per-node grub.cfg, kernel and initrd all came from bootforge's TFTP. The signed
chains with bootforge's DHCP (test_lab_secure_boot, test_lab_arm64), SeaBIOS's power and
boot-device handling (test_lab_boot) and the deploys (test_lab_deploy*) have dedicated lab tests.

Here (2 shared cores, TCG): full-v4 5 VMs 74.5 s, proxy-v4 5 VMs 104 s (each with lab up and
down; the IPv6 modes' times are in the README's table).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from support.ipv6_chain import (
    LOADER_FETCH,
    assert_fetches,
    assert_ipv6_chain,
    assert_ipv6_proxy_chain,
    first_event,
)
from support.lab import RAMDISK_TIMEOUT, LabHandle, lab_unavailable_reason

from bootforge.lab.lab import ADDRESS, VmRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import firmware_matrix as fm  # bench/, found through the path above

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


def _check_v6(proxy: bool) -> fm.Check:
    def check(h: LabHandle, rec: VmRecord, fw: fm.Firmware) -> None:
        assert fw.lab is not None
        (assert_ipv6_proxy_chain if proxy else assert_ipv6_chain)(h, rec, fw.lab)
        # The agent (which needs this boot's token) looked up from the ramdisk's SLAAC address and
        # its inspection, all over IPv6, ends in manageable with this NIC in the inventory.
        _, event = first_event(h, rec, "agent looked up from")
        assert re.search(r"from fd77:[0-9a-f:]+", event), event
        h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
        inventory = h.api.get(f"/v1/nodes/{rec.node}/inventory").json()["inventory"]
        assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]

    return check


def _check_full_v4(h: LabHandle, rec: VmRecord, fw: fm.Firmware) -> None:
    """bootforge's DHCP acked the firmware; iPXE came over the firmware's own protocol (SeaBIOS: the
    NIC's ROM is iPXE); the script, kernel and initrd over HTTP. (The signed shim -> GRUB chains have
    their own lab tests.)"""
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    assert any(e.startswith("dhcp.ack") for e in dhcp), dhcp
    _check_full_v4_fetches(h, rec, fw)


def _check_full_v4_fetches(h: LabHandle, rec: VmRecord, fw: fm.Firmware) -> None:
    if fw.lab in LOADER_FETCH:
        assert_fetches(h, rec, str(fw.lab))
    elif fw.lab == "bios":
        http = [e["event"] for e in h.history(rec, "http")]
        for path in ("/boot/ipxe", "/bootforge/vmlinuz", "/bootforge/initrd"):
            assert any(e.startswith(f"http GET {path} 200") for e in http), (path, http)


# How long a netboot event may trail the agent's lookup onto the timeline (they are batched).
EVENT_LAG = 30.0
# The signed chains (shim -> GRUB -> grub.cfg -> kernel, initrd), every file by TFTP from bootforge.
SIGNED_CHAIN = {
    "uefi-sb": ("shimx64.efi", "grubx64.efi", "bootforge/vmlinuz", "bootforge/initrd"),
    "arm64": ("shimaa64.efi", "grubaa64.efi", "bootforge/arm64/vmlinuz", "bootforge/arm64/initrd"),
}


def _check_proxy_v4(h: LabHandle, rec: VmRecord, fw: fm.Firmware) -> None:
    """Beside the site dnsmasq, which leases the address and names bootforge as next-server (and no
    boot file): the firmware still took its boot file from bootforge's proxy answer (the chain it
    names was fetched), bootforge leased nothing, and dnsmasq leased this MAC. For the signed chains,
    GRUB found its per-node grub.cfg on bootforge's TFTP server, the server named in the site's ACK."""
    dhcp = [e["event"] for e in h.history(rec, "dhcp")]
    offers = [e for e in dhcp if re.match(rf"dhcp\.proxy_(offer|ack) {rec.mac}", e)]
    assert offers, dhcp
    assert not any(e.startswith(("dhcp.offer", "dhcp.ack")) for e in dhcp), dhcp
    site = Path(h.lab.state.dir)
    leases = (site / "dnsmasq.leases").read_text()
    assert rec.mac in leases, leases
    # dnsmasq's own log (log-dhcp) of what its answers carried: bootforge as next-server.
    assert f"next server: {ADDRESS}" in (site / "dnsmasq.log").read_text()
    chain = SIGNED_CHAIN.get(str(fw.lab))
    if chain is None:
        _check_full_v4_fetches(h, rec, fw)
        return
    shim = chain[0]
    assert all(f"boot={shim}" in e for e in offers), offers
    # GRUB names its files with the prefix's leading slash (/grub/grub.cfg); shim does not.
    dashed = rec.mac.replace(":", "-")
    names = (*chain[:2], f"grub/grub.cfg-01-{dashed}", *chain[2:])
    # Netboot events reach the timeline in batches: the lookup can be there before the last fetch.
    deadline = time.monotonic() + EVENT_LAG
    while True:
        tftp = [e["event"].replace("tftp /", "tftp ", 1) for e in h.history(rec, "tftp")]
        missing = [n for n in names if not any(e.startswith(f"tftp {n} completed") for e in tftp)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, (missing, tftp)
    assert not any("ipxe" in e for e in tftp), tftp


# Each case's exchanges are checked too (DHCP, DHCPv6 or the proxy's, the fetches), not only that the
# agent looked up: the OVMF chains and the IPv6 modes have no dedicated network-boot lab test.
CHECKS: dict[fm.Mode, fm.Check] = {
    ("full", False): _check_full_v4,
    ("proxy", False): _check_proxy_v4,
    ("full", True): _check_v6(False),
    ("proxy", True): _check_v6(True),
}


@pytest.mark.parametrize("mode", fm.MODES, ids=lambda m: f"{m[0]}-v{'6' if m[1] else '4'}")
def test_firmware_matrix(tmp_path: Path, mode: fm.Mode) -> None:
    reason = lab_unavailable_reason("uefi", "full")
    if reason is not None:
        pytest.skip(reason)
    firmwares, skipped = fm.plan(mode)
    if not firmwares:
        pytest.skip(f"{fm.MODE_LABELS[mode]}: every case is skipped: " + "; ".join(r.detail for r in skipped))
    start = time.monotonic()
    try:
        reached = fm.run_mode(tmp_path, mode, firmwares, check=CHECKS.get(mode))
    except fm.LabError as e:
        pytest.fail(f"lab up failed: {e}")
    took = time.monotonic() - start
    results = reached + skipped
    out = tmp_path / f"matrix-{mode[0]}-v{'6' if mode[1] else '4'}.json"
    out.write_text(json.dumps({"seconds": round(took, 1), "results": [asdict(r) for r in results]}, indent=2))
    print(f"\n{fm.MODE_LABELS[mode]}: {len(firmwares)} VMs at once, {took:.0f} s with lab up and down\n")
    print(fm.table(results))
    assert len(reached) == len(firmwares)
    failed = [r for r in reached if r.status != "reached"]
    assert not failed, "\n".join(f"{r.firmware}: {r.detail}" for r in failed)
    # Every case not run has its reason in the table.
    assert all(r.status == "skipped" and r.detail for r in skipped)
