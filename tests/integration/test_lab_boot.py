"""End to end: QEMU VMs network-boot from bootforge alone (its DHCP, TFTP, HTTP) into the lab's ramdisk.

One test per firmware: SeaBIOS + QEMU's iPXE ROM; OVMF's own PXE -> TFTP ipxe.efi. (OVMF HTTP boot's
chain is checked in the firmware matrix and deployed in test_lab_deploy_uefi.py.) Each VM is powered on
through the API (qemu driver: bootforge starts the process), boots the ramdisk, whose HTTP call to the
API prints a marker; power off through the API ends the process; boot device "disk" makes the next boot
start the disk without touching the network. Run them with `pytest tests/integration/test_lab_boot.py`
(marked qemu, netns, slow)."""

from __future__ import annotations

import re
import time

import pytest
from support.lab import (
    BOOT_TIMEOUT,
    DISK_MARKER,
    OVMF_DISK_START,
    LabFactory,
    LabHandle,
    bootable_disk,
    console_offset,
    wait_console,
)

from bootforge.lab.lab import VmRecord
from bootforge.lab.ramdisk import API_MARKER, FAIL_MARKER, build

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

# What each firmware fetches before iPXE runs bootforge's script (from the node's timeline).
LOADER_FETCH = {
    "bios": None,  # the NIC ROM is iPXE already
    "uefi": ("tftp", re.compile(r"^tftp ipxe\.efi completed")),
}


def boot_ramdisk(h: LabHandle, rec: VmRecord) -> float:
    """Power on through the API and wait for the ramdisk's marker; returns the seconds it took."""
    since = console_offset(rec)
    start = time.monotonic()
    h.power(rec, "power on")
    line = wait_console(rec, re.compile(f"{API_MARKER}|{FAIL_MARKER}"), BOOT_TIMEOUT, since)
    assert API_MARKER in line, line
    assert f"node={rec.node}" in line
    return time.monotonic() - start


def assert_fetched_ramdisk(h: LabHandle, rec: VmRecord) -> None:
    http = [e["event"] for e in h.history(rec, "http")]
    for path in ("/boot/ipxe", "/bootforge/vmlinuz", "/bootforge/initrd"):
        assert any(e.startswith(f"http GET {path} 200") for e in http), (path, http)
    assert any(e.startswith("dhcp.ack") for e in (x["event"] for x in h.history(rec, "dhcp")))
    loader = LOADER_FETCH[rec.firmware]
    if loader is not None:
        kind, pattern = loader
        assert any(pattern.search(e["event"]) for e in h.history(rec, kind)), h.history(rec, kind)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_network_boot_then_disk_boot(make_lab: LabFactory, firmware: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    h = make_lab(vms=1, firmware=firmware)
    rec = h.vms[0]
    # A disk that would boot (and say so) if the firmware tried it: the network boot must win.
    h.write_disk(rec, bootable_disk(tmp_path_factory.mktemp("disk"), build().kernel))
    h.serve_ramdisk(rec)

    took = boot_ramdisk(h, rec)
    print(f"\n{firmware}: power on -> ramdisk reached the API in {took:.1f} s")
    assert_fetched_ramdisk(h, rec)
    pid = h.qemu_pid(rec)
    assert pid is not None

    h.power(rec, "power off")
    assert h.qemu_pid(rec) is None
    assert h.node(rec)["power_state"] == "power off"

    h.set_boot_device(rec, "disk")  # once: the next boot only
    h.timeline_fence(rec)  # the ramdisk's own DHCP exchanges are all written before the count
    dhcp_before = len(h.history(rec, "dhcp"))
    since = console_offset(rec)
    start = time.monotonic()
    h.power(rec, "power on")
    marker = DISK_MARKER if firmware == "bios" else OVMF_DISK_START
    wait_console(rec, marker, BOOT_TIMEOUT, since)
    print(f"{firmware}: power on -> local disk started in {time.monotonic() - start:.1f} s")
    with open(rec.console, "rb") as f:
        f.seek(since)
        console = f.read().decode(errors="replace")
    before_disk = console.split("UEFI Misc Device" if firmware != "bios" else DISK_MARKER)[0]
    for network_sign in ("iPXE initialising", "Start PXE", "Start HTTP", "Booting from ROM"):
        assert network_sign not in before_disk, network_sign
    h.timeline_fence(rec)  # any DHCP from this boot is written by now
    assert len(h.history(rec, "dhcp")) == dhcp_before
    h.power(rec, "power off")


def test_eight_vms_at_once(make_lab: LabFactory) -> None:
    h = make_lab(vms=8, firmware="bios", memory_mib=256)
    h.serve_ramdisk(*h.vms)
    offsets = {rec.name: console_offset(rec) for rec in h.vms}
    start = time.monotonic()
    for rec in h.vms:
        h.power(rec, "power on")
    reached = {}
    for rec in h.vms:  # in order; each wait also covers the ones still booting
        line = wait_console(
            rec, re.compile(f"{API_MARKER}|{FAIL_MARKER}"), 2 * BOOT_TIMEOUT, offsets[rec.name]
        )
        assert API_MARKER in line, line
        reached[rec.name] = time.monotonic() - start
    last = max(reached.values())
    print(f"\n8 VMs powered on at once: the last reached the API {last:.1f} s after the first power on")
    for rec in h.vms:
        h.power(rec, "power off")
