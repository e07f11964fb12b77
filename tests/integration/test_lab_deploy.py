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
import uuid
from pathlib import Path

import pytest
from support.disk_check import is_blank_metadata, partition_table
from support.lab import RAMDISK_TIMEOUT, LabFactory

from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

GiB = 1024**3


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
    h.verb(rec, "inspect")
    inspected = h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    inventory = h.api.get(f"/v1/nodes/{node}/inventory").json()["inventory"]
    definition = json.loads(rec.definition.read_text())
    assert inventory["cpu"]["count"] == definition.get("cpus", 1)
    assert inventory["memory"]["physical_mb"] == definition["memory_mib"]
    assert [d["size"] for d in inventory["disks"]] == [1 * GiB]
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]
    assert inspected["properties"]["memory_mb"] == definition["memory_mib"]
    # The agent's lookup came from the address bootforge's DHCP leased to the VM (the only one it
    # accepts in full mode, #11 finding 2), with the boot token from the VM's boot script.
    events = [e["event"] for e in h.history(rec)]
    looked_up = [e.split(" from ", 1)[1] for e in events if e.startswith("agent looked up from ")]
    acked = {e.split()[2] for e in events if e.startswith("dhcp.ack ")}
    assert looked_up and set(looked_up) <= acked, (looked_up, acked)

    # provide: cleaned by the same agent (fast track), then deploy with user data
    h.verb(rec, "provide")
    h.wait_state(rec, "available", 180)
    h.deploy_sample_os(rec, "sample-os", f"hello from bootforge {uuid.uuid4().hex[:8]}", 120)

    # undeploy: the ramdisk boots again and cleans the disk
    h.verb(rec, "deleted")
    h.wait_state(rec, "available", RAMDISK_TIMEOUT)
    h.power(rec, "power off")
    blank = is_blank_metadata(h.raw_disk(rec, tmp_path))
    assert blank, blank.found

    # a wrong checksum: deploy failed naming both digests, the partition table as it was
    h.write_disk(rec, image)
    subprocess.run(["qemu-img", "resize", "-q", str(rec.disk), "1G"], check=True, timeout=60)
    before = partition_table(h.raw_disk(rec, tmp_path))
    wrong = "0" * 64
    patch = [
        {"op": "add", "path": "/instance_info/image_source", "value": "sample-os"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": wrong},
    ]
    assert h.api.patch(f"/v1/nodes/{node}", json=patch).status_code == 200
    h.verb(rec, "active")
    failed = h.wait_state(rec, "deploy failed", RAMDISK_TIMEOUT)
    good = hashlib.sha256(image.read_bytes()).hexdigest()
    assert wrong in failed["last_error"] and good in failed["last_error"], failed["last_error"]
    h.power(rec, "power off")
    assert partition_table(h.raw_disk(rec, tmp_path)) == before
