"""The firmware matrix (#12 Verify): one lab per DHCP mode, one small VM per firmware, all powered on
at once, each to the deploy ramdisk's agent looking itself up (over IPv6 from its SLAAC address;
there the DHCPv6 / proxy exchanges and the fetches on each node's timeline are checked as well).
Modes: bootforge's DHCP (full), proxy beside the lab's site dnsmasq, bootforge's DHCPv6, proxy beside
Kea. Each case's power on ->
reached time is printed as a table and written to matrix-<mode>.json in the test's tmp dir; cases
the firmware or lab cannot do are in the table as skipped with the reason.

The code is bench/firmware_matrix.py's (which also runs the cases one at a time for the README's
times). Marked qemu, netns, slow; run under the lab lock. The dedicated lab tests (test_lab_boot,
test_lab_secure_boot, test_lab_arm64, test_lab_ipv6, test_lab_deploy_uefi) check each chain's
fetches and the deploys; this one checks that they all hold at the same time, cheaply.

Here (2 shared cores, TCG): full-v4 5 VMs 74.5 s, proxy-v4 3 VMs 36.1 s (each with lab up and
down; the IPv6 modes' times are in the README's table).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from support.ipv6_chain import assert_ipv6_chain, assert_ipv6_proxy_chain
from support.lab import LabHandle, lab_unavailable_reason

from bootforge.lab.lab import VmRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import firmware_matrix as fm  # bench/, found through the path above

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


def _check_v6(proxy: bool) -> fm.Check:
    def check(h: LabHandle, rec: VmRecord, fw: fm.Firmware) -> None:
        assert fw.lab is not None
        (assert_ipv6_proxy_chain if proxy else assert_ipv6_chain)(h, rec, fw.lab)

    return check


# Over IPv6 each case's exchanges are checked too (DHCPv6 or the proxy's, the fetches), not only that
# the agent looked up: the IPv6 modes have no dedicated lab test of their own besides OVMF PXE's.
CHECKS: dict[fm.Mode, fm.Check] = {("full", True): _check_v6(False), ("proxy", True): _check_v6(True)}


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
