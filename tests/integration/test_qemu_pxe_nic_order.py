"""The qemu type's boot device `pxe` with two NICs (#12): the NIC of the node's PXE port boots first.

Real QEMU (TCG, SeaBIOS) with two NICs on hubs of their own, the port's NIC second in QEMU's order: the
first iPXE ROM to configure a NIC must be the port's. Before, the first NIC's ROM timed out first
(OVMF spends some 250 s there). Prints power-on -> the port NIC's first DHCP attempt."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from test_qemu_driver import owned_task, pid_files, pytestmark, qemu_binary, wait_for_console  # noqa: F401

from bootforge.drivers import base
from bootforge.drivers.qemu import QemuManagement, QemuPower

DEAD, PORT = "52:54:00:77:00:10", "52:54:00:77:00:11"


async def test_pxe_boots_the_port_nic_first(
    qemu_binary: str,  # noqa: F811 - test_qemu_driver's fixture, imported above
    tmp_path: Path,
    pid_files: list[Path],  # noqa: F811
) -> None:
    task = owned_task(tmp_path, pid_files, {"nics": [{"mac": DEAD}, {"mac": PORT}]})
    task.ports = [
        SimpleNamespace(address=DEAD, pxe_enabled=False),
        SimpleNamespace(address=PORT, pxe_enabled=True),
    ]
    power, mgmt = QemuPower(), QemuManagement()
    await mgmt.set_boot_device(task, "disk", persistent=True)
    await mgmt.set_boot_device(task, "pxe")
    started = time.monotonic()
    await power.set_power_state(task, base.POWER_ON)
    log = tmp_path / "serial.log"
    first = await wait_for_console(log, r"Configuring \(net\d+ ([0-9a-f:]{17})")
    assert first.group(1) == PORT, "the dead NIC was tried first"
    await wait_for_console(log, rf"Configuring \(net\d+ {PORT}")
    print(f"power-on -> DHCP on the port's NIC: {time.monotonic() - started:.1f} s")
    await power.set_power_state(task, base.POWER_OFF)
