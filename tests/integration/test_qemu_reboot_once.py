"""A one-time boot device on a *running* SeaBIOS VM (#15: a rebuild or rescue of an `active` node).

QEMU does not map the BIOS ROM back over SeaBIOS's shadow copy on a reset, so a SeaBIOS that has run
resets the machine once more by itself right after bootforge's reset (a RESET event with guest=true)
and POSTs after that one. The driver used to put the previous boot order back right after its own
reset, racing that second reset: now and then the VM booted its disk instead of the one-time pxe
device. Real QEMU (TCG), the boot device read from SeaBIOS's serial console; several rounds, since
the old code lost the race only some of the time.
"""

from __future__ import annotations

from pathlib import Path

from test_qemu_driver import owned_task, pid_files, pytestmark, qemu_binary, wait_for_console  # noqa: F401

from bootforge.drivers import base
from bootforge.drivers.qemu import QemuManagement, QemuPower, parse_driver_info, qmp_session

FIRST_BOOT = r"SeaBIOS[\s\S]*?Booting from (ROM|Hard Disk)"
ROUNDS = 5


async def test_a_running_bios_vm_boots_the_one_time_pxe_device_after_a_reboot(
    qemu_binary: str,  # noqa: F811 - test_qemu_driver's fixture, imported above
    tmp_path: Path,
    pid_files: list[Path],  # noqa: F811
) -> None:
    task = owned_task(tmp_path, pid_files)
    power, mgmt = QemuPower(), QemuManagement()
    log = tmp_path / "serial.log"
    await mgmt.set_boot_device(task, "disk", persistent=True)
    await power.set_power_state(task, base.POWER_ON)
    assert (await wait_for_console(log, FIRST_BOOT)).group(1) == "Hard Disk"

    for _ in range(ROUNDS):
        # As boot_ramdisk does for an active node: one-time pxe, then a reboot of the running VM.
        await mgmt.set_boot_device(task, "pxe")
        offset = log.stat().st_size
        await power.reboot(task)
        assert (await wait_for_console(log, FIRST_BOOT, offset)).group(1) == "ROM"
        # The order is back to the disk for every later boot, the guest's own resets included.
        assert await mgmt.get_boot_device(task) == {"boot_device": "disk", "persistent": True}

    offset = log.stat().st_size
    await power.reboot(task)
    assert (await wait_for_console(log, FIRST_BOOT, offset)).group(1) == "Hard Disk"
    assert not [e for e in task.events if e[2] == "warning"], task.events
    await power.set_power_state(task, base.POWER_OFF)


async def test_a_paused_vm_powered_on_boots_the_one_time_device(
    qemu_binary: str,  # noqa: F811
    tmp_path: Path,
    pid_files: list[Path],  # noqa: F811
) -> None:
    """A VM paused by QMP `stop` (an external VM's power off) is not a fresh process either: reset,
    cont, then SeaBIOS's own resets."""
    task = owned_task(tmp_path, pid_files)
    power, mgmt = QemuPower(), QemuManagement()
    log = tmp_path / "serial.log"
    await mgmt.set_boot_device(task, "disk", persistent=True)
    await power.set_power_state(task, base.POWER_ON)
    await wait_for_console(log, FIRST_BOOT)
    async with qmp_session(parse_driver_info(task.node.driver_info).qmp_socket) as s:
        await s.run("stop")
    assert await power.get_power_state(task) == base.POWER_OFF
    await mgmt.set_boot_device(task, "pxe")
    offset = log.stat().st_size
    await power.set_power_state(task, base.POWER_ON)  # paused, not gone: reset + cont, no new process
    assert (await wait_for_console(log, FIRST_BOOT, offset)).group(1) == "ROM"
    await power.set_power_state(task, base.POWER_OFF)
