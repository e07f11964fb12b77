"""ARM64 booted for real (#12): an AAVMF VM (qemu-system-aarch64 -M virt, cortex-a72, TCG) on the lab
bridge, powered by the qemu driver, is inspected through the API. bootforge's DHCP sees architecture
0x0b and offers Debian's signed arm64 shim over TFTP (there is no arm64 iPXE), shim loads the signed
network GRUB (grubaa64.efi), GRUB reads its per-node config and the arm64 ramdisk (built from Debian's
arm64 packages on this x86 machine) by TFTP, and the agent looks up, inspects and reports an aarch64
CPU. The node's cpu_arch comes from DHCP before any inspection. Power on -> lookup is printed. Then
the node is provided (disks erased) and deployed with an arm64 sample OS (Debian's arm64 kernel
behind systemd-boot's BOOTAA64.EFI) with user data, and boots it from its disk: active.

Marked qemu, netns, slow: TCG emulates every arm64 instruction (firmware, a 33 MB kernel over TFTP,
Python) on a shared 2-core machine."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from typing import Any

import pytest
from support.lab import LabFactory, LabHandle, lab_unavailable_reason

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import sample_os
from bootforge.lab.lab import VmRecord

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

# By hand here: power on -> the agent's lookup 27.5 s, inspect -> manageable 31.7 s (TCG, cortex-a72,
# one vCPU); the bound leaves room for a machine busy with other VMs without letting a hang run on.
ARM64_TIMEOUT = 420.0


def when(event: dict[str, Any]) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def first_event(h: LabHandle, rec: VmRecord, text: str) -> dt.datetime:
    found = [when(e) for e in h.history(rec) if text in e["event"]]
    assert found, f"no {text!r} event on {rec.name}'s timeline"
    return min(found)


def test_aavmf_arm64_vm_pxe_boots_the_arm64_ramdisk_to_the_agents_lookup(make_lab: LabFactory) -> None:
    reason = lab_unavailable_reason("uefi")
    if reason is None and shutil.which(vm.AARCH64_BINARY) is None:
        reason = f"needs {vm.AARCH64_BINARY} (Debian package qemu-system-arm)"
    if reason is None:
        try:
            vm.find_ovmf(vm.AAVMF_CANDIDATES)
        except vm.QemuError as e:
            reason = str(e)
    if reason is not None:
        pytest.skip(reason)
    h = make_lab(vms=1, firmware="arm64", ramdisk="agent")
    rec = h.vms[0]
    assert "cpu_arch" not in h.node(rec)["properties"]  # nobody told bootforge: DHCP will
    start = time.monotonic()
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", ARM64_TIMEOUT)
    took = time.monotonic() - start
    # boot_ramdisk's event right after the power-on it sent (the qemu driver writes no event of its own)
    power_on = first_event(h, rec, "network-booting the bootforge ramdisk")
    lookup = first_event(h, rec, "agent looked up")
    print(
        f"\narm64 (AAVMF, TCG): power on -> agent lookup {(lookup - power_on).total_seconds():.1f} s, "
        f"inspect verb -> manageable {took:.1f} s"
    )
    node = h.node(rec)
    assert node["properties"]["cpu_arch"] == "aarch64", node["properties"]
    # Recorded from the firmware's DHCP before the agent's inventory said the same.
    recorded = first_event(h, rec, "properties.cpu_arch set to aarch64")
    assert recorded <= lookup
    inventory = h.api.get(f"/v1/nodes/{rec.node}/inventory").json()["inventory"]
    assert inventory["cpu"]["architecture"] == "aarch64"
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]
    # The chain, fetch by fetch: signed shim and GRUB for arm64, the per-node config, the arm64
    # ramdisk; nothing unsigned (no iPXE) at all. GRUB names files with the prefix's leading slash.
    tftp = [e["event"].replace("tftp /", "tftp ", 1) for e in h.history(rec, "tftp")]
    dashed = rec.mac.replace(":", "-")
    for name in (
        "shimaa64.efi",
        "grubaa64.efi",
        "grub/grub.cfg",
        f"grub/grub.cfg-01-{dashed}",
        "bootforge/arm64/vmlinuz",
        "bootforge/arm64/initrd",
    ):
        assert any(e.startswith(f"tftp {name} completed") for e in tftp), (name, tftp)
    assert not any("ipxe" in e for e in tftp), tftp
    offers = [e["event"] for e in h.history(rec, "dhcp") if "arm64-uefi" in e["event"]]
    assert offers and all("boot=shimaa64.efi" in e for e in offers), offers

    # The deploy, in the same ramdisk boot (fast track): erase, write the arm64 sample OS and its
    # config drive, power cycle onto the disk.
    missing = sample_os.missing_tools("arm64")
    if missing:
        pytest.skip(f"inspection passed; the arm64 sample OS needs {', '.join(missing)}")
    image = sample_os.build_test_os(firmware="arm64")
    r = h.api.post("/v1/images", json={"name": "sample-os-arm64", "source": str(image)})
    # Told by its ESP's EFI/BOOT/BOOTAA64.EFI (systemd-boot's arm64 PE): an x86 node would refuse it.
    assert r.status_code == 201 and r.json()["cpu_arch"] == "aarch64", r.text
    h.verb(rec, "provide")
    h.wait_state(rec, "available", ARM64_TIMEOUT)
    start = time.monotonic()
    h.deploy_sample_os(rec, "sample-os-arm64", "hello arm64", ARM64_TIMEOUT)
    print(f"arm64 (AAVMF, TCG): deploy -> user data on the console {time.monotonic() - start:.1f} s")


def test_arm64_with_secure_boot_enforced_boots_through_the_same_signed_chain(make_lab: LabFactory) -> None:
    """AAVMF with Microsoft's keys in its variable store (Secure Boot enforced: a kernel started by the
    firmware itself is refused, checked by hand) and capabilities secure_boot:true: the same signed
    chain reaches the agent. Lookup only (the deploy path is the same as above)."""
    reason = lab_unavailable_reason("uefi")
    if reason is None and shutil.which(vm.AARCH64_BINARY) is None:
        reason = f"needs {vm.AARCH64_BINARY} (Debian package qemu-system-arm)"
    if reason is None:
        try:
            vm.find_ovmf(vm.AAVMF_SECURE_BOOT_CANDIDATES)
        except vm.QemuError as e:
            reason = str(e)
    if reason is not None:
        pytest.skip(reason)
    h = make_lab(vms=1, firmware="arm64-sb", ramdisk="agent")
    rec = h.vms[0]
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", ARM64_TIMEOUT)
    power_on = first_event(h, rec, "network-booting the bootforge ramdisk")
    lookup = first_event(h, rec, "agent looked up")
    took = (lookup - power_on).total_seconds()
    print(f"\narm64-sb (AAVMF, Microsoft keys): power on -> agent lookup {took:.1f} s")
    tftp = [e["event"].replace("tftp /", "tftp ", 1) for e in h.history(rec, "tftp")]
    for name in ("shimaa64.efi", "grubaa64.efi", "bootforge/arm64/vmlinuz"):
        assert any(e.startswith(f"tftp {name} completed") for e in tftp), (name, tftp)
    assert h.node(rec)["properties"]["cpu_arch"] == "aarch64"
