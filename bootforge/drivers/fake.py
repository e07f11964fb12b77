"""The fake-hardware type: FOR TESTS AND BENCHMARKS ONLY. It talks to no machine at all.

Power and boot device are remembered on the node record, and every operation sleeps the delay configured
in `Settings.fake_delays` (zero by default), so scale tests can model slow BMCs. Nothing here stands in
for a real feature: the qemu, ipmi and redfish hardware types do the real work.

Test-only knob: a node whose driver_info has `fake_boot_error` (a string) gets a DriverError with that
text from the boot interface's prepare_ramdisk, after its delay: the deploy fails as it would at a BMC
that refused the ramdisk boot (boot device, virtual media). It lets a test fail a deploy in a served
`bootforge serve` process, which a monkeypatch cannot reach.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bootforge.config import FakeDelays
from bootforge.drivers import base
from bootforge.drivers.base import Task
from bootforge.errors import DriverError, InvalidInput


class _FakeMixin:
    name = "fake"

    def __init__(self, delays: FakeDelays) -> None:
        self.delays = delays

    async def _sleep(self, what: str) -> None:
        delay = getattr(self.delays, what)
        if delay:
            await asyncio.sleep(delay)

    def validate(self, task: Task) -> None:
        return None


class FakePower(_FakeMixin, base.PowerInterface):
    async def get_power_state(self, task: Task) -> str:
        await self._sleep("power")
        return task.node.power_state or base.POWER_OFF

    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        if state not in self.get_supported_power_states(task):
            raise InvalidInput(f"fake power interface does not support {state!r}", "target")
        await self._sleep("power")

    def get_supported_power_states(self, task: Task) -> list[str]:
        return [
            base.POWER_ON,
            base.POWER_OFF,
            base.REBOOT,
            base.SOFT_POWER_OFF,
            base.SOFT_REBOOT,
        ]


class FakeManagement(_FakeMixin, base.ManagementInterface):
    def get_supported_boot_devices(self, task: Task) -> list[str]:
        return ["pxe", "disk", "cdrom", "bios"]

    async def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in self.get_supported_boot_devices(task):
            raise InvalidInput(f"boot device {device!r} is not supported by fake management", "boot_device")
        await self._sleep("management")
        info = dict(task.node.driver_internal_info)
        info["fake_boot_device"] = {"boot_device": device, "persistent": persistent}
        task.node.driver_internal_info = info

    async def get_boot_device(self, task: Task) -> dict[str, Any]:
        await self._sleep("management")
        current = task.node.driver_internal_info.get("fake_boot_device")
        return dict(current) if current else {"boot_device": None, "persistent": None}


class FakeBoot(_FakeMixin, base.BootInterface):
    # As before the boot interface became the seam: bootforge's network boot servers answer a fake
    # node as they would a pxe one (tests boot real ramdisks on fake-hardware nodes this way).
    netboot = True

    async def prepare_ramdisk(self, task: Task) -> None:
        await self._sleep("boot")
        error = task.node.driver_info.get("fake_boot_error")
        if error:
            node = task.node.name or task.node.uuid
            raise DriverError(f"fake-hardware node {node}: preparing the ramdisk boot failed: {error}")


class FakeDeploy(_FakeMixin, base.DeployInterface):
    @base.deploy_step(priority=100, may_rerun=True)
    async def deploy(self, task: Task) -> base.StepResult:
        await task.driver.boot.prepare_ramdisk(task)
        await self._sleep("deploy")
        return None

    # Not run unless a deploy asks for it (priority 0): it stands in for a step that must never run
    # twice (a firmware flash), so tests see the conductor refuse to re-run an interrupted one.
    @base.deploy_step(priority=0, may_rerun=False)
    async def flash_once(self, task: Task) -> base.StepResult:
        await self._sleep("management")
        return None

    @base.clean_step(priority=99, may_rerun=True)
    async def erase_devices_metadata(self, task: Task) -> base.StepResult:
        await self._sleep("clean")
        return None

    async def tear_down(self, task: Task) -> None:
        await self._sleep("deploy")


class FakeInspect(_FakeMixin, base.InspectInterface):
    async def inspect_hardware(self, task: Task) -> base.StepResult:
        await self._sleep("inspect")
        return None


class FakeRescue(_FakeMixin, base.RescueInterface):
    async def rescue(self, task: Task) -> base.StepResult:
        await self._sleep("rescue")
        return None

    async def unrescue(self, task: Task) -> None:
        await self._sleep("rescue")


class FakeConsole(_FakeMixin, base.ConsoleInterface):
    pass


class FakeRaid(_FakeMixin, base.RaidInterface):
    pass


class FakeBios(_FakeMixin, base.BiosInterface):
    pass


class FakeVendor(_FakeMixin, base.VendorInterface):
    pass


class FakeFirmware(_FakeMixin, base.FirmwareInterface):
    pass


class FakeStorage(_FakeMixin, base.StorageInterface):
    pass
