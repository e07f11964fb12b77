"""The UEFI path of a deploy: a QEMU VM with OVMF network-boots bootforge's deploy ramdisk (by PXE,
and by UEFI HTTP boot), is inspected, cleaned and deployed with the UEFI sample OS (GPT, an EFI
System Partition, systemd-boot) and a config drive, then boots the OS from its disk and prints its
user data.

For a GPT image the agent moves the backup GPT header to the end of the bigger disk before it
appends the config drive; OVMF then boots the disk's removable-media loader. Undeploy and a failed
deploy do not depend on the firmware: test_lab_deploy.py covers them on BIOS.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.disk_check import find_config_drive, partition_table
from support.lab import RAMDISK_TIMEOUT, LabFactory

from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GiB = 1024**3


@pytest.mark.parametrize("firmware", ["uefi", "uefi-http"])
def test_uefi_deploy_boots_from_disk(make_lab: LabFactory, tmp_path: Path, firmware: str) -> None:
    missing = missing_tools("uefi")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the UEFI sample OS image")
    image = build_test_os(firmware="uefi")
    h = make_lab(vms=1, firmware=firmware, memory_mib=768, ramdisk="agent")
    rec = h.vms[0]
    node = rec.node
    assert node is not None, "the lab enrolls every VM as a node"
    r = h.api.post("/v1/images", json={"name": "sample-os-uefi", "source": str(image)})
    assert r.status_code == 201, r.text

    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    # The firmware fetched iPXE the way asked: over TFTP after PXE, over HTTP after HTTP boot.
    fetches = [e["event"] for e in h.history(rec) if e["event"].startswith(("tftp", "http GET /ipxe.efi"))]
    want = "http GET /ipxe.efi 200" if firmware == "uefi-http" else "tftp ipxe.efi completed"
    assert any(f.startswith(want) for f in fetches), fetches
    inventory = h.api.get(f"/v1/nodes/{node}/inventory").json()["inventory"]
    assert [d["size"] for d in inventory["disks"]] == [1 * GiB]
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]

    h.verb(rec, "provide")
    h.wait_state(rec, "available", 180)
    user_data = f"hello from bootforge on UEFI {uuid.uuid4().hex[:8]}"
    # OVMF's own start comes before the kernel's: longer than SeaBIOS under TCG.
    h.deploy_sample_os(rec, "sample-os-uefi", user_data, 240)

    # The disk as the OS left it: the image's GPT, its backup at the disk's end, ESP and config drive.
    h.power(rec, "power off")
    disk = h.raw_disk(rec, tmp_path)
    gpt = partition_table(disk)["gpt"]
    assert gpt is not None
    for header in (gpt["primary"], gpt["backup"]):
        assert header["header_crc_ok"] and header["entries_crc_ok"], header
        esp, _config_drive = header["partitions"]
        assert esp["type"] == ESP_TYPE and esp["first_lba"] == 2048
    assert gpt["backup"]["lba"] == GiB // 512 - 1
    assert find_config_drive(disk) == user_data.encode()
