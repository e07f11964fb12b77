"""VM definition files, QEMU argv building, accelerator choice (bootforge.drivers.qemu_machine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootforge.drivers import qemu_machine as vm


def write(tmp: Path, **defn: object) -> Path:
    path = tmp / "vm.json"
    path.write_text(json.dumps({"name": "n1", **defn}))
    return path


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_bios_argv(tmp_path: Path) -> None:
    defn = vm.load_definition(
        write(
            tmp_path,
            memory_mib=300,
            disks=[{"path": "disk.img"}, {"path": "/isos/x.iso", "media": "cdrom"}],
            nics=[{"mac": "52:54:00:00:00:01", "tap": "tap0"}, {"mac": "52:54:00:00:00:02", "romfile": ""}],
            serial_log="serial.log",
            netns="lab",
        )
    )
    argv = vm.build_argv(defn, "tcg", vm.Firmware())
    assert argv[:5] == ["ip", "netns", "exec", "lab", "qemu-system-x86_64"]
    assert after(argv, "-accel") == ["tcg"] and after(argv, "-m") == ["300"]
    assert after(argv, "-display") == ["none"]
    assert after(argv, "-fw_cfg") == [f"name=etc/sercon-port,file={tmp_path}/sercon-port.bin"]
    assert after(argv, "-chardev") == [f"file,id=serial0,path={tmp_path}/serial.log,append=on"]
    assert after(argv, "-netdev") == [
        "tap,id=net0,ifname=tap0,script=no,downscript=no",
        "hubport,id=net1,hubid=101",  # no tap: a hub of its own, no network
    ]
    devices = after(argv, "-device")
    assert "virtio-blk-pci,drive=disk0-drive,id=disk0" in devices
    assert "ide-cd,drive=cd1-drive,id=cd1" in devices
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0" in devices
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02,id=nic1,romfile=" in devices
    assert f"file={tmp_path}/disk.img,format=raw,if=none,id=disk0-drive" in after(argv, "-drive")
    assert "pflash" not in " ".join(argv)


def test_uefi_argv_uses_the_vms_own_variable_store(tmp_path: Path) -> None:
    code, template = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"c")
    template.write_bytes(b"template")
    firmware = vm.find_ovmf([("/nonexistent/CODE.fd", "/nonexistent/VARS.fd"), (str(code), str(template))])
    assert firmware == vm.Firmware(code, template)
    defn = vm.load_definition(write(tmp_path, state_dir="state"), boot_mode="uefi")
    vm.prepare_state_files(defn, firmware)
    own = tmp_path / "state" / "n1-OVMF_VARS.fd"
    assert own.read_bytes() == b"template"
    own.write_bytes(b"nvram written by the guest")
    vm.prepare_state_files(defn, firmware)
    assert own.read_bytes() == b"nvram written by the guest"  # never reset behind the operator's back
    drives = after(vm.build_argv(defn, "kvm", firmware), "-drive")
    assert drives == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        f"if=pflash,format=raw,unit=1,file={own}",
    ]


def test_missing_ovmf_says_what_to_install() -> None:
    with pytest.raises(vm.QemuError, match="apt-get install ovmf"):
        vm.find_ovmf([("/nonexistent/a", "/nonexistent/b")])


def test_sercon_file_names_com1(tmp_path: Path) -> None:
    defn = vm.load_definition(write(tmp_path))
    vm.prepare_state_files(defn, vm.Firmware())
    assert (tmp_path / "sercon-port.bin").read_bytes() == b"\xf8\x03"


@pytest.mark.parametrize(
    ("defn", "where"),
    [
        ({"nics": [{"mac": "52:54:00:00:00"}]}, "nics.0.mac"),
        ({"memory_mib": 16}, "memory_mib"),
        ({"boot_mode": "efi"}, "boot_mode"),
        ({"disk": []}, "disk"),
        ({"name": "../x"}, "name"),
    ],
)
def test_bad_definition_names_the_field(tmp_path: Path, defn: dict[str, object], where: str) -> None:
    with pytest.raises(vm.QemuError, match=where.replace(".", r"\.")):
        vm.load_definition(write(tmp_path, **defn))


def test_unreadable_definition(tmp_path: Path) -> None:
    with pytest.raises(vm.QemuError, match="cannot read VM definition"):
        vm.load_definition(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(vm.QemuError, match="invalid VM definition"):
        vm.load_definition(tmp_path / "bad.json")


def test_control_args_start_paused_in_the_background(tmp_path: Path) -> None:
    args = vm.control_args(tmp_path / "q.sock", tmp_path / "q.pid")
    assert after(args, "-qmp") == [f"unix:{tmp_path}/q.sock,server=on,wait=off"]
    assert "-S" in args and "-daemonize" in args


def fake_root(tmp: Path, *, pvm: bool = False, kvm: bool = True, flags: str = "fpu vmx sse") -> Path:
    (tmp / "proc").mkdir(parents=True)
    (tmp / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    (tmp / "dev").mkdir()
    if kvm:
        (tmp / "dev/kvm").write_bytes(b"")
    if pvm:
        (tmp / "sys/module/kvm_pvm").mkdir(parents=True)
    return tmp


def test_accel_kvm_only_where_it_can_run_firmware(tmp_path: Path) -> None:
    assert vm.detect_accel(fake_root(tmp_path / "a")) == "kvm"
    assert vm.detect_accel(fake_root(tmp_path / "b", flags="fpu svm")) == "kvm"
    assert vm.detect_accel(fake_root(tmp_path / "c", pvm=True)) == "tcg"  # nested PVM: firmware fails
    assert vm.detect_accel(fake_root(tmp_path / "d", flags="fpu sse")) == "tcg"
    assert vm.detect_accel(fake_root(tmp_path / "e", kvm=False)) == "tcg"


def test_pid_helpers(tmp_path: Path) -> None:
    assert vm.read_pid(tmp_path / "none.pid") is None
    (tmp_path / "junk.pid").write_text("abc\n")
    assert vm.read_pid(tmp_path / "junk.pid") is None
    (tmp_path / "me.pid").write_text(f"{os.getpid()}\n")
    assert vm.read_pid(tmp_path / "me.pid") == os.getpid()
    assert not vm.pid_alive(os.getpid())  # alive, but not a QEMU: a recycled pid must not count


async def test_spawn_failure_carries_qemus_message(tmp_path: Path) -> None:
    with pytest.raises(vm.QemuError, match="cannot run"):
        await vm.spawn_daemon([str(tmp_path / "no-such-qemu")], 5)
    script = tmp_path / "fails.sh"
    script.write_text("#!/bin/sh\necho 'qemu: -m: bad size' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(vm.QemuError, match="bad size"):
        await vm.spawn_daemon([str(script)], 5)
