"""QEMU VMs with Secure Boot enforced (#12): the definition's secure_boot picks OVMF with Microsoft's
keys and a secure pflash; the lab's uefi-sb firmware asks for it (SMM, TCG) and stays out of "mixed"."""

from __future__ import annotations

import json
from pathlib import Path

from bootforge.drivers import qemu_machine as vm
from bootforge.lab.lab import FIRMWARES, VmRecord, firmware_plan, vm_definition


def test_secure_boot_definition_gets_a_secure_pflash_and_the_ms_firmware(tmp_path: Path) -> None:
    assert vm.OVMF_SECURE_BOOT_CANDIDATES[0][0].endswith("OVMF_CODE_4M.ms.fd")
    code, template = tmp_path / "CODE.ms.fd", tmp_path / "VARS.ms.fd"
    code.write_bytes(b"c")
    template.write_bytes(b"ms keys")
    raw = {"name": "n1", "boot_mode": "uefi", "machine": "q35,smm=on", "secure_boot": True, "state_dir": "s"}
    (tmp_path / "n1.json").write_text(json.dumps(raw))
    defn = vm.load_definition(tmp_path / "n1.json")
    firmware = vm.find_ovmf([(str(code), str(template))])
    vm.prepare_state_files(defn, firmware)
    argv = vm.build_argv(defn, "tcg", firmware)
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"
    secure = argv.index("driver=cfi.pflash01,property=secure,value=on")
    assert argv[secure - 1] == "-global" and secure < argv.index(
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}"
    )
    assert (tmp_path / "s" / "n1-OVMF_VARS.fd").read_bytes() == b"ms keys"
    (tmp_path / "n1.json").write_text(json.dumps(raw | {"secure_boot": False}))
    plain = vm.build_argv(vm.load_definition(tmp_path / "n1.json"), "tcg", firmware)
    assert "driver=cfi.pflash01,property=secure,value=on" not in plain


def test_lab_uefi_sb_vm_and_mixed(tmp_path: Path) -> None:
    rec = VmRecord("vm1", "uefi-sb", "52:54:00:77:00:01", "tap1", str(tmp_path))
    defn = vm_definition(rec, 512, "ns")
    assert defn["secure_boot"] is True and defn["machine"] == "q35,smm=on" and defn["accel"] == "tcg"
    assert defn["boot_mode"] == "uefi" and defn["nics"][0]["romfile"] == ""
    assert "secure_boot" not in vm_definition(
        VmRecord("vm2", "uefi", "52:54:00:77:00:02", "t", "d"), 512, "ns"
    )
    assert "uefi-sb" in FIRMWARES and "uefi-sb" not in firmware_plan(8, "mixed")
