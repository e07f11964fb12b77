"""The firmware matrix (#12 Verify): one lab per DHCP mode, one small VM per firmware, all powered on
at once, each to bootforge (IPv4: the deploy ramdisk's agent looked up; IPv6: the probe ramdisk
reached the API over IPv6, since the agent ramdisk has no IPv6). Modes: bootforge's DHCP (full),
proxy beside the lab's site dnsmasq, bootforge's DHCPv6, proxy beside Kea. Each case's power on ->
reached time is printed as a table and written to matrix-<mode>.json in the test's tmp dir; cases
the firmware or lab cannot do are in the table as skipped with the reason.

The code is bench/firmware_matrix.py's (which also runs the cases one at a time for the README's
times). Marked qemu, netns, slow; run under the lab lock. The dedicated lab tests (test_lab_boot,
test_lab_secure_boot, test_lab_arm64, test_lab_ipv6, test_lab_deploy_uefi) check each chain's
fetches and the deploys; this one checks that they all hold at the same time, cheaply.

Here (2 shared cores; KVM for bios/uefi/uefi-http, TCG for Secure Boot and arm64): full-v4 5 VMs
74.5 s, proxy-v4 3 VMs 36.1 s, full-v6 2 VMs 115.1 s, proxy-v6 2 VMs 113.6 s (each with lab up/down).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from support.lab import lab_unavailable_reason

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import firmware_matrix as fm  # bench/, found through the path above

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


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
        reached = fm.run_mode(tmp_path, mode, firmwares)
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
