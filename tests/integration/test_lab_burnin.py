"""Burn-in in the lab: a QEMU VM network-boots the ramdisk built with `--with burn-in` and runs every
burn-in step (short durations) in one manual clean: stress-ng, memtester, fio on its virtio disk and
iperf3 to a server this test runs in the lab's namespace; the numbers land on the node. A second clean
(the agent is still running: the lab runs fast track) asks for a disk bandwidth no disk has, and the
node fails cleaning with the measured numbers in last_error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, wait_until

from bootforge.lab.lab import ADDRESS
from bootforge.ramdisk import RamdiskError, build

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

IPERF_PORT = 5201


def test_a_vm_burned_in_with_every_step_then_failed_by_a_threshold(
    make_lab: LabFactory, tmp_path: Path
) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3 (Debian package iperf3) for the server side of the network step")
    started = time.monotonic()
    # 768 MiB: the burn-in initrd unpacks to about 140 MiB in memory, and memtester locks its share.
    h = make_lab(vms=1, firmware="bios", memory_mib=768, ramdisk="agent")
    rec = h.vms[0]
    try:
        built = build(Path(h.lab.state.dir) / "boot" / "bootforge", with_tools=["burn-in"])
    except RamdiskError as e:
        pytest.skip(f"the burn-in ramdisk cannot be built here: {e}")
    size, unpacked = built.initrd_size / 2**20, built.unpacked_size / 2**20
    print(f"burn-in ramdisk: initrd {size:.1f} MiB ({unpacked:.1f} unpacked)")
    netns = h.lab.state.netns
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, "iperf3", "--server", "--bind", ADDRESS, "--port", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            out = subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{IPERF_PORT}"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return bool(out.strip())

        wait_until(listening, 30, "iperf3 listens in the lab")
        steps = [
            {"interface": "deploy", "step": "burnin_cpu", "args": {"seconds": 5}},
            {"interface": "deploy", "step": "burnin_memory", "args": {"size_mib": 16}},
            {"interface": "deploy", "step": "burnin_disk", "args": {"seconds": 3, "size_mib": 64}},
            {
                "interface": "deploy",
                "step": "burnin_network",
                "args": {"server": ADDRESS, "port": IPERF_PORT, "seconds": 3, "min_bandwidth_mbps": 1},
            },
        ]
        h.verb(rec, "clean", clean_steps=steps)
        done = h.wait_state(rec, "manageable", RAMDISK_TIMEOUT + 180)
        results = done["driver_internal_info"]["burnin"]
        print({k: {kk: vv for kk, vv in v.items() if kk != "thresholds"} for k, v in results.items()})
        assert set(results) == {"cpu", "memory", "disk", "network"}
        assert all(r["passed"] for r in results.values()), results
        assert results["cpu"]["bogo_ops_per_s"] > 0 and results["cpu"]["tool"] == "stress-ng 0.15.06"
        assert results["memory"]["tested_mib"] == 16 and results["memory"]["failed_tests"] == []
        (vda,) = results["disk"]["disks"]
        assert vda["name"] == "/dev/vda" and vda["tool"] == "fio-3.33"
        assert all(j["iops"] > 0 and j["lat_p99_ms"] is not None for j in vda["jobs"])
        assert results["network"]["received_mbps"] > 1
        events = [e["event"] for e in h.history(rec)]
        assert any(e.startswith("burn-in disk: /dev/vda seqread_1m") for e in events), events[-20:]

        impossible = {"seconds": 2, "size_mib": 64, "jobs": ["randread_4k"], "min_iops": 50_000_000}
        h.verb(rec, "clean", clean_steps=[{"interface": "deploy", "step": "burnin_disk", "args": impossible}])
        failed = h.wait_state(rec, "clean failed", 300)
        assert re.fullmatch(
            r"burn-in disk failed: fio randread_4k on /dev/vda: \d+ IOPS < min_iops 50000000",
            failed["last_error"],
        ), failed["last_error"]
        assert failed["driver_internal_info"]["burnin"]["disk"]["passed"] is False
    finally:
        server.terminate()
        server.wait(10)
        print(f"lab burn-in test: {time.monotonic() - started:.1f} s")
