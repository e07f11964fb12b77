"""The qemu hardware type against real QEMU (TCG): power, soft-off fallback, boot devices on the console.

The VMs have no network at all (a NIC on a hub of its own) and a blank disk, so the boot device is
read from the firmware's serial console: SeaBIOS prints "Booting from ROM..." (the NIC's iPXE ROM) or
"Booting from Hard Disk..."; OVMF starts iPXE or reports the disk as "UEFI Misc Device". Every VM is
ended by pid when its test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootforge.drivers import base
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.qemu import QemuManagement, QemuPower
from bootforge.errors import DriverError

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

BOOT_WAIT = 90.0  # generous: TCG on a shared 2-core machine


@dataclass
class Node:
    driver_info: dict[str, Any]
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    power_state: str | None = None


@dataclass
class Task:
    node: Node
    events: list[tuple[str, str, str]] = field(default_factory=list)
    ports: list[Any] = field(default_factory=list)

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append((event_type, message, severity))

    async def get_ports(self) -> list[Any]:
        return self.ports

    async def save(self) -> None:
        return None


@pytest.fixture
def qemu_binary() -> str:
    path = shutil.which(vm.DEFAULT_BINARY)
    if path is None:
        pytest.skip("needs qemu-system-x86_64 (Debian package qemu-system-x86)")
    return path


@pytest.fixture
def pid_files() -> Iterator[list[Path]]:
    """Pid files of VMs a test started; each live one is killed by pid at teardown."""
    files: list[Path] = []
    yield files
    for f in files:
        pid = vm.read_pid(f)
        if pid is not None and vm.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def definition(tmp: Path, over: dict[str, Any]) -> Path:
    disk = tmp / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 8 << 20)  # blank: no boot sector
    defn = {
        "name": "node1",
        "memory_mib": 256,
        "disks": [{"path": "disk.img"}],
        "nics": [{"mac": "52:54:00:77:00:10"}],
        "serial_log": "serial.log",
        **over,
    }
    path = tmp / "node1.json"
    path.write_text(json.dumps(defn))
    return path


def owned_task(tmp: Path, pid_files: list[Path], defn: dict[str, Any] | None = None, **info: Any) -> Task:
    sock = tmp / "qmp.sock"
    pid_files.append(Path(f"{sock}.pid"))
    command = str(definition(tmp, defn or {}))
    return Task(Node({"qemu_qmp_socket": str(sock), "qemu_command": command, **info}))


def read_console(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""


async def wait_for_console(log: Path, pattern: str, offset: int = 0) -> re.Match[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOOT_WAIT
    while True:
        text = await asyncio.to_thread(read_console, log, offset)
        match = re.search(pattern, text)
        if match or loop.time() > deadline:
            assert match, f"{pattern!r} not on the console after {BOOT_WAIT:.0f} s:\n{text[-2000:]}"
            return match
        await asyncio.sleep(0.5)


async def test_bios_vm_boots_pxe_once_then_disk_and_powers_off(
    qemu_binary: str, tmp_path: Path, pid_files: list[Path]
) -> None:
    task = owned_task(tmp_path, pid_files)
    power, mgmt = QemuPower(), QemuManagement()
    log = tmp_path / "serial.log"

    assert await power.get_power_state(task) == base.POWER_OFF  # no process, no socket yet
    await mgmt.set_boot_device(task, "disk", persistent=True)
    await mgmt.set_boot_device(task, "pxe", persistent=False)
    assert await mgmt.get_boot_device(task) == {"boot_device": "pxe", "persistent": False}

    await power.set_power_state(task, base.POWER_ON)
    assert await power.get_power_state(task) == base.POWER_ON
    first = await wait_for_console(log, r"Booting from (ROM|Hard Disk)")
    assert first.group(1) == "ROM"  # the NIC's iPXE ROM, once
    await wait_for_console(log, r"Booting from ROM[\s\S]*iPXE \(PCI [0-9a-f:.]+\) starting execution")
    assert await mgmt.get_boot_device(task) == {"boot_device": "disk", "persistent": True}

    offset = log.stat().st_size
    await power.reboot(task)
    again = await wait_for_console(log, r"SeaBIOS[\s\S]*?Booting from (ROM|Hard Disk)", offset)
    assert again.group(1) == "Hard Disk"  # the one-time device is gone after one boot

    pid = vm.read_pid(pid_files[0])
    assert pid is not None and vm.pid_alive(pid)
    await power.set_power_state(task, base.POWER_OFF)
    assert not vm.pid_alive(pid)  # owned VM: power off ends the process
    assert await power.get_power_state(task) == base.POWER_OFF


async def test_soft_off_of_a_vm_without_os_falls_back_to_hard_off(
    qemu_binary: str, tmp_path: Path, pid_files: list[Path]
) -> None:
    task = owned_task(tmp_path, pid_files)
    power = QemuPower()
    await power.set_power_state(task, base.POWER_ON)
    await wait_for_console(tmp_path / "serial.log", r"SeaBIOS")

    await power.set_power_state(task, base.SOFT_POWER_OFF, timeout=3)
    assert await power.get_power_state(task) == base.POWER_OFF
    assert any(sev == "warning" and "ACPI" in msg for _, msg, sev in task.events)
    pid = vm.read_pid(pid_files[0])
    assert pid is None or not vm.pid_alive(pid)

    # Powering on again starts a fresh process from the same definition.
    await power.set_power_state(task, base.POWER_ON)
    assert await power.get_power_state(task) == base.POWER_ON
    await power.set_power_state(task, base.POWER_OFF)


async def test_external_vm_is_paused_not_ended_and_a_killed_one_reads_off(
    qemu_binary: str, tmp_path: Path
) -> None:
    sock = tmp_path / "qmp.sock"
    argv = [
        qemu_binary, "-accel", vm.detect_accel(), "-m", "128", "-display", "none", "-nic", "none", "-S",
        "-qmp", f"unix:{sock},server=on,wait=off",
    ]  # fmt: skip
    devnull = asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(*argv, stdin=devnull, stdout=devnull, stderr=devnull)
    try:
        task = Task(Node({"qemu_qmp_socket": str(sock)}))
        power = QemuPower()
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.1)
        assert await power.get_power_state(task) == base.POWER_OFF  # prelaunch: started paused

        await power.set_power_state(task, base.POWER_ON)
        assert await power.get_power_state(task) == base.POWER_ON
        await power.set_power_state(task, base.POWER_OFF)
        assert await power.get_power_state(task) == base.POWER_OFF
        assert proc.returncode is None  # external VM: the process is kept
        await power.reboot(task)
        assert await power.get_power_state(task) == base.POWER_ON

        proc.kill()
        await proc.wait()
        assert sock.exists()  # a stale socket file: connect is refused
        assert await power.get_power_state(task) == base.POWER_OFF
        with pytest.raises(DriverError, match="qemu_command"):
            await power.set_power_state(task, base.POWER_ON)
        await power.set_power_state(task, base.POWER_OFF)  # already off: nothing to do
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_owned_vm_from_a_raw_argv(qemu_binary: str, tmp_path: Path, pid_files: list[Path]) -> None:
    sock = tmp_path / "qmp.sock"
    pid_files.append(Path(f"{sock}.pid"))
    argv = [qemu_binary, "-accel", vm.detect_accel(), "-m", "128", "-display", "none", "-nic", "none"]
    task = Task(Node({"qemu_qmp_socket": str(sock), "qemu_command": json.dumps(argv)}))
    power, mgmt = QemuPower(), QemuManagement()

    await power.set_power_state(task, base.POWER_ON)
    assert await power.get_power_state(task) == base.POWER_ON
    with pytest.raises(DriverError, match="no pxe boot device"):
        await mgmt.set_boot_device(task, "pxe")  # -nic none: nothing to network-boot from

    pid = vm.read_pid(pid_files[0])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # QEMU crashed: its pid file and socket file stay behind
    assert await vm.wait_gone(pid, 10)
    assert await power.get_power_state(task) == base.POWER_OFF
    await power.set_power_state(task, base.POWER_ON)  # starts a new process
    assert await power.get_power_state(task) == base.POWER_ON
    await power.set_power_state(task, base.POWER_OFF)
    assert await power.get_power_state(task) == base.POWER_OFF


async def test_uefi_vm_boots_disk_once_before_the_persistent_nic(
    qemu_binary: str, tmp_path: Path, pid_files: list[Path]
) -> None:
    try:
        vm.find_ovmf()
    except vm.QemuError:
        pytest.skip("needs OVMF firmware (Debian package ovmf)")
    # OVMF needs more than 256 MiB.
    task = owned_task(tmp_path, pid_files, {"memory_mib": 512}, qemu_boot_mode="uefi")
    power, mgmt = QemuPower(), QemuManagement()
    log = tmp_path / "serial.log"

    await mgmt.set_boot_device(task, "pxe", persistent=True)
    await mgmt.set_boot_device(task, "disk")
    await power.set_power_state(task, base.POWER_ON)
    first = await wait_for_console(log, r"UEFI Misc Device|iPXE")
    assert first.group(0) == "UEFI Misc Device"  # OVMF tried the (blank) disk first
    assert (tmp_path / "node1-OVMF_VARS.fd").is_file()  # the VM's own variable store

    offset = log.stat().st_size
    await power.reboot(task)
    again = await wait_for_console(log, r"UEFI Misc Device|iPXE", offset)
    assert again.group(0) == "iPXE"  # back to the persistent NIC
    await power.set_power_state(task, base.POWER_OFF)
    assert await power.get_power_state(task) == base.POWER_OFF
