"""arm64 VMs in the qemu driver's machine layer (#12): qemu-system-aarch64 -M virt with a CPU model,
AAVMF in two pflash devices (Microsoft-key variables for Secure Boot, no x86 SMM flag), SCSI CDs
(virt has no IDE), never KVM on an x86 host, and never BIOS."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import lab


def arm64(tmp_path: Path, **more: object) -> vm.VmDefinition:
    rec = lab.VmRecord("vm1", "arm64", "52:54:00:77:00:01", "tap0", str(tmp_path))
    raw = lab.vm_definition(rec, 512, "bflab-1-1-net") | {"state_dir": str(tmp_path)} | more
    return vm.VmDefinition.model_validate(raw)


def test_arm64_argv(tmp_path: Path) -> None:
    defn = arm64(tmp_path, cdrom=True)
    fw = vm.Firmware(Path("/aavmf/code.fd"), Path("/aavmf/vars.fd"))
    argv = vm.build_argv(defn, "kvm", fw)
    assert argv[4:5] == [vm.AARCH64_BINARY]
    assert argv[argv.index("-machine") + 1] == "virt" and argv[argv.index("-cpu") + 1] == lab.ARM64_CPU
    if platform.machine() != "aarch64":
        assert argv[argv.index("-accel") + 1] == "tcg"  # this host's KVM runs x86 only
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/aavmf/code.fd" in argv
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vm1-OVMF_VARS.fd" in argv
    assert "virtio-scsi-pci,id=scsi0" in argv and "scsi-cd,drive=cdrom-drive,id=cdrom" in argv
    assert not any("ide-cd" in a for a in argv) and "virtio-rng-pci" in argv
    nic = argv[argv.index("-device", argv.index("-netdev")) + 1]
    assert nic.startswith("virtio-net-pci,") and nic.endswith(",romfile=")
    secure = vm.build_argv(arm64(tmp_path, secure_boot=True), "tcg", fw)
    assert "driver=cfi.pflash01,property=secure,value=on" not in secure  # SMM is x86's


def test_arm64_firmware_and_refusals(tmp_path: Path) -> None:
    code, template = vm.AAVMF_CANDIDATES[0]
    if not (Path(code).is_file() and Path(template).is_file()):
        with pytest.raises(vm.QemuError, match="qemu-efi-aarch64"):
            vm.firmware_for(arm64(tmp_path))
    else:
        assert vm.firmware_for(arm64(tmp_path)) == vm.Firmware(Path(code), Path(template))
        ms = vm.firmware_for(arm64(tmp_path, secure_boot=True))
        assert ms.vars_template == Path(vm.AAVMF_SECURE_BOOT_CANDIDATES[0][1])
    with pytest.raises(vm.QemuError, match="UEFI only"):
        vm.build_argv(arm64(tmp_path, boot_mode="bios"), "tcg", vm.Firmware())
    with pytest.raises(ValueError, match="cpu_model"):
        arm64(tmp_path, cpu_model="max -append x")
