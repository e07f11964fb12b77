"""The first machine from enroll to active: a QEMU VM network-boots bootforge's deploy ramdisk, is
inspected, cleaned, deployed with the sample OS and a config drive, boots it from its disk, and is
undeployed (its disk cleaned). Then a deploy with a wrong checksum fails, naming both digests, and
leaves the disk's partition table as it was.

The lab runs fast track (as an operator would for slow-booting machines): inspection, cleaning and the
deploy share one ramdisk boot; undeploy and the failed deploy each boot the ramdisk again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.disk_check import is_blank_metadata, partition_table
from support.lab import LabFactory, LabHandle, console_offset, wait_console
from support.test_os import BOOTED_MARKER, USER_DATA_MARKER, build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

# TCG on a shared 2-core machine: the firmware, iPXE and the ramdisk take a minute or two.
RAMDISK_TIMEOUT = 420.0
GiB = 1024**3


def wait_state(h: LabHandle, node: str, want: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        n = h.api.get(f"/v1/nodes/{node}").json()
        if n["provision_state"] == want and n["reservation"] is None:
            return dict(n)
        failed = n["provision_state"].endswith("failed") and n["provision_state"] != want
        if failed or time.monotonic() > deadline:
            events = [e["event"] for e in h.api.get(f"/v1/nodes/{node}/history").json()["history"]][-15:]
            pytest.fail(
                f"node is {n['provision_state']} (wanted {want}): {n['last_error']}\n" + "\n".join(events)
            )
        time.sleep(1)


def verb(h: LabHandle, node: str, target: str, **body: Any) -> None:
    r = h.api.put(f"/v1/nodes/{node}/states/provision", json={"target": target, **body})
    assert r.status_code == 202, r.text


def raw_copy(qcow2: Path, work: Path) -> Path:
    raw = work / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return raw


def test_enroll_to_active_and_back(make_lab: LabFactory, tmp_path: Path) -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the sample OS image")
    image = build_test_os()
    h = make_lab(vms=1, firmware="bios", memory_mib=768, ramdisk="agent")
    rec = h.vms[0]
    node = rec.node
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)})
    assert r.status_code == 201, r.text

    # inspect: the inventory is the VM's
    verb(h, node, "inspect")
    inspected = wait_state(h, node, "manageable", RAMDISK_TIMEOUT)
    inventory = h.api.get(f"/v1/nodes/{node}/inventory").json()["inventory"]
    definition = json.loads(rec.definition.read_text())
    assert inventory["cpu"]["count"] == definition.get("cpus", 1)
    assert inventory["memory"]["physical_mb"] == definition["memory_mib"]
    assert [d["size"] for d in inventory["disks"]] == [1 * GiB]
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]
    assert inspected["properties"]["memory_mb"] == definition["memory_mib"]

    # provide: cleaned by the same agent (fast track), then deploy with user data
    verb(h, node, "provide")
    wait_state(h, node, "available", 180)
    user_data = f"hello from bootforge {uuid.uuid4().hex[:8]}"
    patch = [{"op": "add", "path": "/instance_info/image_source", "value": "sample-os"}]
    assert h.api.patch(f"/v1/nodes/{node}", json=patch).status_code == 200
    since = console_offset(rec)
    verb(h, node, "active", configdrive={"user_data": user_data})
    wait_state(h, node, "active", 300)
    wait_console(rec, BOOTED_MARKER, 120, since)
    line = wait_console(rec, USER_DATA_MARKER, 60, since)
    assert line.strip().endswith(USER_DATA_MARKER + user_data), line
    events = [e["event"] for e in h.api.get(f"/v1/nodes/{node}/history").json()["history"]]
    assert any("handoff seen" in e for e in events)

    # undeploy: the ramdisk boots again and cleans the disk
    verb(h, node, "deleted")
    wait_state(h, node, "available", RAMDISK_TIMEOUT)
    h.power(rec, "power off")
    blank = is_blank_metadata(raw_copy(rec.disk, tmp_path))
    assert blank, blank.found

    # a wrong checksum: deploy failed naming both digests, the partition table as it was
    h.write_disk(rec, image)
    subprocess.run(["qemu-img", "resize", "-q", str(rec.disk), "1G"], check=True, timeout=60)
    before = partition_table(raw_copy(rec.disk, tmp_path))
    wrong = "0" * 64
    patch = [
        {"op": "add", "path": "/instance_info/image_source", "value": "sample-os"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": wrong},
    ]
    assert h.api.patch(f"/v1/nodes/{node}", json=patch).status_code == 200
    verb(h, node, "active")
    failed = wait_state(h, node, "deploy failed", RAMDISK_TIMEOUT)
    good = hashlib.sha256(image.read_bytes()).hexdigest()
    assert wrong in failed["last_error"] and good in failed["last_error"], failed["last_error"]
    h.power(rec, "power off")
    assert partition_table(raw_copy(rec.disk, tmp_path)) == before
