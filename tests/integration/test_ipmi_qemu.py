"""A real VM behind the emulated IPMI BMC: ipmitool -> bootforge.lab.ipmi_bmc -> QMP -> QEMU.

The firmware's own words on the serial console say which device it booted, so the boot device set over
IPMI is checked by something neither client wrote; bootforge's ipmi driver powers the VM off at the
end and captures the same serial output over SOL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import start_ipmi_bmc, stop_process

from bootforge.config import Settings
from bootforge.drivers import base
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.hardware import Drivers

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

USER, PASSWORD = "admin", "qemu-bmc-pw"
BOOT_WAIT = 90.0  # TCG on a shared 2-core machine


@pytest.fixture
def vm_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    if shutil.which(vm.DEFAULT_BINARY) is None:
        pytest.skip("needs qemu-system-x86_64 (Debian package qemu-system-x86)")
    if shutil.which("ipmitool") is None:
        pytest.skip("needs ipmitool (Debian package ipmitool)")
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 8 << 20)  # blank: SeaBIOS finds no boot sector and says so
    defn = {
        "name": "ipmi-vm",
        "memory_mib": 256,
        "accel": "tcg",
        "disks": [{"path": "disk.img"}],
        "nics": [{"mac": "52:54:00:77:01:10"}],
        "serial_log": "serial.log",
    }
    (tmp_path / "vm.json").write_text(json.dumps(defn))
    files = {
        "defn": tmp_path / "vm.json",
        "qmp": tmp_path / "vm.qmp",
        "pid": tmp_path / "vm.qmp.pid",
        "serial": tmp_path / "serial.log",
    }
    yield files
    pid = vm.read_pid(files["pid"])
    if pid is not None and vm.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bmc_port(vm_files: dict[str, Path]) -> Iterator[int]:
    proc, ports = start_ipmi_bmc(
        USER, PASSWORD, "--port", "0", "--qmp-socket", str(vm_files["qmp"]),
        "--qemu-command", str(vm_files["defn"]), "--serial-log", str(vm_files["serial"]),
    )  # fmt: skip
    try:
        yield ports[0]
    finally:
        stop_process(proc)


async def tool(port: int, *args: str) -> str:
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", USER, "-P", PASSWORD]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"ipmitool {' '.join(args)}: {err.decode()}"
    return out.decode()


async def wait_power(port: int, want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await tool(port, "power", "status")).strip().endswith(want):
        assert time.monotonic() < deadline, f"power did not become {want}"
        await asyncio.sleep(0.2)


async def wait_console(log: Path, pattern: str, offset: int = 0) -> re.Match[str]:
    deadline = time.monotonic() + BOOT_WAIT
    while True:
        data = await asyncio.to_thread(lambda: log.read_bytes() if log.exists() else b"")
        match = re.search(pattern, data[offset:].decode(errors="replace"))
        if match:
            return match
        assert time.monotonic() < deadline, f"{pattern!r} not on the console:\n{data[-2000:]!r}"
        await asyncio.sleep(0.5)


async def test_vm_power_and_boot_device_over_ipmi(
    vm_files: dict[str, Path], bmc_port: int, tmp_path: Path
) -> None:
    port = bmc_port
    assert "Chassis Power is off" in await tool(port, "power", "status")  # no QEMU process yet
    await tool(port, "chassis", "bootdev", "disk", "options=persistent")
    await tool(port, "chassis", "bootdev", "pxe")
    flags = await tool(port, "chassis", "bootparam", "get", "5")
    assert "Force PXE" in flags and "all future boots" not in flags

    settings = Settings(state_dir=tmp_path / "bf", enabled_hardware_types=["ipmi"], ipmi={"timeout": 15})
    ds = Drivers(settings).for_node("ipmi", {})

    class Node:
        uuid = "6a7f0000-0000-4000-8000-0000000000aa"
        driver_info = {"ipmi_address": "127.0.0.1", "ipmi_port": port, "ipmi_username": USER,
                       "ipmi_password": PASSWORD}  # fmt: skip
        driver_internal_info: dict[str, object] = {}
        properties: dict[str, object] = {}
        boot_mode = "bios"

    class Task:
        node = Node()

        def __init__(self) -> None:
            self.settings = settings

        async def record(self, *args: object) -> None:
            return None

    task = Task()
    console = ds.interfaces["console"]
    await console.start_console(task)  # type: ignore[attr-defined]
    try:
        await tool(port, "power", "on")
        await wait_power(port, "on")
        serial = vm_files["serial"]
        first = await wait_console(serial, r"Booting from (ROM|Hard Disk)")
        assert first.group(1) == "ROM"  # the NIC's iPXE ROM: the one-time pxe
        flags = await tool(port, "chassis", "bootparam", "get", "5")
        assert "Force Boot from default Hard-Drive" in flags and "all future boots" in flags

        offset = serial.stat().st_size
        await tool(port, "power", "reset")  # unlike virtualbmc, a reset applies the boot device
        again = await wait_console(serial, r"SeaBIOS[\s\S]*?Booting from (ROM|Hard Disk)", offset)
        assert again.group(1) == "Hard Disk"

        # The same serial output reached bootforge's SOL capture through the emulated BMC.
        sol_log = base.console_log_path(settings, Node.uuid)
        await wait_console(sol_log, r"Booting from Hard Disk")
    finally:
        await console.stop_console(task)  # type: ignore[attr-defined]

    pid = vm.read_pid(vm_files["pid"])
    assert pid is not None and vm.pid_alive(pid)
    await ds.power.set_power_state(task, base.POWER_OFF)  # type: ignore[arg-type]
    assert "Chassis Power is off" in await tool(port, "power", "status")
    assert await vm.wait_gone(pid, 15)  # an owned VM: power off ended the process
